"""The benchmark harness runs end to end (``python -m bench --smoke``: 1 s per scenario),
so it cannot rot. No speed is asserted; the full benchmark is never part of the suite
(docs/performance.md).

Marked ``integration``. Never skips: it needs ``wrk`` and ``redis-server`` (``.ci/run``
installs both) and fails with the harness's output when anything is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


class BenchSmokeTests(SynchronousTestCase):
    results: list[dict[str, Any]]

    def setUp(self) -> None:
        with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
            out = Path(tmp) / "results.json"
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            done = subprocess.run(
                [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            if done.returncode != 0:
                self.fail(f"python -m bench --smoke failed:\n{done.stdout}\n{done.stderr}")
            self.output = done.stdout
            self.results = json.loads(out.read_text())

    def test_every_scenario_is_measured_with_the_expected_answers(self) -> None:
        self.assertEqual({r["scenario"] for r in self.results}, {"0", "1", "2", "3", "4"})
        for result in self.results:
            self.assertGreater(result["requests"], 0, result)
            self.assertGreater(result["rps"], 0, result)
            self.assertGreater(result["cpu_s_per_1k"], 0, result)
            self.assertGreater(result["peak_rss_mib"], 0, result)
            self.assertIn(result["name"], self.output)
        self.assertIn("| vs ceiling |", self.output)
        # ...and every request got the answer its scenario expects.
        for result in self.results:
            self.assertEqual(result["socket_errors"], 0, result)
            if result["status"] < 300:
                self.assertEqual(result["non_2xx"], 0, result)
            else:
                self.assertEqual(result["non_2xx"], result["requests"], result)

"""The benchmark harness runs end to end (``python -m bench --smoke``: 1 s per scenario,
a 2 s soak), so it cannot rot. No speed is asserted; the full benchmark is never part of
the suite (docs/performance.md).

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
from typing import Any, ClassVar

import pytest
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _smoke_run() -> tuple[str, dict[str, Any]] | str:
    """``python -m bench --smoke``: its output and JSON report, or why it failed."""
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
            return f"python -m bench --smoke failed:\n{done.stdout}\n{done.stderr}"
        report: dict[str, Any] = json.loads(out.read_text())
        return done.stdout, report


class BenchSmokeTests(SynchronousTestCase):
    """Every test reads the same smoke run (made once: it takes about 25 s)."""

    smoke: ClassVar[tuple[str, dict[str, Any]] | str | None] = None
    results: list[dict[str, Any]]
    soak: dict[str, Any]

    def setUp(self) -> None:
        if BenchSmokeTests.smoke is None:
            BenchSmokeTests.smoke = _smoke_run()
        if isinstance(BenchSmokeTests.smoke, str):
            self.fail(BenchSmokeTests.smoke)
        self.output, report = BenchSmokeTests.smoke
        self.results = report["results"]
        self.soak = report["soak"]

    def test_every_scenario_is_measured_with_the_expected_answers(self) -> None:
        self.assertEqual({r["scenario"] for r in self.results}, {"0", "1", "2", "3", "4", "5"})
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

    def test_two_workers_are_measured_against_one_over_their_whole_process_tree(self) -> None:
        rows = {r["name"]: r for r in self.results if r["scenario"] == "5"}
        one = rows["auth, cookie session, workers 1"]
        two = rows["auth, cookie session, workers 2"]
        for row in (one, two):
            self.assertEqual((row["threads"], row["connections"]), (2, 20), row)
        self.assertGreater(two["ratios"]["workers_1"], 0)
        self.assertIn("auth, cookie session, workers 2 (x", self.output)
        self.assertIn(" vs workers 1) |", self.output)
        # The supervisor and both workers count: three interpreters against one.
        self.assertGreater(two["peak_rss_mib"], 2 * one["peak_rss_mib"])

    def test_the_soak_samples_memory_under_the_mixed_load_and_prints_it(self) -> None:
        soak = self.soak
        self.assertEqual((soak["seconds"], soak["identities"]), (2, 500))
        self.assertGreater(soak["requests"], 0)
        self.assertEqual((soak["non_2xx"], soak["socket_errors"]), (0, 0), soak)
        self.assertEqual(len(soak["samples"]), 2)
        self.assertEqual(soak["baseline_rss_mib"], soak["samples"][0][1])
        self.assertEqual(soak["end_rss_mib"], soak["samples"][-1][1])
        self.assertGreater(soak["baseline_rss_mib"], 0)
        self.assertRegex(
            self.output,
            r"\nmemory: RSS [\d.]+ MiB after 1 s, [\d.]+ MiB after 2 s "
            r"\([+-][\d.]+ MiB, [+-][\d.]+ MiB/min\)\n",
        )

"""``twistd oauthgate --workers=2`` in a child process: both workers serve, a killed worker
is replaced without failing requests, and SIGTERM stops everything with status 0."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.test_end_to_end import wait_for
from tests.integration.workers_support import (
    EchoUpstream,
    gate_args,
    get,
    request_lines,
    serving,
    start_gate,
    writes,
)

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class WorkersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.upstream = EchoUpstream()
        self.addCleanup(self.upstream.stop)
        self.gate = start_gate(Path(self.mktemp()), gate_args(self.upstream.url, "--workers=2"))
        self.addCleanup(self.gate.stop)
        serving(self.gate)

    def worker_pids(self) -> dict[int, int]:
        """Worker number -> pid of the workers that reported serving, latest last."""
        pids: dict[int, int] = {}
        for line in self.gate.log().splitlines():
            if "[oauthgate.workers#info] oauthgate: worker" in line and "started (pid" in line:
                words = line.split("worker ", 1)[1].split()
                pids[int(words[0])] = int(words[-1].rstrip(")"))
        return pids

    def test_both_workers_serve_and_a_killed_worker_is_replaced(self) -> None:
        pids = wait_for("two workers", lambda: self.worker_pids() or None, self.gate)
        self.assertEqual(len(pids), 2, self.gate.log())
        before = {pid: writes(pid) for pid in pids.values()}
        for n in range(30):
            self.assertIn(get(self.gate.port, f"/spread/{n}")[0], (401, 403))
        # Every request is logged once, in oauth2-proxy's format, each line whole.
        wait_for(
            "30 request lines",
            lambda: len(request_lines(self.gate, '"/spread/')) == 30,
            self.gate,
        )
        served = {pid for pid in pids.values() if writes(pid) > before[pid]}
        self.assertEqual(served, set(pids.values()), "both workers answer requests")

        victim = self.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)
        # Requests keep succeeding while the worker is restarted (its socket's queue waits).
        deadline = time.monotonic() + 2.0
        n = 0
        while time.monotonic() < deadline:
            self.assertEqual(get(self.gate.port, f"/ping?n={n}")[0], 200, self.gate.log())
            n += 1
        replacement = wait_for(
            "a new worker 1",
            lambda: self.worker_pids()[1] if self.worker_pids()[1] != victim else None,
            self.gate,
        )
        self.assertTrue(alive(replacement))
        self.assertFalse(alive(victim))
        wait_for(
            "the new worker serving",
            lambda: f"worker 1 (pid {replacement}) serving" in self.gate.log(),
            self.gate,
        )
        start = writes(replacement)
        for n in range(30):
            get(self.gate.port, f"/after/{n}")
        wait_for("the new worker answering", lambda: writes(replacement) > start, self.gate)

    def test_sigterm_stops_every_worker_and_the_main_process(self) -> None:
        pids = list(self.worker_pids().values())
        self.assertEqual(len(pids), 2, self.gate.log())
        wait_for("both workers serving", lambda: self.gate.log().count(") serving") == 2, self.gate)
        self.gate.process.send_signal(signal.SIGTERM)
        # A clean stop: status 0, or (plain twistd) the SIGTERM re-raised after shutting
        # down, the same as without workers; systemd counts either as success.
        self.assertIn(self.gate.process.wait(15), (0, -signal.SIGTERM), self.gate.log())
        self.assertIn("Server Shut Down.", self.gate.log())
        self.assertNotIn("Traceback", self.gate.log())
        for pid in pids:
            self.assertFalse(alive(pid), f"worker {pid} survived:\n{self.gate.log()}")

    def test_sighup_reloads_the_workers_instead_of_stopping_anything(self) -> None:
        """A logrotate or certificate-renewal hook sends SIGHUP: the supervisor passes it
        on, and every process keeps serving (no worker is restarted)."""
        wait_for("both workers serving", lambda: self.gate.log().count(") serving") == 2, self.gate)
        pids = dict(self.worker_pids())
        self.gate.process.send_signal(signal.SIGHUP)
        wait_for(
            "both workers reloading",
            lambda: self.gate.log().count("SIGHUP: reloading") >= 2 or None,
            self.gate,
        )
        self.assertIsNone(self.gate.process.poll(), self.gate.log())
        for n in range(10):
            self.assertEqual(get(self.gate.port, f"/ping?hup={n}")[0], 200, self.gate.log())
        self.assertEqual(self.worker_pids(), pids)
        self.assertTrue(all(alive(pid) for pid in pids.values()))

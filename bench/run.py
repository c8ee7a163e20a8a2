"""The benchmark: every server on loopback in its own process, load from ``wrk``.

``python -m bench`` starts an identity provider (discovery and an RS256 JWKS), a static
upstream, a bare twisted.web "ceiling" server, ``redis-server`` and four
``twistd -n oauthgate`` processes (cookie sessions with the request log on, the same with
it off, Redis sessions, and cookie sessions with ``--workers=2``), drives each scenario
with ``wrk --latency`` and prints one table: requests/s, p50/p99 latency, CPU seconds per
1000 requests and peak RSS of the process under test (with its children: a ``--workers``
supervisor and its workers), and each scenario's ratio to the ceiling (and to the direct
upstream for the proxied scenarios, to one worker for two workers). Then a soak
(``--soak``) loads the cookie-store oauthgate with a mix of many distinct sessions and
bearer tokens and samples its RSS every second, to show memory stays flat. Every run is
bounded by ``--duration``/``--soak``; everything is stopped at the end. ``--smoke`` is the
short run the test suite makes (no speed is asserted).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from oauthgate.session import Session
from oauthgate.sessions.cookie_store import CookieSessionStore
from oauthgate.sessions.crypto import Sealer, decode_secret
from oauthgate.sessions.redis_store import RedisSessionStore

__all__ = ["Result", "Soak", "main"]

ROOT = Path(__file__).resolve().parents[1]
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret"
COOKIE_NAME = "_oauth2_proxy"
USER = "alice"
EMAIL = "alice@example.com"
KID = "bench-1"
START_TIMEOUT = 30.0
WRK_TIMEOUT = 10
"""wrk's ``--timeout``, in seconds."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
WORKERS = 2
"""Scenario 5: this many ``--workers`` against one process."""
SOAK_IDENTITIES = 500
"""Distinct cookie sessions, and distinct bearer tokens, the soak cycles through (by
default: ``--soak-identities``)."""
SOAK_BASELINE = 10.0
"""Seconds into the soak (warm-up included) at which its reference RSS is taken."""
# Headers Twisted writes itself: the ceiling must not send them twice.
_OWN_HEADERS = {"date", "server", "content-length", "connection", "transfer-encoding"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A child process whose output goes to a file, and its CPU time and peak RSS."""

    def __init__(self, name: str, command: Sequence[str], workdir: Path) -> None:
        self.name = name
        self.output = workdir / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self._out = open(self.output, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            list(command), cwd=workdir, env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        text = self.output.read_text("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def tree(self) -> list[int]:
        """This process and its descendants (a ``--workers`` supervisor and its workers)."""
        pids = [self.pid]
        for pid in pids:  # grows as children are found
            pids += _children(pid)
        return pids

    def cpu_seconds(self) -> float:
        """utime + stime so far, summed over the process tree."""
        total = 0
        for pid in self.tree():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:  # ended meanwhile
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def peak_rss_mib(self) -> float:
        """VmHWM, summed over the process tree (each process's own peak)."""
        return sum(_status_kib(pid, "VmHWM") for pid in self.tree()) / 1024

    def rss_mib(self) -> float:
        """VmRSS now, summed over the process tree."""
        return sum(_status_kib(pid, "VmRSS") for pid in self.tree()) / 1024

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()


def _children(pid: int) -> list[int]:
    """``pid``'s child processes: /proc/PID/task/*/children, else a scan of /proc for PPid."""
    found: list[int] = []
    tasks = Path(f"/proc/{pid}/task")
    try:
        for task in tasks.iterdir():
            found += (int(c) for c in (task / "children").read_text().split())
        return found
    except FileNotFoundError:
        if not tasks.exists():
            return []  # ended meanwhile
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():  # no CONFIG_PROC_CHILDREN
        if entry.name.isdigit() and _status_kib(int(entry.name), "PPid") == pid:
            found.append(int(entry.name))
    return found


def _status_kib(pid: int, key: str) -> int:
    """A number from /proc/PID/status (kiB for the Vm* keys); 0 once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def request(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, list[tuple[str, str]]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheaders()
    finally:
        conn.close()


def wait_for_status(
    process: Process, port: int, path: str, status: int, headers: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """Poll until ``GET path`` answers ``status``; its headers."""
    deadline = time.monotonic() + START_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        process.check_alive()
        try:
            got, response_headers = request(port, path, headers)
            if got == status:
                return response_headers
            last = got
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(
        f"{process.name}: GET {path} did not answer {status} within {START_TIMEOUT}s "
        f"(last: {last}):\n{process.log_tail()}"
    )


def wait_for_log(process: Process, pattern: str, count: int) -> None:
    """Poll until ``count`` distinct matches of ``pattern`` are in the process's output."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        process.check_alive()
        text = process.output.read_text("utf-8", "replace")
        if len(set(re.findall(pattern, text))) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"{process.name}: {count} lines matching {pattern!r} not within {START_TIMEOUT}s:\n"
        f"{process.log_tail()}"
    )


# --- credentials -----------------------------------------------------------------


def credentials() -> tuple[rsa.RSAPrivateKey, str]:
    """A fresh RS256 signing key (the IdP's) and ``--cookie-secret``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, base64.urlsafe_b64encode(os.urandom(32)).decode()


def _wall_clock() -> Clock:
    clock = Clock()
    clock.advance(time.time())
    return clock


def _session(user: str = USER, email: str = EMAIL) -> Session:
    return Session(user=user, email=email, created_at=time.time())


def cookie_session(secret: str, user: str = USER, email: str = EMAIL) -> str:
    """A cookie-store session cookie value for ``secret``."""
    store = CookieSessionStore(
        Sealer(decode_secret(secret)), _wall_clock(), purpose=COOKIE_NAME, lifetime=0.0
    )
    saved: Deferred[str] = Deferred.fromCoroutine(store.save(_session(user, email), None))
    return str(saved.result)  # sealing runs to its end at once


class _CapturingClient:
    """Stands in for the Redis client: keeps the SET the store would send."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    async def execute(self, *args: Any) -> Any:
        self.commands.append(args)
        return "OK"


def redis_session(secret: str, redis_port: int) -> str:
    """A Redis-store session: written to Redis with redis-cli; the cookie value."""
    client = _CapturingClient()
    store = RedisSessionStore(
        client,  # type: ignore[arg-type]
        Sealer(decode_secret(secret)),
        _wall_clock(),
        cookie_name=COOKIE_NAME,
        lifetime=0.0,
    )
    saved: Deferred[str] = Deferred.fromCoroutine(store.save(_session(), None))
    value = str(saved.result)
    for command in client.commands:
        subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(redis_port), *map(str, command)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    return value


def bearer_token(key: rsa.RSAPrivateKey, issuer: str, user: str = USER, email: str = EMAIL) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": CLIENT_ID,
        "sub": user,
        "email": email,
        "email_verified": True,
        "iat": now,
        "exp": now + 24 * 3600,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


def jwks(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=KID, alg="RS256", use="sig")
    return {"keys": [jwk]}


# --- wrk -------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _millis(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Wrk:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def wrk_command(
    url: str,
    headers: dict[str, str],
    *,
    duration: int,
    connections: int,
    threads: int = 1,
    script: Path | None = None,
) -> list[str]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={WRK_TIMEOUT}s",
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    return [*command, "--latency", url]


def run_wrk(
    url: str, headers: dict[str, str], *, duration: int, connections: int, threads: int = 1
) -> Wrk:
    command = wrk_command(url, headers, duration=duration, connections=connections, threads=threads)
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + WRK_TIMEOUT + 30, check=True
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> Wrk:
    requests = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not (requests and rps and p50 and p99):
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    return Wrk(
        requests=int(requests.group(1)),
        rps=float(rps.group(1)),
        p50_ms=_millis(p50.group(1)),
        p99_ms=_millis(p99.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


# --- scenarios -------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    name: str
    status: int
    connections: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_s_per_1k: float
    peak_rss_mib: float
    non_2xx: int
    socket_errors: int
    threads: int = 1
    #: CPU the server (with its children) and wrk used, in cores (CPU s per second): with
    #: two cores, a sum near 2 means the machine, not oauthgate, was the limit.
    server_cores: float = 0.0
    wrk_cores: float = 0.0
    ratios: dict[str, float] = field(default_factory=dict)


@dataclass
class Target:
    scenario: str
    name: str
    process: Process
    port: int
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    connections: int = 10
    threads: int = 1


def measure(target: Target, duration: int) -> Result:
    got, _ = request(target.port, target.path, target.headers)
    if got != target.status:
        raise RuntimeError(f"{target.name}: expected {target.status}, got {got}")
    before = target.process.cpu_seconds()
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = run_wrk(
        f"http://127.0.0.1:{target.port}{target.path}",
        target.headers,
        duration=duration,
        connections=target.connections,
        threads=target.threads,
    )
    cpu = target.process.cpu_seconds() - before
    elapsed = time.monotonic() - started
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (wrk_after.ru_utime - wrk_before.ru_utime) + (
        wrk_after.ru_stime - wrk_before.ru_stime
    )
    target.process.check_alive()
    return Result(
        scenario=target.scenario,
        name=target.name,
        status=target.status,
        connections=target.connections,
        requests=result.requests,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_s_per_1k=cpu / max(result.requests, 1) * 1000,
        peak_rss_mib=target.process.peak_rss_mib(),
        non_2xx=result.non_2xx,
        socket_errors=result.socket_errors,
        threads=target.threads,
        server_cores=cpu / elapsed,
        wrk_cores=wrk_cpu / elapsed,
    )


# --- soak ------------------------------------------------------------------------

_LUA_SAFE = re.compile(r"[A-Za-z0-9._~+/=|:-]+")


def _lua_strings(values: Sequence[str]) -> str:
    for value in values:
        if _LUA_SAFE.fullmatch(value) is None:
            raise ValueError(f"cannot quote {value[:20]!r}... for Lua")
    return "{\n" + "".join(f'  "{value}",\n' for value in values) + "}"


def soak_script(cookies: Sequence[str], tokens: Sequence[str]) -> str:
    """A wrk script: every request is, at random, ``/oauth2/auth`` with one of ``cookies``,
    ``/oauth2/auth`` with one of ``tokens`` or a proxied ``/1k`` with one of ``cookies``."""
    cookie = f'{{["Cookie"] = "{COOKIE_NAME}=" .. cookies[math.random(#cookies)]}}'
    bearer = '{["Authorization"] = "Bearer " .. tokens[math.random(#tokens)]}'
    return f"""-- written by python -m bench: the soak's request mix
local cookies = {_lua_strings(cookies)}
local tokens = {_lua_strings(tokens)}
math.randomseed(os.time())

request = function()
  local kind = math.random(3)
  if kind == 1 then
    return wrk.format("GET", "/oauth2/auth", {cookie})
  elseif kind == 2 then
    return wrk.format("GET", "/oauth2/auth", {bearer})
  end
  return wrk.format("GET", "/1k", {cookie})
end
"""


@dataclass
class Soak:
    """A long mixed load on one process, its RSS sampled every second."""

    seconds: int
    connections: int
    identities: int
    requests: int
    rps: float
    cpu_s_per_1k: float
    non_2xx: int
    socket_errors: int
    samples: list[tuple[float, float]]
    """(seconds since the load began, RSS in MiB)"""
    baseline_s: float
    baseline_rss_mib: float
    end_s: float
    end_rss_mib: float
    growth_mib: float
    growth_mib_per_min: float


def soak(
    process: Process, port: int, seconds: int, script: Path, identities: int, connections: int = 10
) -> Soak:
    """Load ``process`` with ``script`` for ``seconds`` (2 or more), sampling its RSS each
    second; the reference is the sample after ``SOAK_BASELINE`` s (or half the run)."""
    baseline_at = int(min(SOAK_BASELINE, seconds // 2))
    ticks = [*range(1, seconds), seconds - 0.25]  # the last one before wrk stops
    command = wrk_command(
        f"http://127.0.0.1:{port}/", {}, duration=seconds, connections=connections, script=script
    )
    before = process.cpu_seconds()
    samples: list[tuple[float, float]] = []
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        start = time.monotonic()
        for tick in ticks:
            time.sleep(max(0.0, start + tick - time.monotonic()))
            if wrk.poll() is not None:
                break
            samples.append((round(time.monotonic() - start, 2), round(process.rss_mib(), 2)))
        out, _ = wrk.communicate(timeout=seconds + 40)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    cpu = process.cpu_seconds() - before
    process.check_alive()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk (soak) exited with {wrk.returncode}:\n{out}")
    if len(samples) < len(ticks):
        raise RuntimeError(f"wrk (soak) ended after {len(samples)} of {seconds} s:\n{out}")
    result = parse_wrk(out)
    baseline_s, baseline = samples[baseline_at - 1]
    end_s, end = samples[-1]
    growth = end - baseline
    return Soak(
        seconds=seconds,
        connections=connections,
        identities=identities,
        requests=result.requests,
        rps=result.rps,
        cpu_s_per_1k=cpu / max(result.requests, 1) * 1000,
        non_2xx=result.non_2xx,
        socket_errors=result.socket_errors,
        samples=samples,
        baseline_s=baseline_s,
        baseline_rss_mib=baseline,
        end_s=end_s,
        end_rss_mib=end,
        growth_mib=round(growth, 2),
        growth_mib_per_min=round(growth / max(end_s - baseline_s, 0.01) * 60, 2),
    )


def memory_lines(result: Soak) -> str:
    errors = ""
    if result.non_2xx or result.socket_errors:
        errors = f" [{result.non_2xx} non-2xx, {result.socket_errors} socket errors]"
    return (
        f"memory: RSS {result.baseline_rss_mib:.1f} MiB after {result.baseline_s:.0f} s, "
        f"{result.end_rss_mib:.1f} MiB after {result.end_s:.0f} s "
        f"({result.growth_mib:+.2f} MiB, {result.growth_mib_per_min:+.2f} MiB/min)\n"
        f"soak: {result.seconds} s, c{result.connections}, cookie and RS256 bearer "
        f"/oauth2/auth and proxied 1 KiB GETs over {result.identities} distinct sessions and "
        f"{result.identities} distinct tokens: {result.requests:,} requests, "
        f"{result.rps:,.0f} req/s, {result.cpu_s_per_1k:.3f} CPU s/1k req{errors}"
    )


@contextmanager
def processes() -> Iterator[Callable[[str, Sequence[str], Path], Process]]:
    started: list[Process] = []

    def start(name: str, command: Sequence[str], workdir: Path) -> Process:
        process = Process(name, command, workdir)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in reversed(started):
            process.stop()


def server_command(role: str, port: int, *args: str) -> list[str]:
    """``python -m bench.servers ROLE PORT ARGS``."""
    return [sys.executable, "-m", "bench.servers", role, str(port), *args]


def gate_command(port: int, args: Sequence[str], twistd: Sequence[str] = ()) -> list[str]:
    """``twistd -n [TWISTD...] oauthgate --http-address=127.0.0.1:PORT ARGS...``."""
    return [
        sys.executable,
        "-c",
        TWISTD,
        "-n",
        "--pidfile=",
        *twistd,
        "oauthgate",
        f"--http-address=127.0.0.1:{port}",
        *args,
    ]


def gate_args(secret: str, idp_url: str, upstream_port: int) -> list[str]:
    """The options every measured oauthgate has: OIDC at ``idp_url``, cookie sessions
    sealed with ``secret``, the static upstream, RS256 bearer tokens accepted."""
    return [
        "--provider=oidc",
        f"--oidc-issuer-url={idp_url}",
        f"--client-id={CLIENT_ID}",
        f"--client-secret={CLIENT_SECRET}",
        f"--cookie-secret={secret}",
        "--cookie-secure=false",
        "--email-domain=example.com",
        f"--upstream=http://127.0.0.1:{upstream_port}/",
        "--skip-jwt-bearer-tokens",
    ]


def run(
    duration: int,
    latency_duration: int,
    warmup: int,
    soak_seconds: int,
    workdir: Path,
    soak_identities: int = SOAK_IDENTITIES,
) -> tuple[list[Result], Soak | None]:
    """The results of every scenario, and of the soak (None with ``soak_seconds`` 0)."""
    for binary in ("wrk", "redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} not found (apt-get install wrk redis-server)")
    key, secret = credentials()
    names = ("idp", "upstream", "redis", "log", "nolog", "rds", "ceil", "workers")
    ports = {n: free_port() for n in names}
    idp_url = f"http://127.0.0.1:{ports['idp']}"
    common = gate_args(secret, idp_url, ports["upstream"])
    with processes() as start:
        idp = start("idp", server_command("idp", ports["idp"], json.dumps(jwks(key))), workdir)
        upstream = start("upstream", server_command("upstream", ports["upstream"]), workdir)
        start(
            "redis",
            [
                "redis-server",
                "--port",
                str(ports["redis"]),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            workdir,
        )
        log_on = start("oauthgate-log", gate_command(ports["log"], common), workdir)
        log_off = start(
            "oauthgate-nolog",
            gate_command(ports["nolog"], [*common, "--request-logging=false"]),
            workdir,
        )
        with_redis = start(
            "oauthgate-redis",
            gate_command(
                ports["rds"],
                [
                    *common,
                    "--session-store-type=redis",
                    f"--redis-connection-url=redis://127.0.0.1:{ports['redis']}",
                ],
            ),
            workdir,
        )
        # --workers=1 (the default) serves in-process: log_on is the one-worker figure.
        workers = start(
            f"oauthgate-workers{WORKERS}",
            gate_command(ports["workers"], [*common, f"--workers={WORKERS}"]),
            workdir,
        )
        wait_for_status(idp, ports["idp"], "/jwks", 200)
        wait_for_status(upstream, ports["upstream"], "/1k", 200)
        for process, port in ((log_on, ports["log"]), (log_off, ports["nolog"])):
            wait_for_status(process, port, "/ping", 200)
        wait_for_status(with_redis, ports["rds"], "/ping", 200)
        wait_for_log(workers, r"worker (\d+) \(pid \d+\) serving", WORKERS)
        wait_for_status(workers, ports["workers"], "/ping", 200)

        cookie = {"Cookie": f"{COOKIE_NAME}={cookie_session(secret)}"}
        redis_cookie = {"Cookie": f"{COOKIE_NAME}={redis_session(secret, ports['redis'])}"}
        bearer = {"Authorization": f"Bearer {bearer_token(key, idp_url)}"}
        auth = "/oauth2/auth"
        gate_headers = wait_for_status(log_on, ports["log"], auth, 202, cookie)
        wait_for_status(log_on, ports["log"], auth, 202, bearer)  # JWKS fetched
        wait_for_status(with_redis, ports["rds"], auth, 202, redis_cookie)
        wait_for_status(workers, ports["workers"], auth, 202, cookie)
        same = [(k, v) for k, v in gate_headers if k.lower() not in _OWN_HEADERS]
        ceiling = start(
            "ceiling", server_command("ceiling", ports["ceil"], json.dumps(same)), workdir
        )
        wait_for_status(ceiling, ports["ceil"], auth, 202)

        targets = [
            Target("0", "ceiling: bare twisted.web 202", ceiling, ports["ceil"], auth, 202),
            Target("1", "auth, cookie session", log_on, ports["log"], auth, 202, cookie),
            Target(
                "1", "auth, cookie session, log off", log_off, ports["nolog"], auth, 202, cookie
            ),
            Target("1", "auth, Redis session", with_redis, ports["rds"], auth, 202, redis_cookie),
            Target("2", "auth, RS256 JWT bearer", log_on, ports["log"], auth, 202, bearer),
            Target("3", "auth, no session (401)", log_on, ports["log"], auth, 401),
        ]
        for size in ("1k", "1m"):
            for connections in (10, 1):
                targets += [
                    Target(
                        "4",
                        f"direct upstream {size}",
                        upstream,
                        ports["upstream"],
                        f"/{size}",
                        200,
                        connections=connections,
                    ),
                    Target(
                        "4",
                        f"proxied {size}",
                        log_on,
                        ports["log"],
                        f"/{size}",
                        200,
                        cookie,
                        connections=connections,
                    ),
                ]
        # One wrk thread with 10 connections cannot load two workers: two threads, 20
        # connections for both rows of scenario 5.
        for process, port, count in ((log_on, ports["log"], 1), (workers, ports["workers"], 2)):
            name = f"auth, cookie session, workers {count}"
            targets.append(Target("5", name, process, port, auth, 202, cookie, 20, threads=2))
        if warmup:
            for port, headers, threads in (
                (ports["log"], cookie, 1),
                (ports["nolog"], cookie, 1),
                (ports["rds"], redis_cookie, 1),
                (ports["ceil"], {}, 1),
                (ports["workers"], cookie, 2),
            ):
                run_wrk(
                    f"http://127.0.0.1:{port}{auth}",
                    headers,
                    duration=warmup,
                    connections=10 * threads,
                    threads=threads,
                )
        results = []
        for target in targets:
            results.append(
                measure(target, duration if target.connections > 1 else latency_duration)
            )
        soaked = None
        if soak_seconds:
            soaked = _soak(
                log_on, ports["log"], soak_seconds, soak_identities, secret, key, idp_url, workdir
            )
        return _with_ratios(results), soaked


def _soak(
    process: Process,
    port: int,
    seconds: int,
    identities: int,
    secret: str,
    key: rsa.RSAPrivateKey,
    issuer: str,
    workdir: Path,
) -> Soak:
    """The soak on ``process``, with ``identities`` distinct sessions and tokens."""
    users = [(f"user{n}", f"user{n}@example.com") for n in range(identities)]
    cookies = [cookie_session(secret, user, email) for user, email in users]
    tokens = [bearer_token(key, issuer, user, email) for user, email in users]
    for cookie, token in ((cookies[0], tokens[0]), (cookies[-1], tokens[-1])):
        wait_for_status(process, port, "/oauth2/auth", 202, {"Cookie": f"{COOKIE_NAME}={cookie}"})
        wait_for_status(process, port, "/oauth2/auth", 202, {"Authorization": f"Bearer {token}"})
        wait_for_status(process, port, "/1k", 200, {"Cookie": f"{COOKIE_NAME}={cookie}"})
    script = workdir / "soak.lua"
    script.write_text(soak_script(cookies, tokens))
    return soak(process, port, seconds, script, identities)


def _with_ratios(results: list[Result]) -> list[Result]:
    ceiling = results[0]
    direct: dict[tuple[str, int], Result] = {}
    for result in results:
        if result.name.startswith("direct upstream"):
            direct[(result.name.rsplit(" ", 1)[1], result.connections)] = result
    for result in results[1:]:
        result.ratios["ceiling"] = result.rps / ceiling.rps
        if result.name.startswith("proxied"):
            base = direct[(result.name.rsplit(" ", 1)[1], result.connections)]
            result.ratios["direct"] = result.rps / base.rps
            result.ratios["p50_over_direct_ms"] = result.p50_ms - base.p50_ms
    on = next(r for r in results if r.name == "auth, cookie session")
    off = next(r for r in results if r.name == "auth, cookie session, log off")
    on.ratios["log_cost"] = 1 - on.rps / off.rps
    one = next(r for r in results if r.name == "auth, cookie session, workers 1")
    many = next(r for r in results if r.name == f"auth, cookie session, workers {WORKERS}")
    many.ratios["workers_1"] = many.rps / one.rps
    return results


def table(results: list[Result]) -> str:
    header = (
        "| # | scenario | c | req/s | p50 ms | p99 ms | CPU s/1k req | peak RSS MiB "
        "| cores: server + wrk | vs ceiling | vs direct |"
    )
    lines = [header, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        vs_ceiling = f"{r.ratios['ceiling']:.0%}" if "ceiling" in r.ratios else "100%"
        vs_direct = ""
        if "direct" in r.ratios:
            vs_direct = f"{r.ratios['direct']:.0%}, p50 {r.ratios['p50_over_direct_ms']:+.2f} ms"
        name = r.name
        if "log_cost" in r.ratios:
            name += f" (log costs {r.ratios['log_cost']:.0%})"
        if "workers_1" in r.ratios:
            name += f" (x{r.ratios['workers_1']:.2f} vs workers 1)"
        if (r.non_2xx and r.status < 300) or r.socket_errors:
            name += f" [{r.non_2xx} non-2xx, {r.socket_errors} socket errors]"
        lines.append(
            f"| {r.scenario} | {name} | {r.connections} | {r.rps:,.0f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.cpu_s_per_1k:.3f} | {r.peak_rss_mib:.0f} "
            f"| {r.server_cores:.2f} + {r.wrk_cores:.2f} | {vs_ceiling} | {vs_direct} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per -c10 run")
    parser.add_argument("--latency-duration", type=int, default=10, help="seconds per -c1 run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server")
    parser.add_argument(
        "--soak",
        type=_soak_seconds,
        default=60,
        metavar="SECONDS",
        help="seconds of mixed load while sampling RSS, to show memory stays flat "
        "(at least 2; 0 skips it)",
    )
    parser.add_argument(
        "--soak-identities",
        type=int,
        default=SOAK_IDENTITIES,
        metavar="N",
        help="distinct cookie sessions, and distinct bearer tokens, in the soak's mix",
    )
    parser.add_argument("--smoke", action="store_true", help="1 s runs, no warm-up, 2 s soak")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--keep", type=Path, help="keep the processes' logs in this directory")
    options = parser.parse_args(argv)
    if options.soak_identities < 1:
        parser.error("--soak-identities: must be 1 or more")
    if options.smoke:
        options.duration = options.latency_duration = 1
        options.warmup = 0
        options.soak = min(options.soak, 2)
    timings = (options.duration, options.latency_duration, options.warmup, options.soak)
    if options.keep:
        options.keep.mkdir(parents=True, exist_ok=True)
        results, soaked = run(*timings, options.keep, options.soak_identities)
    else:
        with tempfile.TemporaryDirectory(prefix="oauthgate-bench-") as tmp:
            results, soaked = run(*timings, Path(tmp), options.soak_identities)
    print(table(results))
    if soaked is not None:
        print()
        print(memory_lines(soaked))
    if options.json:
        report = {
            "results": [asdict(r) for r in results],
            "soak": asdict(soaked) if soaked is not None else None,
        }
        options.json.write_text(json.dumps(report, indent=2))
    return 0


def _soak_seconds(text: str) -> int:
    seconds = int(text)
    if seconds != 0 and seconds < 2:
        raise argparse.ArgumentTypeError(f"must be 0 (no soak) or 2 or more, not {seconds}")
    return seconds

"""Real Redis servers for integration tests: standalone, Sentinel (one master, one replica,
three sentinels) and Cluster (three masters), on free loopback ports in temporary
directories, without persistence (``--save "" --appendonly no``).

These fixtures never skip: if ``redis-server`` is missing or does not start, the test
fails with the server's output (CI installs it, see ``.ci/run``).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.integration.test_end_to_end import free_port, wait_for

__all__ = [
    "Cluster",
    "RedisServer",
    "SentinelGroup",
    "redis_cli",
    "require_binaries",
]

START_TIMEOUT = 10.0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port P below 55536 whose cluster bus port P + 10000 is free too."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise AssertionError("no free port pair for a cluster node")


def require_binaries() -> None:
    """Fail (never skip) when the Redis binaries are missing."""
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        raise AssertionError(
            f"{', '.join(missing)} not found: install the redis-server package "
            "(apt-get install redis-server; .ci/run does this in CI)"
        )


def redis_cli(port: int, *args: str, timeout: float = 10.0) -> str:
    """``redis-cli -p PORT ARGS`` run to the end; its output (raises if it fails)."""
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"redis-cli {' '.join(args)} failed: {result.stderr}{result.stdout}")
    return result.stdout


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` (or ``redis-server --sentinel``) child process."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        sentinel_config: str | None = None,
        name: str = "redis",
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        require_binaries()
        self.port = port or free_port()
        self.workdir = (workdir / f"{name}-{self.port}").resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.sentinel_config = sentinel_config
        self.tls = tls  # (ca, cert, key): TLS only, on self.port
        self.log_path = self.workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.sentinel_config is not None:
            config = self.workdir / "sentinel.conf"
            config.write_text(f"port {self.port}\nbind 127.0.0.1\n{self.sentinel_config}")
            return ["redis-server", str(config), "--sentinel", "--dir", str(self.workdir)]
        if self.tls is not None:
            ca, cert, key = (p.resolve() for p in self.tls)
            listen = [
                "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            listen = ["--port", str(self.port)]
        return [
            "redis-server",
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            *self.args,
        ]

    def start(self) -> RedisServer:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not (_listening(self.port) if self.tls else _ping(self.port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"redis-server on port {self.port} did not start:\n{self.log()}"
                )
            time.sleep(0.02)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything gracefully."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cli(self, *args: str) -> str:
        return redis_cli(self.port, *args)


class SentinelGroup:
    """A master, one replica and three sentinels watching ``name``.

    ``down-after-milliseconds`` is short (1 s) so that failovers take seconds.
    """

    def __init__(self, workdir: Path, name: str = "mymaster") -> None:
        self.name = name
        self.workdir = workdir
        self.master = RedisServer(workdir, name="master")
        self.replica = RedisServer(workdir, name="replica")
        self.sentinels: list[RedisServer] = []

    def start(self) -> SentinelGroup:
        self.master.start()
        self.replica.args = ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        wait_for(
            "the replica to sync",
            lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"),
        )
        config = (
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 5000\n"
            f"sentinel parallel-syncs {self.name} 1\n"
        )
        for _ in range(3):
            self.sentinels.append(
                RedisServer(self.workdir, sentinel_config=config, name="sentinel").start()
            )
        wait_for("the sentinels to see the replica and each other", self._ready, timeout=20)
        return self

    def _ready(self) -> bool:
        for sentinel in self.sentinels:
            replicas = sentinel.cli("SENTINEL", "REPLICAS", self.name)
            master = sentinel.cli("SENTINEL", "MASTER", self.name)
            if str(self.replica.port) not in replicas or "s_down" in replicas:
                return False
            lines = master.split()
            if "num-other-sentinels" not in lines:
                return False
            if lines[lines.index("num-other-sentinels") + 1] != "2":
                return False
        return True

    @property
    def sentinel_urls(self) -> list[str]:
        return [s.url for s in self.sentinels]

    def master_port(self) -> int:
        """The master's port as the first sentinel sees it now."""
        reply = self.sentinels[0].cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name).split()
        return int(reply[1])

    def failover(self) -> None:
        self.sentinels[0].cli("SENTINEL", "FAILOVER", self.name)

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()


class Cluster:
    """Three cluster-enabled masters joined with ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.nodes = [
            RedisServer(workdir, name="cluster", port=free_cluster_port()) for _ in range(size)
        ]
        for node in self.nodes:
            node.args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node.workdir / "nodes.conf"),
                "--cluster-node-timeout",
                "1000",
            ]

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        result = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}"
            )
        wait_for(
            "the cluster to be ok",
            lambda: all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes),
            timeout=20,
        )
        return self

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node_id(self, node: RedisServer) -> str:
        return node.cli("CLUSTER", "MYID").strip()

    def owner(self, slot: int) -> RedisServer:
        """The node serving ``slot`` now."""
        for node in self.nodes:
            for line in node.cli("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for part in fields[8:]:
                    start, _, end = part.partition("-")
                    if not start.isdigit():
                        continue
                    if int(start) <= slot <= int(end or start):
                        return node
        raise AssertionError(f"no node serves slot {slot}")

    def begin_move(self, slot: int, target: RedisServer) -> RedisServer:
        """Mark ``slot`` migrating to ``target`` and move its keys (ASK territory now)."""
        source = self.owner(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        target.cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        source.cli("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        while True:
            keys = source.cli("CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
            if not keys:
                break
            source.cli("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys)
        return source

    def finish_move(self, slot: int, target: RedisServer) -> None:
        """Assign ``slot`` to ``target`` on every node (MOVED territory now)."""
        target_id = self.node_id(target)
        for node in [target, *[n for n in self.nodes if n is not target]]:
            node.cli("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    def move_slot(self, slot: int, target: RedisServer) -> None:
        self.begin_move(slot, target)
        self.finish_move(slot, target)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

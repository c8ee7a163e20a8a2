"""The Redis session store against a real standalone ``redis-server`` (and one over TLS).

Marked ``integration``; never skipped: without redis-server these tests fail.
"""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from oauthgate.config.options import Config
from oauthgate.errors import StoreUnavailable
from oauthgate.session import Session
from oauthgate.sessions.crypto import Sealer
from oauthgate.sessions.redis_client import client_from_config
from oauthgate.sessions.redis_store import RedisSessionStore
from tests.integration.redis_servers import RedisServer

pytestmark = pytest.mark.integration

SECRET = b"c" * 32
COOKIE = "_oauth2_proxy"
SESSION = Session(
    user="alice",
    email="alice@example.com",
    groups=("admins",),
    access_token="access-token-value",
    id_token="id-token-value",
    refresh_token="refresh-token-value",
    created_at=1.0,
    provider="oidc",
)


def make_store(url: str, **kwargs: Any) -> RedisSessionStore:
    """A store over a real client built from the options, as the service builds it."""
    options: dict[str, Any] = {"session_store_type": "redis", "redis_connection_url": url}
    options.update(kwargs.pop("config", {}))
    client = client_from_config(attrs.evolve(Config(), **options), reactor)
    store_options: dict[str, Any] = {"cookie_name": COOKIE, "lifetime": 3600.0, **kwargs}
    return RedisSessionStore(client, Sealer(SECRET), reactor, **store_options)


async def eventually(check: Any, what: str, timeout: float = 15.0) -> float:
    """Retry the coroutine function ``check`` until it succeeds; the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            await check()
            return time.monotonic() - started
        except Exception as e:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{what}: still failing after {timeout}s: {e}") from None
        await deferLater(reactor, 0.1, lambda: None)


class RedisTestCase(TestCase):
    timeout = 60

    def start_server(self, **kwargs: Any) -> RedisServer:
        server = RedisServer(Path(self.mktemp()), **kwargs).start()
        self.addCleanup(server.stop)
        return server

    def store(self, url: str, **kwargs: Any) -> RedisSessionStore:
        store = make_store(url, **kwargs)
        store.start()
        self.addCleanup(store.stop)
        return store


class StandaloneStoreTests(RedisTestCase):
    def setUp(self) -> None:
        self.server = self.start_server()
        self.url = self.server.url + "/0"

    def test_save_load_clear_and_ttl(self) -> Deferred[None]:
        async def go() -> None:
            store = self.store(self.url, lifetime=3600.0, expiration=7200.0)
            value = await store.save(SESSION)
            self.assertEqual(await store.load(value), SESSION)
            keys = self.server.cli("KEYS", "*").split()
            self.assertEqual(len(keys), 1)
            self.assertTrue(keys[0].startswith(COOKIE + "-"), keys)
            ttl = int(self.server.cli("PTTL", keys[0]))
            self.assertTrue(7_190_000 < ttl <= 7_200_000, ttl)
            # A refresh saves under the same key, with the new content.
            refreshed = attrs.evolve(SESSION, access_token="new-access", created_at=2.0)
            again = await store.save(refreshed, value)
            self.assertEqual(self.server.cli("KEYS", "*").split(), keys)
            self.assertEqual(await store.load(again), refreshed)
            self.assertEqual(await store.load(value), refreshed)
            await store.clear(again)
            self.assertEqual(self.server.cli("KEYS", "*").strip(), "")
            self.assertIsNone(await store.load(value))

        return Deferred.fromCoroutine(go())

    def test_an_entry_expires_with_its_ttl(self) -> Deferred[None]:
        async def go() -> None:
            store = self.store(self.url, lifetime=1.0)
            value = await store.save(SESSION)
            self.assertEqual(await store.load(value), SESSION)
            await deferLater(reactor, 1.2, lambda: None)
            self.assertEqual(self.server.cli("KEYS", "*").strip(), "")

        return Deferred.fromCoroutine(go())

    def test_a_tampered_ticket_never_reaches_redis(self) -> Deferred[None]:
        async def go() -> None:
            store = self.store(self.url)
            value = await store.save(SESSION)
            gets = _calls(self.server, "get")
            for i in (5, len(value) // 2, len(value) - 3):
                flipped = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]
                self.assertIsNone(await store.load(flipped))
            self.assertIsNone(await store.load("garbage"))
            self.assertEqual(_calls(self.server, "get"), gets)
            # Another deployment's cookie secret: no session either.
            other = make_store(self.url)
            other._sealer = Sealer(b"d" * 32)
            other.start()
            self.addCleanup(other.stop)
            self.assertIsNone(await other.load(value))
            self.assertEqual(await store.load(value), SESSION)

        return Deferred.fromCoroutine(go())

    def test_a_dump_of_redis_cannot_be_turned_into_a_session(self) -> Deferred[None]:
        async def go() -> None:
            store = self.store(self.url)
            await store.save(SESSION)
            (key,) = self.server.cli("KEYS", "*").split()
            raw = self.server.cli("GET", key).strip()
            for secret in ("alice", "access-token-value", "refresh-token-value"):
                self.assertNotIn(secret, raw)
            # Neither the cookie secret nor anything in Redis opens it.
            for purpose in (key, COOKIE, f"ticket:{COOKIE}"):
                self.assertIsNone(Sealer(SECRET).open(raw, purpose, 0, time.time()))
            self.assertEqual(len(self.server.cli("KEYS", "*").split()), 1)

        return Deferred.fromCoroutine(go())

    def test_two_stores_share_sessions_and_sign_out(self) -> Deferred[None]:
        async def go() -> None:
            one, two = self.store(self.url), self.store(self.url)
            value = await one.save(SESSION)
            self.assertEqual(await two.load(value), SESSION)
            await two.clear(value)
            self.assertIsNone(await one.load(value))
            # A refresh in flight when the session is signed out does not bring it back.
            await one.save(SESSION, value)
            self.assertIsNone(await one.load(value))

        return Deferred.fromCoroutine(go())

    def test_lock_contention_between_two_stores(self) -> Deferred[None]:
        async def go() -> None:
            one = self.store(self.url)
            two = self.store(self.url, lock_wait=0.5)
            value = await one.save(SESSION)
            events: list[str] = []

            async def second() -> None:
                async with two.lock(value):
                    events.append("two got it")

            async with one.lock(value):
                events.append("one got it")
                waiting = Deferred.fromCoroutine(second())
                await deferLater(reactor, 0.2, lambda: None)
                self.assertEqual(events, ["one got it"])
            await waiting
            self.assertEqual(events, ["one got it", "two got it"])

            # Held too long: the waiter gives up with StoreUnavailable.
            async with one.lock(value):
                with self.assertRaises(StoreUnavailable):
                    async with two.lock(value):
                        pass
            self.assertEqual(self.server.cli("KEYS", "*.lock").strip(), "")

        return Deferred.fromCoroutine(go())

    def test_a_lock_left_by_a_crashed_instance_expires(self) -> Deferred[None]:
        async def go() -> None:
            store = self.store(self.url, lock_ttl=0.6, lock_wait=3.0)
            value = await store.save(SESSION)
            (key,) = self.server.cli("KEYS", "*").split()
            # What a crashed holder leaves behind: a lock nobody renews or releases.
            self.server.cli("SET", key + ".lock", "crashed-holder", "PX", "600")
            started = time.monotonic()
            async with store.lock(value):
                waited = time.monotonic() - started
            self.assertTrue(0.3 < waited < 2.0, waited)

        return Deferred.fromCoroutine(go())

    def test_a_held_lock_is_renewed(self) -> Deferred[None]:
        async def go() -> None:
            store = self.store(self.url, lock_ttl=0.6)
            other = self.store(self.url, lock_wait=0.1)
            value = await store.save(SESSION)
            async with store.lock(value):
                await deferLater(reactor, 1.5, lambda: None)
                with self.assertRaises(StoreUnavailable):
                    async with other.lock(value):
                        pass

        return Deferred.fromCoroutine(go())

    def test_reconnects_after_the_server_is_killed_and_restarted(self) -> Deferred[None]:
        async def go() -> None:
            store = self.store(self.url)
            value = await store.save(SESSION)
            await store.check()
            self.server.kill()
            started = time.monotonic()
            with self.assertRaises(StoreUnavailable):
                await store.load(value)
            with self.assertRaises(StoreUnavailable):
                await store.check()
            self.assertLess(time.monotonic() - started, 5.0)
            self.server.start()
            took = await eventually(store.check, "reconnect")
            self.assertLess(took, 5.0)
            # No persistence: the old session is gone, new ones work.
            self.assertIsNone(await store.load(value))
            fresh = await store.save(SESSION)
            self.assertEqual(await store.load(fresh), SESSION)

        return Deferred.fromCoroutine(go())

    def test_password_and_database_from_the_url(self) -> Deferred[None]:
        async def go() -> None:
            server = self.start_server(args=["--requirepass", "s3cret"])
            store = self.store(f"redis://:s3cret@127.0.0.1:{server.port}/3")
            value = await store.save(SESSION)
            self.assertEqual(await store.load(value), SESSION)
            out = server.cli("-a", "s3cret", "--no-auth-warning", "-n", "3", "DBSIZE")
            self.assertEqual(out.strip(), "1")
            wrong = self.store(f"redis://:wrong@127.0.0.1:{server.port}/0")
            with self.assertRaises(StoreUnavailable):
                await wrong.check()

        return Deferred.fromCoroutine(go())


def _calls(server: RedisServer, command: str) -> int:
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class TLSStoreTests(RedisTestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        self.ca, cert, key = _certificates(directory)
        self.server = self.start_server(tls=(self.ca, cert, key))

    def test_rediss_with_the_ca_path(self) -> Deferred[None]:
        async def go() -> None:
            url = f"rediss://127.0.0.1:{self.server.port}/0"
            store = self.store(url, config={"redis_ca_path": str(self.ca)})
            value = await store.save(SESSION)
            self.assertEqual(await store.load(value), SESSION)
            # Without the CA, the server's certificate is not trusted: no connection.
            untrusting = self.store(url)
            with self.assertRaises(StoreUnavailable):
                await untrusting.check()
            skipping = self.store(url, config={"redis_insecure_skip_tls_verify": True})
            self.assertEqual(await skipping.load(value), SESSION)

        return Deferred.fromCoroutine(go())

"""HTTP/2 from clients on a TLS listener, HTTP/1.1 to the upstream: curl --http2 against
``twistd -n oauthgate`` listening on an ``ssl:`` endpoint. Fails (never skips) when curl
is missing; .ci/run installs it."""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from oauthgate.testing import EchoResource
from tests.integration.test_end_to_end import OAuthGateProcess, free_port
from tests.integration.test_proxy import gate_config, session_cookie

pytestmark = pytest.mark.integration


def self_signed(workdir: Path) -> Path:
    """A key and certificate for 127.0.0.1 in one PEM file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = workdir / "tls.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path


class HTTP2Tests(TestCase):
    timeout = 60

    def test_an_http2_client_reaches_the_upstream_through_tls(self) -> Deferred[None]:
        curl = shutil.which("curl")
        self.assertIsNotNone(curl, "curl is needed for the HTTP/2 test (.ci/run installs it)")
        assert curl is not None
        workdir = Path(self.mktemp()).absolute()
        workdir.mkdir(parents=True)
        pem = self_signed(workdir)
        echo = reactor.listenTCP(0, Site(EchoResource()), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        port = free_port()
        config = gate_config()
        gate = OAuthGateProcess(
            [
                f"--http-address=ssl:{port}:interface=127.0.0.1:privateKey={pem}:certKey={pem}",
                "--provider=oidc",
                f"--oidc-issuer-url={config.oidc_issuer_url}",
                f"--client-id={config.client_id}",
                f"--client-secret={config.client_secret}",
                f"--cookie-secret={config.cookie_secret}",
                "--email-domain=example.com",
                f"--upstream=http://127.0.0.1:{echo.getHost().port}/",
            ],
            workdir,
        )
        self.addCleanup(gate.stop)
        cookie = session_cookie(attrs.evolve(config))
        base = f"https://127.0.0.1:{port}"

        async def curl_get(path: str, *extra: str) -> tuple[str, str]:
            """curl's output and errors, run without blocking the reactor (which also
            serves the echo upstream)."""
            args = ["-sk", "--max-time", "10", "--http2", "-w", "\n%{http_version} %{http_code}"]
            out, err, _ = await getProcessOutputAndValue(curl, [*args, *extra, base + path], env={})
            return out.decode(), err.decode()

        async def go() -> None:
            for _ in range(100):
                if gate.process.poll() is not None:
                    self.fail(f"oauthgate exited:\n{gate.log()}")
                if (await curl_get("/ping"))[0].endswith("2 200"):
                    break
                await _sleep(0.1)
            out, err = await curl_get(
                "/api?format=json",
                "-H",
                f"Cookie: _oauth2_proxy={cookie}",
                "-H",
                "Accept: application/json",
            )
            body, _, status = out.rpartition("\n")
            self.assertEqual(status, "2 200", err + gate.log())
            headers = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
            self.assertEqual(headers["x-forwarded-email"], ["alice@example.com"])
            self.assertEqual(headers["x-forwarded-proto"], ["https"])
            self.assertEqual((await curl_get("/api"))[0].rpartition("\n")[2], "2 401")

        return Deferred.fromCoroutine(go())


async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)

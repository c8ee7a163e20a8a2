"""HTTPS on ``--https-address``: ``twistd -n oauthgate`` in a subprocess with a test CA's
certificate, reached with curl and ``openssl s_client`` (run as child processes, so the
reactor is never blocked). Fails (never skips) when curl or openssl is missing."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
from pathlib import Path

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

from tests.integration.test_end_to_end import OAuthGateProcess, free_port
from tests.integration.test_proxy import gate_config

pytestmark = pytest.mark.integration


class CertificateAuthority:
    """A certificate authority and server certificates for 127.0.0.1 it signs."""

    def __init__(self, workdir: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oauthgate test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = workdir / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cert_file: Path, key_file: Path) -> int:
        """Write a new key and certificate for 127.0.0.1; its serial number."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return serial


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is needed for the TLS tests (.ci/run installs it)")
    return path


async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class TLSTests(TestCase):
    timeout = 60

    def start_gate(self, *extra: str) -> tuple[OAuthGateProcess, int]:
        self.workdir = Path(self.mktemp()).absolute()
        self.workdir.mkdir(parents=True)
        self.ca = CertificateAuthority(self.workdir)
        self.cert_file = self.workdir / "cert.pem"
        self.key_file = self.workdir / "key.pem"
        self.serial = self.ca.issue(self.cert_file, self.key_file)
        config = gate_config()
        self.https_port = free_port()
        gate = OAuthGateProcess(
            [
                "--provider=oidc",
                f"--oidc-issuer-url={config.oidc_issuer_url}",
                f"--client-id={config.client_id}",
                f"--client-secret={config.client_secret}",
                f"--cookie-secret={config.cookie_secret}",
                "--email-domain=example.com",
                "--upstream=static://200",
                f"--https-address=127.0.0.1:{self.https_port}",
                f"--tls-cert-file={self.cert_file}",
                f"--tls-key-file={self.key_file}",
                *extra,
            ],
            self.workdir,
        )
        self.addCleanup(gate.stop)
        return gate, self.https_port

    async def curl(self, url: str, *extra: str) -> tuple[str, str]:
        """curl's output (headers, body, then ``<http version> <status>``) and errors."""
        args = ["-s", "-i", "--max-time", "10", "--cacert", str(self.ca.path)]
        args += ["-w", "\n%{http_version} %{http_code}"]
        out, err, _ = await getProcessOutputAndValue(_tool("curl"), [*args, *extra, url], env={})
        return out.decode(), err.decode()

    async def served_serial(self, port: int, *extra: str) -> int | None:
        """The serial number of the certificate a new connection is served, or None when
        the handshake fails."""
        command = f"{_tool('openssl')} s_client -connect 127.0.0.1:{port} {' '.join(extra)}"
        out, _, code = await getProcessOutputAndValue(
            "/bin/sh", ["-c", command + " </dev/null"], env={}
        )
        if code != 0 or b"BEGIN CERTIFICATE" not in out:
            return None
        return x509.load_pem_x509_certificate(out).serial_number

    async def wait_for_https(self, gate: OAuthGateProcess, port: int) -> None:
        for _ in range(150):
            if gate.process.poll() is not None:
                self.fail(f"oauthgate exited:\n{gate.log()}")
            if (await self.curl(f"https://127.0.0.1:{port}/ping"))[0].endswith(" 200"):
                return
            await _sleep(0.1)
        self.fail(f"oauthgate did not answer on HTTPS:\n{gate.log()}")

    def test_tls_1_2_and_1_3_clients_are_served_over_http2_with_hsts(self) -> Deferred[None]:
        gate, port = self.start_gate("--hsts-max-age=31536000")
        url = f"https://127.0.0.1:{port}/ping"

        async def go() -> None:
            await self.wait_for_https(gate, port)
            out, err = await self.curl(url, "--http2", "--tlsv1.3")
            self.assertTrue(out.endswith("\n2 200"), out + err + gate.log())
            self.assertIn("strict-transport-security: max-age=31536000", out.lower())
            out, err = await self.curl(url, "--http2", "--tlsv1.2", "--tls-max", "1.2")
            self.assertTrue(out.endswith("\n2 200"), out + err)
            out, err = await self.curl(url, "--http1.1")
            self.assertTrue(out.endswith("\n1.1 200"), out + err)
            # The plain listener still serves, without HSTS (it is no HTTPS response).
            out, err = await self.curl(gate.base + "/ping")
            self.assertTrue(out.endswith("\n1.1 200"), out + err)
            self.assertNotIn("strict-transport-security", out.lower())

        return Deferred.fromCoroutine(go())

    def test_tls_min_version_1_3_refuses_a_tls_1_2_client(self) -> Deferred[None]:
        gate, port = self.start_gate("--tls-min-version=TLS1.3")
        url = f"https://127.0.0.1:{port}/ping"

        async def go() -> None:
            await self.wait_for_https(gate, port)
            out, _ = await self.curl(url, "--tlsv1.2", "--tls-max", "1.2")
            self.assertTrue(out.endswith(" 000"), out)  # no HTTP exchange at all
            self.assertIsNone(await self.served_serial(port, "-tls1_2"))
            self.assertEqual(await self.served_serial(port, "-tls1_3"), self.serial)

        return Deferred.fromCoroutine(go())

    def test_sighup_serves_a_new_certificate_and_keeps_the_old_one_if_broken(
        self,
    ) -> Deferred[None]:
        gate, port = self.start_gate()

        async def go() -> None:
            await self.wait_for_https(gate, port)
            self.assertEqual(await self.served_serial(port), self.serial)
            # A broken pair: the old certificate stays, and the log says why.
            self.cert_file.write_bytes(b"not a certificate\n")
            os.kill(gate.process.pid, signal.SIGHUP)
            for _ in range(100):
                if "Kept the current TLS certificate" in gate.log():
                    break
                await _sleep(0.1)
            self.assertIn("Kept the current TLS certificate", gate.log())
            self.assertEqual(await self.served_serial(port), self.serial)
            # A good new pair is served to new connections.
            new_serial = self.ca.issue(self.cert_file, self.key_file)
            os.kill(gate.process.pid, signal.SIGHUP)
            served = None
            for _ in range(100):
                served = await self.served_serial(port)
                if served == new_serial:
                    break
                await _sleep(0.1)
            self.assertEqual(served, new_serial, gate.log())
            self.assertIsNone(gate.process.poll(), "SIGHUP must not stop oauthgate")

        return Deferred.fromCoroutine(go())

    def test_force_https_redirects_plain_http_to_the_https_port(self) -> Deferred[None]:
        gate, port = self.start_gate("--force-https")

        async def go() -> None:
            await self.wait_for_https(gate, port)
            out, err = await self.curl(gate.base + "/some/path?a=1")
            self.assertTrue(out.endswith("\n1.1 308"), out + err)
            self.assertIn(f"location: https://127.0.0.1:{port}/some/path?a=1", out.lower())
            # A trusted front proxy that terminated TLS is not redirected.
            out, err = await self.curl(gate.base + "/ping", "-H", "X-Forwarded-Proto: https")
            self.assertTrue(out.endswith(" 308"), out + err)  # --reverse-proxy is off here
            out, err = await self.curl(f"https://127.0.0.1:{port}/ping")
            self.assertTrue(out.endswith(" 200"), out + err)

        return Deferred.fromCoroutine(go())

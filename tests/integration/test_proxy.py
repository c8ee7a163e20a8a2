"""oauthgate as a reverse proxy over real sockets.

Upstream servers (Twisted sites, a WebSocket echo server, a TLS server with a test CA, a
UNIX socket server) run on free loopback ports in this process; oauthgate itself runs in
this process too, built with ``build_components`` and served by ``GateSite`` with the real
reactor, except for the memory test, which streams hundreds of megabytes through a
``twistd -n oauthgate`` child and reads its peak memory from ``/proc``. Clients are
blocking sockets run in threads (``deferToThread``), so every byte crosses a real socket
and the reactor stays free to serve. Requests carry a session cookie sealed with the
gate's own store instead of going through a login.

Marked ``integration``; never skipped.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor as _reactor
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from oauthgate.config.options import Config
from oauthgate.config.validate import validate
from oauthgate.plugins import Plugins
from oauthgate.service import build_components
from oauthgate.session import Session
from oauthgate.sessions.cookie_store import CookieSessionStore
from oauthgate.sessions.crypto import Sealer, decode_secret
from oauthgate.testing import Browser
from oauthgate.upstreams.spec import UpstreamSpec
from oauthgate.web.gate import GateResource
from oauthgate.web.site import GateSite
from tests.integration.test_end_to_end import OAuthGateProcess, free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")
reactor: Any = _reactor  # the real one, with listenSSL, listenUNIX...
COOKIE_SECRET = base64.urlsafe_b64encode(bytes(range(32))).decode("ascii")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT = 10.0


# --- servers ------------------------------------------------------------------------------


class Echo(Resource):
    """An upstream that answers with what it received, as JSON."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        Resource.__init__(self)
        self.name = name

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        headers: dict[str, list[str]] = {}
        for key, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(key.decode().lower(), []).extend(v.decode() for v in values)
        return json.dumps(
            {
                "name": self.name,
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": headers,
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()


class Events(Resource):
    """Server-Sent Events: event one at once, event two when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.requests: list[Request] = []

    def render(self, request: Request) -> int:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.write(b"data: one\n\n")
        self.requests.append(request)
        return NOT_DONE_YET


class Silent(Resource):
    """Never answers."""

    isLeaf = True

    def render(self, request: Request) -> int:
        return NOT_DONE_YET


@implementer(IPullProducer)
class Zeros:
    """``size`` zero bytes into ``request``, one chunk each time the transport asks."""

    chunk = bytes(256 * 1024)

    def __init__(self, request: Request, size: int) -> None:
        self.request = request
        self.left = size

    def resumeProducing(self) -> None:
        if self.left <= 0:
            return
        piece = self.chunk[: min(len(self.chunk), self.left)]
        self.left -= len(piece)
        self.request.write(piece)
        if self.left == 0:
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.left = 0


class Blob(Resource):
    """GET /?size=N streams N bytes; POST answers the size of the body it received."""

    isLeaf = True

    def render_GET(self, request: Request) -> int:
        size = int(request.args[b"size"][0])
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % size)
        request.registerProducer(Zeros(request, size), False)
        return NOT_DONE_YET

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        return b"%d" % request.content.seek(0, 2)


class WebSocketEcho(Protocol):
    """A minimal RFC 6455 server: handshake, then echo every message; "bye" makes it
    close the connection itself (close frame, then TCP close)."""

    def __init__(self, seen: list[dict[str, str]]) -> None:
        self.seen = seen
        self.buffer = b""
        self.upgraded = False

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if not self.upgraded:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            headers = {
                k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])
            }
            headers[":request-line"] = lines[0]
            self.seen.append(headers)
            accept = base64.b64encode(
                hashlib.sha1(headers["sec-websocket-key"].encode() + WS_GUID).digest()
            )
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.upgraded = True
        while True:
            frame = parse_frame(self.buffer)
            if frame is None:
                return
            opcode, payload, self.buffer = frame
            if opcode == 8:
                self.transport.write(make_frame(8, payload, mask=False))
                self.transport.loseConnection()
                return
            if payload == b"bye":
                self.transport.write(make_frame(8, struct.pack("!H", 1000), mask=False))
                self.transport.loseConnection()
                return
            self.transport.write(make_frame(opcode, payload, mask=False))


def make_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    head = bytes([0x80 | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def parse_frame(data: bytes) -> tuple[int, bytes, bytes] | None:
    """(opcode, unmasked payload, rest), or None until the frame is complete."""
    if len(data) < 2:
        return None
    opcode, masked, size = data[0] & 0x0F, data[1] & 0x80, data[1] & 0x7F
    at = 2
    if size == 126:
        if len(data) < 4:
            return None
        size, at = struct.unpack("!H", data[2:4])[0], 4
    elif size == 127:
        if len(data) < 10:
            return None
        size, at = struct.unpack("!Q", data[2:10])[0], 10
    key = b""
    if masked:
        key, at = data[at : at + 4], at + 4
    if len(data) < at + size:
        return None
    payload = data[at : at + size]
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return opcode, payload, data[at + size :]


# --- TLS test CA --------------------------------------------------------------------------


@attrs.frozen
class Authority:
    ca_pem: bytes
    server_pem: bytes  # key + certificate, for the server


def make_ca(server_name: str) -> Authority:
    """A CA and a server certificate for ``server_name`` (a DNS name) signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oauthgate test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Authority(
        ca.public_bytes(serialization.Encoding.PEM),
        key_pem + cert.public_bytes(serialization.Encoding.PEM),
    )


# --- blocking clients (run in threads) -------------------------------------------------------


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    local_port: int

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive HTTP connection to oauthgate, used from a thread."""

    def __init__(self, port: int, cookie: str | None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        self.cookie = cookie

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Answer:
        sent = dict(headers or {})
        if self.cookie is not None:
            sent["Cookie"] = f"_oauth2_proxy={self.cookie}"
        chunked = sent.get("Transfer-Encoding") == "chunked"
        self.connection.request(method, path, body=body, headers=sent, encode_chunked=chunked)
        assert self.connection.sock is not None
        local_port = self.connection.sock.getsockname()[1]
        response = self.connection.getresponse()
        data = response.read()
        return Answer(
            response.status, {k.lower(): v for k, v in response.getheaders()}, data, local_port
        )

    def close(self) -> None:
        self.connection.close()


def raw_exchange(port: int, request: bytes, until: bytes) -> tuple[socket.socket, bytes]:
    """Connect, send ``request``, read until ``until`` has arrived; the socket stays open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(request)
    return sock, read_until(sock, b"", until)


def read_until(sock: socket.socket, data: bytes, until: bytes) -> bytes:
    while until not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {until!r}; got {data!r}")
        data += chunk
    return data


def ws_handshake(port: int, path: str, cookie: str | None) -> tuple[socket.socket, bytes, bytes]:
    """(socket, response head, bytes after the head)."""
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {path} HTTP/1.1".encode(),
        f"Host: 127.0.0.1:{port}".encode(),
        b"Upgrade: websocket",
        b"Connection: keep-alive, Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
    ]
    if cookie:
        lines.append(f"Cookie: _oauth2_proxy={cookie}".encode())
    sock, data = raw_exchange(port, b"\r\n".join(lines) + b"\r\n\r\n", b"\r\n\r\n")
    head, rest = data.split(b"\r\n\r\n", 1)
    if head.startswith(b"HTTP/1.1 101"):
        expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        assert b"Sec-WebSocket-Accept: " + expected in head, head
    return sock, head, rest


def ws_receive(sock: socket.socket, buffer: bytes) -> tuple[int, bytes, bytes]:
    while True:
        frame = parse_frame(buffer)
        if frame is not None:
            return frame
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed in the middle of a frame")
        buffer += chunk


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# --- the gate in this process ------------------------------------------------------------------


def gate_config(**changes: Any) -> Config:
    options: dict[str, Any] = {
        "provider": "oidc",
        "oidc_issuer_url": "http://127.0.0.1:9",
        "client_id": "app",
        "client_secret": "app-secret",
        "cookie_secret": COOKIE_SECRET,
        "cookie_secure": False,
        "email_domains": ("example.com",),
    }
    options.update(changes)
    return attrs.evolve(Config(), **options)


def session_cookie(config: Config) -> str:
    store = CookieSessionStore(
        Sealer(decode_secret(config.cookie_secret)),
        reactor,
        purpose=config.cookie_name,
        lifetime=config.cookie_expire,
    )
    session = Session(user="alice", email="alice@example.com", created_at=reactor.seconds())
    saved: Deferred[str] = Deferred.fromCoroutine(store.save(session, None))
    return cast(str, saved.result)  # sealing runs to its end at once


def _closer(close: Callable[[], Any]) -> Callable[[], Deferred[Any]]:
    async def wait() -> Any:
        return await close()

    return lambda: Deferred.fromCoroutine(wait())


class ProxyTestCase(TestCase):
    """Servers that are cleaned up after each test, and oauthgate built in this process."""

    timeout = 60

    def setUp(self) -> None:
        self.protocols: list[Any] = []
        self.addCleanup(self.settle)

    def track(self, factory: Any) -> Any:
        build = factory.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            protocol = build(addr)
            self.protocols.append(protocol)
            return protocol

        factory.buildProtocol = buildProtocol
        return factory

    def listen(self, resource: Resource) -> str:
        port = reactor.listenTCP(0, self.track(Site(resource)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    def listen_tls(self, resource: Resource, server_pem: bytes) -> int:
        options = ssl.PrivateCertificate.loadPEM(server_pem).options()
        port = reactor.listenSSL(0, self.track(Site(resource)), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def listen_websocket(self) -> tuple[str, list[dict[str, str]]]:
        seen: list[dict[str, str]] = []
        factory = Factory.forProtocol(lambda: WebSocketEcho(seen))
        port = reactor.listenTCP(0, self.track(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}", seen

    def gate(self, **changes: Any) -> tuple[int, str]:
        """oauthgate with ``changes`` to the config: (its port, a valid session cookie)."""
        config = gate_config(**changes)
        validate(config)
        components = build_components(config, reactor=reactor, plugins=Plugins.from_entry_points())
        site = GateSite(GateResource(components.gate), reactor, enabled=False)
        port = reactor.listenTCP(0, self.track(site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        for upstream in components.upstreams:
            close = getattr(upstream, "close", None)
            if close is not None:
                self.addCleanup(_closer(close))
        return int(port.getHost().port), session_cookie(config)

    async def settle(self) -> None:
        """Wait until every connection the servers accepted is closed (the clients closed
        theirs), so the next test starts with a clean reactor."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            open_ = [t for t in self._transports() if getattr(t, "connected", False)]
            if not open_:
                return
            await deferLater(reactor, 0.02, lambda: None)
        for transport in self._transports():
            if getattr(transport, "connected", False):
                transport.abortConnection()
        await deferLater(reactor, 0.05, lambda: None)

    def _transports(self) -> list[Any]:
        return [getattr(getattr(p, "_channel", p), "transport", None) for p in self.protocols]

    def call(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThread(function, *args)

    def fetch(
        self, port: int, cookie: str | None, method: str, path: str, **kwargs: Any
    ) -> Deferred[Answer]:
        def go() -> Answer:
            client = Client(port, cookie)
            try:
                return client.request(method, path, **kwargs)
            finally:
                client.close()

        return deferToThread(go)


def run(coro: Any) -> Deferred[None]:
    return Deferred.fromCoroutine(coro)


# --- routing ---------------------------------------------------------------------------------


class RoutingTests(ProxyTestCase):
    def test_each_request_goes_to_the_upstream_with_the_longest_matching_path(
        self,
    ) -> Deferred[None]:
        async def go() -> None:
            root = self.listen(Echo("root"))
            api = self.listen(Echo("api"))
            docs = Path(self.mktemp()).resolve()
            docs.mkdir(parents=True)
            (docs / "guide.txt").write_text("the guide")
            port, cookie = self.gate(upstreams=(f"{root}/", f"{api}/api/", f"file://{docs}#/docs/"))
            answer = await self.fetch(port, cookie, "GET", "/some/page?x=1")
            self.assertEqual(
                (answer.json()["name"], answer.json()["uri"]), ("root", "/some/page?x=1")
            )
            answer = await self.fetch(port, cookie, "GET", "/api/v1/items?y=2")
            self.assertEqual(
                (answer.json()["name"], answer.json()["uri"]), ("api", "/api/v1/items?y=2")
            )
            answer = await self.fetch(port, cookie, "GET", "/docs/guide.txt")
            self.assertEqual(answer.body, b"the guide")
            # "/api" is not under "/api/": the root upstream serves it (oauth2-proxy too)
            self.assertEqual((await self.fetch(port, cookie, "GET", "/api")).json()["name"], "root")

        return run(go())

    def test_a_missing_trailing_slash_is_a_301_to_the_registered_prefix(self) -> Deferred[None]:
        async def go() -> None:
            api = self.listen(Echo("api"))
            port, cookie = self.gate(upstreams=(f"{api}/api/",))
            answer = await self.fetch(port, cookie, "GET", "/api?x=1")
            self.assertEqual(answer.status, 301)
            self.assertEqual(answer.headers["location"], "/api/?x=1")
            self.assertEqual((await self.fetch(port, cookie, "GET", "/other")).status, 404)

        return run(go())

    def test_regex_path_with_rewrite_target(self) -> Deferred[None]:
        async def go() -> None:
            api = self.listen(Echo("api"))
            root = self.listen(Echo("root"))
            specs = (
                UpstreamSpec(id="root", path="/", uri=f"{root}/"),
                UpstreamSpec(id="api", path="^/api/(.*)", rewrite_target="/v1/$1", uri=api),
            )
            port, cookie = self.gate(upstream_specs=specs)
            echoed = (await self.fetch(port, cookie, "GET", "/api/users/7?full=1")).json()
            self.assertEqual((echoed["name"], echoed["uri"]), ("api", "/v1/users/7?full=1"))
            self.assertEqual(echoed["headers"]["x-forwarded-uri"], ["/api/users/7?full=1"])
            self.assertEqual((await self.fetch(port, cookie, "GET", "/x")).json()["name"], "root")

        return run(go())

    def test_encoded_slashes_reach_the_upstream_as_sent(self) -> Deferred[None]:
        async def go() -> None:
            app = self.listen(Echo("app"))
            port, cookie = self.gate(upstreams=(f"{app}/",))
            echoed = (await self.fetch(port, cookie, "GET", "/files/a%2Fb%20c?q=%2F")).json()
            self.assertEqual(echoed["uri"], "/files/a%2Fb%20c?q=%2F")

        return run(go())

    def test_dot_segments_are_redirected_away_unless_the_raw_path_is_proxied(
        self,
    ) -> Deferred[None]:
        async def go() -> None:
            app = self.listen(Echo("app"))
            port, cookie = self.gate(upstreams=(f"{app}/",))
            answer = await self.fetch(port, cookie, "GET", "/a/%2e%2e/b?x")
            self.assertEqual((answer.status, answer.headers["location"]), (301, "/b?x"))

            raw_port, raw_cookie = self.gate(upstreams=(f"{app}/",), proxy_raw_path=True)
            echoed = (await self.fetch(raw_port, raw_cookie, "GET", "/a/%2e%2e/b")).json()
            self.assertEqual(echoed["uri"], "/a/%2e%2e/b")

        return run(go())

    def test_raw_path_routing_does_not_decode_slashes(self) -> Deferred[None]:
        async def go() -> None:
            inner = self.listen(Echo("inner"))
            root = self.listen(Echo("root"))
            upstreams = (f"{root}/", f"{inner}/a/b/")
            port, cookie = self.gate(upstreams=upstreams)
            self.assertEqual(
                (await self.fetch(port, cookie, "GET", "/a%2Fb/x")).json()["name"], "inner"
            )
            raw_port, raw_cookie = self.gate(upstreams=upstreams, proxy_raw_path=True)
            echoed = (await self.fetch(raw_port, raw_cookie, "GET", "/a%2Fb/x")).json()
            self.assertEqual((echoed["name"], echoed["uri"]), ("root", "/a%2Fb/x"))

        return run(go())


class StaticAndFileTests(ProxyTestCase):
    def test_static_upstream_answers_its_code_with_an_empty_body(self) -> Deferred[None]:
        async def go() -> None:
            port, cookie = self.gate(upstreams=("static://202",))
            answer = await self.fetch(port, cookie, "POST", "/anything", body=b"ignored")
            self.assertEqual((answer.status, answer.body), (202, b""))
            self.assertEqual(answer.headers["content-length"], "0")
            # still behind the login
            self.assertEqual(
                (
                    await self.fetch(
                        port, None, "GET", "/x", headers={"Accept": "application/json"}
                    )
                ).status,
                401,
            )

        return run(go())

    def make_tree(self) -> Path:
        top = Path(self.mktemp()).resolve()
        docs = top / "docs"
        (docs / "sub").mkdir(parents=True)
        (docs / "index.html").write_text("<h1>home</h1>")
        (docs / "app.js").write_text("console.log(1)")
        (docs / "style.css").write_text("body{}")
        (docs / "data.bin").write_bytes(b"\x00\x01")
        (docs / "archive.tar.gz").write_bytes(b"\x1f\x8b not really")
        (docs / "sub" / "page.html").write_text("<p>sub</p>")
        (top / "secret.txt").write_text("TOP SECRET")
        (docs / "escape").symlink_to(top / "secret.txt")
        (docs / "escape-dir").symlink_to(top)
        (docs / "inside").symlink_to(docs / "sub" / "page.html")
        return docs

    def test_files_are_served_with_their_content_types(self) -> Deferred[None]:
        async def go() -> None:
            docs = self.make_tree()
            port, cookie = self.gate(upstreams=(f"file://{docs}#/docs/",))

            async def get(path: str) -> Answer:
                return await self.fetch(port, cookie, "GET", path)

            index = await get("/docs/")
            self.assertEqual((index.status, index.body), (200, b"<h1>home</h1>"))
            self.assertTrue(index.headers["content-type"].startswith("text/html"))
            types = {
                "/docs/app.js": "text/javascript",
                "/docs/style.css": "text/css",
                "/docs/data.bin": "application/octet-stream",
                "/docs/archive.tar.gz": "application/gzip",
            }
            for path, expected in types.items():
                answer = await get(path)
                self.assertEqual(answer.status, 200, path)
                self.assertEqual(answer.headers["content-type"].split(";")[0], expected, path)
                self.assertEqual(answer.headers["x-content-type-options"], "nosniff")
                self.assertNotIn("content-encoding", answer.headers)
            self.assertEqual((await get("/docs/sub/page.html")).body, b"<p>sub</p>")
            self.assertEqual((await get("/docs/inside")).body, b"<p>sub</p>")
            sub = await get("/docs/sub")
            self.assertEqual((sub.status, sub.headers["location"]), (301, "/docs/sub/"))
            self.assertEqual((await get("/docs/sub/")).status, 404)  # no index, no listing
            self.assertEqual((await get("/docs/missing.txt")).status, 404)
            head = await self.fetch(port, cookie, "HEAD", "/docs/app.js")
            self.assertEqual((head.status, head.headers["content-length"]), (200, "14"))
            ranged = await self.fetch(
                port, cookie, "GET", "/docs/app.js", headers={"Range": "bytes=0-6"}
            )
            self.assertEqual((ranged.status, ranged.body), (206, b"console"))
            post = await self.fetch(port, cookie, "POST", "/docs/app.js", body=b"x")
            self.assertEqual(post.status, 405)

        return run(go())

    def test_nothing_outside_the_directory_is_served(self) -> Deferred[None]:
        async def go() -> None:
            docs = self.make_tree()
            for raw in (False, True):
                port, cookie = self.gate(upstreams=(f"file://{docs}#/docs/",), proxy_raw_path=raw)
                for path in (
                    "/docs/../secret.txt",
                    "/docs/%2e%2e/secret.txt",
                    "/docs/%2E%2E%2Fsecret.txt",
                    "/docs/..%2fsecret.txt",
                    "/docs/sub/%2e%2e/%2e%2e/secret.txt",
                    "/docs/escape",
                    "/docs/escape-dir/secret.txt",
                    "/docs/%00secret.txt",
                ):
                    answer = await self.fetch(port, cookie, "GET", path)
                    self.assertNotIn(b"TOP SECRET", answer.body, (raw, path))
                    self.assertIn(answer.status, (301, 404), (raw, path))
                    if answer.status == 301:  # to a cleaned path, outside /docs/: nothing
                        followed = await self.fetch(port, cookie, "GET", answer.headers["location"])
                        self.assertEqual(followed.status, 404, (raw, path))

        return run(go())


class HeaderTests(ProxyTestCase):
    def test_forwarded_headers_are_set_and_hop_by_hop_headers_removed(self) -> Deferred[None]:
        async def go() -> None:
            app = self.listen(Echo("app"))
            port, cookie = self.gate(upstreams=(f"{app}/",))
            headers = {
                "X-Forwarded-For": "6.6.6.6",
                "X-Forwarded-Uri": "/forged",
                "Connection": "keep-alive, X-Private",
                "X-Private": "hop",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
            }
            echoed = (await self.fetch(port, cookie, "GET", "/p?q=1", headers=headers)).json()
            seen = echoed["headers"]
            self.assertEqual(seen["x-forwarded-for"], ["127.0.0.1"])
            self.assertEqual(seen["x-forwarded-proto"], ["http"])
            self.assertEqual(seen["x-forwarded-host"], [f"127.0.0.1:{port}"])
            self.assertEqual(seen["x-forwarded-uri"], ["/p?q=1"])
            self.assertEqual(seen["x-forwarded-email"], ["alice@example.com"])
            for name in ("x-private", "keep-alive", "te"):
                self.assertNotIn(name, seen)

        return run(go())

    def test_with_reverse_proxy_the_front_proxys_headers_are_kept(self) -> Deferred[None]:
        async def go() -> None:
            app = self.listen(Echo("app"))
            port, cookie = self.gate(
                upstreams=(f"{app}/",),
                reverse_proxy=True,
                redirect_url="http://a.test/oauth2/callback",
            )
            headers = {
                "X-Forwarded-For": "198.51.100.9",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "app.example.com",
                "X-Forwarded-Uri": "/outer/p",
            }
            seen = (await self.fetch(port, cookie, "GET", "/p", headers=headers)).json()["headers"]
            self.assertEqual(seen["x-forwarded-for"], ["198.51.100.9, 127.0.0.1"])
            self.assertEqual(seen["x-forwarded-proto"], ["https"])
            self.assertEqual(seen["x-forwarded-host"], ["app.example.com"])
            self.assertEqual(seen["x-forwarded-uri"], ["/outer/p"])

        return run(go())


class FailureTests(ProxyTestCase):
    def test_refused_and_slow_upstreams_get_502_and_504_and_the_connection_goes_on(
        self,
    ) -> Deferred[None]:
        async def go() -> None:
            app = self.listen(Echo("app"))
            slow = self.listen(Silent())
            down = f"http://127.0.0.1:{free_port()}"
            port, cookie = self.gate(
                upstreams=(f"{app}/", f"{down}/down/", f"{slow}/slow/"), upstream_timeout=0.5
            )

            def on_one_connection() -> list[Answer]:
                client = Client(port, cookie)
                try:
                    return [
                        client.request("GET", "/down/x"),
                        client.request("GET", "/slow/x"),
                        client.request("GET", "/fine"),
                    ]
                finally:
                    client.close()

            down_answer, slow_answer, fine = await self.call(on_one_connection)
            self.assertEqual(down_answer.status, 502)
            self.assertIn(b"could not be reached", down_answer.body)
            self.assertEqual(slow_answer.status, 504)
            self.assertIn(b"did not answer in time", slow_answer.body)
            self.assertEqual(fine.json()["name"], "app")
            self.assertEqual(
                len({down_answer.local_port, slow_answer.local_port, fine.local_port}), 1
            )

        return run(go())


class ConnectionReuseTests(ProxyTestCase):
    def count_connections(self, resource: Resource) -> tuple[str, list[object]]:
        site = Site(resource)
        accepted: list[object] = []
        build = site.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            accepted.append(addr)
            return build(addr)

        site.buildProtocol = buildProtocol  # type: ignore[method-assign]
        port = reactor.listenTCP(0, self.track(site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}", accepted

    def test_upstream_connections_are_reused(self) -> Deferred[None]:
        async def go() -> None:
            app, accepted = self.count_connections(Echo("app"))
            port, cookie = self.gate(upstreams=(f"{app}/",))
            for _ in range(3):
                self.assertEqual((await self.fetch(port, cookie, "GET", "/")).status, 200)
            self.assertEqual(len(accepted), 1)

        return run(go())

    def test_without_keep_alives_each_request_opens_a_connection(self) -> Deferred[None]:
        async def go() -> None:
            app, accepted = self.count_connections(Echo("app"))
            port, cookie = self.gate(upstreams=(f"{app}/",), disable_keep_alives=True)
            for _ in range(3):
                echoed = (await self.fetch(port, cookie, "GET", "/")).json()
                self.assertEqual(echoed["headers"]["connection"], ["close"])
            self.assertEqual(len(accepted), 3)

        return run(go())

    def test_a_kept_connection_the_upstream_drops_is_retried_on_a_new_one(
        self,
    ) -> Deferred[None]:
        """The race every keep-alive proxy meets: the upstream closes an idle connection
        just as the next request goes out on it. A GET is sent again on a new one."""

        class OneAnswerEach(Protocol):
            # Answers the first request on a connection (keep-alive); when a second one
            # arrives, closes the connection without answering.
            answered = False

            def dataReceived(self, data: bytes) -> None:
                if self.answered:
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
                self.answered = True
                self.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                )

        async def go() -> None:
            factory = self.track(Factory.forProtocol(OneAnswerEach))
            upstream = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(upstream.stopListening)
            app = f"http://127.0.0.1:{upstream.getHost().port}"
            port, cookie = self.gate(upstreams=(f"{app}/",))
            for _ in range(3):
                answer = await self.fetch(port, cookie, "GET", "/")
                self.assertEqual((answer.status, answer.body), (200, b"ok"))
            # every request after the first found its kept connection dropped and was
            # answered on a new one
            self.assertEqual(len([p for p in self.protocols if isinstance(p, OneAnswerEach)]), 3)

        return run(go())


class UnixSocketTests(ProxyTestCase):
    def test_a_unix_socket_upstream(self) -> Deferred[None]:
        async def go() -> None:
            directory = tempfile.mkdtemp(prefix="oauthgate-")  # short: socket paths are
            self.addCleanup(shutil.rmtree, directory)  # limited to 107 bytes
            path = os.path.join(directory, "app.sock")
            listener = reactor.listenUNIX(path, self.track(Site(Echo("unix"))))
            self.addCleanup(listener.stopListening)
            port, cookie = self.gate(upstreams=(f"unix://{path}",))
            echoed = (await self.fetch(port, cookie, "GET", "/over/unix?x=1")).json()
            self.assertEqual((echoed["name"], echoed["uri"]), ("unix", "/over/unix?x=1"))

        return run(go())


class TLSUpstreamTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ca = make_ca("localhost")
        ca_file = Path(self.mktemp())
        ca_file.write_bytes(self.ca.ca_pem)
        self.ca_file = str(ca_file)
        self.tls_port = self.listen_tls(Echo("tls"), self.ca.server_pem)

    def test_an_https_upstream_is_verified_against_the_given_ca(self) -> Deferred[None]:
        async def go() -> None:
            port, cookie = self.gate(
                upstreams=(f"https://localhost:{self.tls_port}/",),
                upstream_ca_files=(self.ca_file,),
            )
            answer = await self.fetch(port, cookie, "GET", "/x")
            self.assertEqual((answer.status, answer.json()["name"]), (200, "tls"))

        return run(go())

    def test_a_certificate_for_another_host_is_refused(self) -> Deferred[None]:
        async def go() -> None:
            port, cookie = self.gate(
                upstreams=(f"https://127.0.0.1:{self.tls_port}/",),
                upstream_ca_files=(self.ca_file,),
            )
            self.assertEqual((await self.fetch(port, cookie, "GET", "/x")).status, 502)

        return run(go())

    def test_an_unknown_ca_is_refused_unless_verification_is_skipped(self) -> Deferred[None]:
        async def go() -> None:
            upstreams = (f"https://localhost:{self.tls_port}/",)
            port, cookie = self.gate(upstreams=upstreams)
            self.assertEqual((await self.fetch(port, cookie, "GET", "/x")).status, 502)
            warnings = validate(
                gate_config(upstreams=upstreams, ssl_upstream_insecure_skip_verify=True)
            )
            self.assertTrue(any("ssl_upstream_insecure_skip_verify" in w for w in warnings))
            port, cookie = self.gate(upstreams=upstreams, ssl_upstream_insecure_skip_verify=True)
            self.assertEqual((await self.fetch(port, cookie, "GET", "/x")).json()["name"], "tls")

        return run(go())


# --- streaming ---------------------------------------------------------------------------------


class StreamingTests(ProxyTestCase):
    def test_server_sent_events_arrive_as_the_upstream_sends_them(self) -> Deferred[None]:
        async def go() -> None:
            events = Events()
            app = self.listen(events)
            port, cookie = self.gate(upstreams=(f"{app}/",))
            request = (
                f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                f"Cookie: _oauth2_proxy={cookie}\r\n\r\n"
            ).encode()
            # event one arrives while the upstream has not sent event two yet
            sock, first = await self.call(raw_exchange, port, request, b"data: one")
            self.addCleanup(sock.close)
            self.assertEqual(len(events.requests), 1)
            self.assertIn(b"text/event-stream", first)
            self.assertNotIn(b"data: two", first)
            events.requests[0].write(b"data: two\n\n")
            second = await self.call(read_until, sock, b"", b"data: two")
            self.assertIn(b"data: two", second)
            events.requests[0].finish()
            await self.call(read_until, sock, second, b"0\r\n\r\n")

        return run(go())

    def test_bodies_stream_both_ways_with_their_length(self) -> Deferred[None]:
        async def go() -> None:
            app = self.listen(Echo("app"))
            blob = self.listen(Blob())
            port, cookie = self.gate(upstreams=(f"{app}/", f"{blob}/blob/"))
            body = os.urandom(3 * 1024 * 1024)
            echoed = (await self.fetch(port, cookie, "PUT", "/upload", body=body)).json()
            self.assertEqual(echoed["body_length"], len(body))
            self.assertEqual(echoed["body_sha256"], hashlib.sha256(body).hexdigest())
            self.assertEqual(echoed["headers"]["content-length"], [str(len(body))])

            def chunked() -> Any:
                yield body[:1000]
                yield body[1000:]

            echoed = (
                await self.fetch(
                    port,
                    cookie,
                    "POST",
                    "/upload",
                    body=chunked(),
                    headers={"Transfer-Encoding": "chunked"},
                )
            ).json()
            self.assertEqual(echoed["body_sha256"], hashlib.sha256(body).hexdigest())

            answer = await self.fetch(port, cookie, "GET", "/blob/?size=5000000")
            self.assertEqual(answer.headers["content-length"], "5000000")
            self.assertEqual(len(answer.body), 5000000)

        return run(go())


# --- WebSockets ------------------------------------------------------------------------------


class WebSocketTests(ProxyTestCase):
    def test_an_echo_round_trip_then_the_client_closes(self) -> Deferred[None]:
        async def go() -> None:
            upstream, seen = self.listen_websocket()
            port, cookie = self.gate(upstreams=(f"{upstream}/",))

            def client() -> tuple[bytes, list[tuple[int, bytes]], bytes]:
                sock, head, rest = ws_handshake(port, "/ws?room=1", cookie)
                try:
                    frames = []
                    big = os.urandom(1 << 20)
                    for opcode, payload in ((1, b"hello"), (2, big), (1, "héllo".encode())):
                        sock.sendall(make_frame(opcode, payload, mask=True))
                        got_opcode, got, rest = ws_receive(sock, rest)
                        frames.append((got_opcode, got))
                        assert got == payload
                    sock.sendall(make_frame(8, struct.pack("!H", 1000), mask=True))
                    frames.append(ws_receive(sock, rest)[:2])
                    tail = read_to_end(sock)  # the proxy closes once the upstream has
                    return head, frames, tail
                finally:
                    sock.close()

            head, frames, tail = await self.call(client)
            self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
            self.assertIn(b"Upgrade: websocket", head)
            self.assertEqual([f[0] for f in frames], [1, 2, 1, 8])
            self.assertEqual(tail, b"")
            upgrade = seen[0]
            self.assertEqual(upgrade[":request-line"], "GET /ws?room=1 HTTP/1.1")
            self.assertEqual(upgrade["upgrade"], "websocket")
            self.assertEqual(upgrade["x-forwarded-email"], "alice@example.com")
            self.assertNotIn("_oauth2_proxy", upgrade.get("cookie", ""))

        return run(go())

    def test_the_upstream_closing_closes_the_client(self) -> Deferred[None]:
        async def go() -> None:
            upstream, _ = self.listen_websocket()
            port, cookie = self.gate(upstreams=(f"{upstream}/",))

            def client() -> tuple[int, bytes]:
                sock, _, rest = ws_handshake(port, "/ws", cookie)
                try:
                    sock.sendall(make_frame(1, b"bye", mask=True))
                    opcode, payload, rest = ws_receive(sock, rest)
                    assert read_to_end(sock) == b""
                    return opcode, payload
                finally:
                    sock.close()

            self.assertEqual(await self.call(client), (8, struct.pack("!H", 1000)))

        return run(go())

    def test_without_a_session_the_upgrade_gets_401(self) -> Deferred[None]:
        async def go() -> None:
            upstream, seen = self.listen_websocket()
            port, _ = self.gate(upstreams=(f"{upstream}/",))

            def client() -> bytes:
                sock, head, _ = ws_handshake(port, "/ws", None)
                sock.close()
                return head

            head = await self.call(client)
            self.assertTrue(head.startswith(b"HTTP/1.1 401"), head)
            self.assertEqual(seen, [])

        return run(go())

    def test_a_refused_upgrade_is_relayed_as_a_normal_answer(self) -> Deferred[None]:
        async def go() -> None:
            app = self.listen(Echo("plain"))
            port, cookie = self.gate(upstreams=(f"{app}/",))

            def client() -> bytes:
                sock, head, rest = ws_handshake(port, "/ws", cookie)
                try:
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    while len(rest) < length:
                        rest += sock.recv(65536)
                    return head + b"\r\n\r\n" + rest
                finally:
                    sock.close()

            answer = await self.call(client)
            self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
            self.assertIn(b'"name": "plain"', answer)

        return run(go())

    def test_with_proxy_websockets_off_the_upgrade_is_not_forwarded(self) -> Deferred[None]:
        async def go() -> None:
            app = self.listen(Echo("plain"))
            port, cookie = self.gate(upstreams=(f"{app}/",), proxy_websockets=False)
            answer = await self.fetch(
                port,
                cookie,
                "GET",
                "/ws",
                headers={"Upgrade": "websocket", "Connection": "Upgrade"},
            )
            self.assertEqual(answer.status, 200)
            self.assertNotIn("upgrade", answer.json()["headers"])

        return run(go())


# --- memory ------------------------------------------------------------------------------------


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


class MemoryTests(ProxyTestCase):
    """Hundreds of megabytes through a ``twistd -n oauthgate`` child: its peak memory
    stays far below the size of what went through."""

    timeout = 120
    SIZE = 300 * 1024 * 1024
    LIMIT_KIB = 150 * 1024

    def test_big_bodies_stream_through_in_bounded_memory(self) -> Deferred[None]:
        async def go() -> None:
            blob = self.listen(Blob())
            workdir = Path(self.mktemp())
            workdir.mkdir(parents=True)
            gate = OAuthGateProcess(
                [
                    "--provider=oidc",
                    "--oidc-issuer-url=http://127.0.0.1:9",
                    "--client-id=app",
                    "--client-secret=app-secret",
                    f"--cookie-secret={COOKIE_SECRET}",
                    "--cookie-secure=false",
                    "--email-domain=example.com",
                    f"--upstream={blob}/",
                    "--request-logging=false",
                ],
                workdir,
            )
            self.addCleanup(gate.stop)
            await gate.wait_until_serving(Browser.over_agent(Agent(reactor), reactor))
            cookie = session_cookie(gate_config())
            before = peak_rss_kib(gate.process.pid)

            def download() -> tuple[int, float]:
                started = time.monotonic()
                client = Client(gate.port, cookie)
                try:
                    client.connection.request(
                        "GET", f"/?size={self.SIZE}", headers={"Cookie": f"_oauth2_proxy={cookie}"}
                    )
                    response = client.connection.getresponse()
                    total = 0
                    while chunk := response.read(1 << 20):
                        total += len(chunk)
                    return total, time.monotonic() - started
                finally:
                    client.close()

            def upload() -> tuple[bytes, float]:
                started = time.monotonic()
                piece = bytes(1 << 20)

                def body() -> Any:
                    for _ in range(self.SIZE // len(piece)):
                        yield piece

                client = Client(gate.port, cookie)
                try:
                    answer = client.request(
                        "POST", "/", body=body(), headers={"Content-Length": str(self.SIZE)}
                    )
                    return answer.body, time.monotonic() - started
                finally:
                    client.close()

            downloaded, down_seconds = await self.call(download)
            uploaded, up_seconds = await self.call(upload)
            peak = peak_rss_kib(gate.process.pid)
            print(
                f"\n{self.SIZE >> 20} MB down in {down_seconds:.1f}s, up in {up_seconds:.1f}s; "
                f"oauthgate peak RSS {peak >> 10} MB (before: {before >> 10} MB)",
                file=sys.stderr,
            )
            self.assertEqual(downloaded, self.SIZE)
            self.assertEqual(uploaded, b"%d" % self.SIZE)
            self.assertLess(peak, self.LIMIT_KIB, gate.log())

        return run(go())

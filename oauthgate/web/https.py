"""The HTTPS listener: TLS with certificates re-read on SIGHUP, and the HTTPS policy
(``--force-https`` redirects, ``--hsts-max-age``).

The listener wraps a plain server endpoint (``host:port``, ``tcp6:``, ``unix:``,
``systemd:``) in TLS with one :class:`ReloadableServerTLS`: each new connection gets the
certificate loaded last, open connections keep theirs. ALPN offers what the site speaks
(``h2`` and ``http/1.1`` with twisted[http2]).
"""

from __future__ import annotations

import re
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from zope.interface import implementer

from oauthgate.config.options import Config
from oauthgate.web.access import AccessRules

__all__ = [
    "TLS_VERSIONS",
    "HTTPSPolicy",
    "ReloadableServerTLS",
    "TLSServerEndpoint",
    "https_description",
    "https_port",
    "load_tls_options",
    "tls_problems",
]

TLS_VERSIONS = {"": TLSVersion.TLSv1_2, "TLS1.2": TLSVersion.TLSv1_2, "TLS1.3": TLSVersion.TLSv1_3}
"""``--tls-min-version`` values (oauth2-proxy's spelling); empty means TLS1.2."""

log = Logger()


def load_tls_options(
    cert_file: str, key_file: str, *, min_version: str = "", cipher_suites: tuple[str, ...] = ()
) -> CertificateOptions:
    """The server TLS settings with the certificate chain in ``cert_file`` (the server's
    certificate first) and the key in ``key_file``, checked to belong together.

    Raises:
        OSError: a file cannot be read.
        ValueError: a file is no PEM certificate or key, they do not match, the version
            or a cipher name is unknown; the message says which.
    """
    if min_version not in TLS_VERSIONS:
        raise ValueError(f"tls_min_version must be TLS1.2 or TLS1.3, got {min_version!r}")
    with open(cert_file, "rb") as f:
        cert_pem = f.read()
    with open(key_file, "rb") as f:
        key_pem = f.read()
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ValueError(f"{cert_file!r} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{key_file!r} holds no unencrypted PEM private key") from None
    kwargs: dict[str, Any] = {}
    if cipher_suites:
        kwargs["acceptableCiphers"] = _ciphers(cipher_suites)
    try:
        options = CertificateOptions(
            # pyOpenSSL takes cryptography's objects (its own are deprecated).
            privateKey=cast(Any, key),
            certificate=cast(Any, chain[0]),
            extraCertChain=cast(Any, chain[1:]),
            raiseMinimumTo=TLS_VERSIONS[min_version],
            **kwargs,
        )
        options.getContext()  # checks that key and certificate belong together
    except SSL.Error:
        raise ValueError(
            f"the key in {key_file!r} does not belong to the certificate in {cert_file!r}"
        ) from None
    return options


def _ciphers(names: tuple[str, ...]) -> AcceptableCiphers:
    for name in names:
        if not AcceptableCiphers.fromOpenSSLCipherString(name)._ciphers:
            raise ValueError(
                f"tls_cipher_suites: unknown cipher {name!r}; give OpenSSL names such as "
                "ECDHE-RSA-AES128-GCM-SHA256 (or the standard names oauth2-proxy uses, "
                "such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"
            )
    ciphers: AcceptableCiphers = AcceptableCiphers.fromOpenSSLCipherString(":".join(names))
    return ciphers


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """One TLS context factory for the life of the listener; :meth:`reload` swaps the
    certificate new connections get. Open connections are never touched."""

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        *,
        min_version: str = "",
        cipher_suites: tuple[str, ...] = (),
    ) -> None:
        """Raises what :func:`load_tls_options` raises."""
        self._cert_file = cert_file
        self._key_file = key_file
        self._min_version = min_version
        self._cipher_suites = cipher_suites
        self._options = self._load()

    @classmethod
    def from_config(cls, config: Config) -> ReloadableServerTLS:
        return cls(
            config.tls_cert_file,
            config.tls_key_file,
            min_version=config.tls_min_version,
            cipher_suites=config.tls_cipher_suites,
        )

    def _load(self) -> CertificateOptions:
        return load_tls_options(
            self._cert_file,
            self._key_file,
            min_version=self._min_version,
            cipher_suites=self._cipher_suites,
        )

    def getContext(self) -> SSL.Context:
        """The context of the certificate loaded last."""
        return self._options.getContext()

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return self._options.serverConnectionForTLS(tlsProtocol)

    def reload(self) -> bool:
        """Re-read the certificate and key; on any problem keep the current pair, log the
        problem and return False."""
        try:
            options = self._load()
        except (OSError, ValueError) as e:
            log.error(
                "Kept the current TLS certificate: cannot load {cert_file}/{key_file}: {error}",
                cert_file=self._cert_file,
                key_file=self._key_file,
                error=str(e),
            )
            return False
        self._options = options
        log.info("Loaded the TLS certificate from {cert_file}", cert_file=self._cert_file)
        return True


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """``endpoint`` with TLS (from ``creator``) on every connection it accepts."""

    def __init__(
        self, endpoint: IStreamServerEndpoint, creator: IOpenSSLServerConnectionCreator
    ) -> None:
        self._endpoint = endpoint
        self._creator = creator

    def listen(self, protocolFactory: IProtocolFactory) -> Any:
        factory = TLSMemoryBIOFactory(self._creator, False, protocolFactory)
        d: Any = self._endpoint.listen(factory)
        return d

    @classmethod
    def from_address(
        cls, reactor: Any, address: str, creator: IOpenSSLServerConnectionCreator
    ) -> TLSServerEndpoint:
        """Raises ValueError for an address :func:`https_description` refuses."""
        return cls(serverFromString(reactor, https_description(address)), creator)


def https_description(address: str) -> str:
    """The plain endpoint description TLS is layered on for ``--https-address``:
    ``[https://]host:port``, ``:port``, ``[::1]:port``, or a ``tcp:``, ``tcp6:``,
    ``unix:`` or ``systemd:`` description.

    Raises:
        ValueError: anything else (an ``ssl:`` description brings its own certificate:
            give it as http_address instead).
    """
    from oauthgate.config.validate import listen_description  # validate imports this module

    text = address.strip()
    if text.lower().startswith("https://"):
        text = text[len("https://") :].rstrip("/")
    if text.lower().startswith(("http://", "ssl:", "haproxy:")):
        raise ValueError(
            f"{address!r}: give [https://]host:port (or a tcp:, tcp6:, unix: or systemd: "
            "description); the certificate comes from tls_cert_file and tls_key_file"
        )
    return listen_description(text)


def https_port(config: Config) -> int | None:
    """The port plain-HTTP requests are redirected to (None: the default, 443)."""
    if not config.https_address:
        return None
    try:
        description = https_description(config.https_address)
    except ValueError:
        return None
    kind, _, rest = description.partition(":")
    port = rest.partition(":")[0]
    if kind in ("tcp", "tcp6") and port.isdigit() and int(port) not in (0, 443):
        return int(port)
    return None


def tls_problems(config: Config) -> list[str]:
    """Every problem with the HTTPS options, one line each (for validation)."""
    problems: list[str] = []
    if config.https_address:
        try:
            description = https_description(config.https_address)
        except ValueError as e:
            problems.append(f"https_address: {e}")
        else:
            try:
                serverFromString(_memory_reactor(), description)
            except Exception as e:  # parsers raise what they like
                problems.append(f"https_address: {config.https_address!r}: {e}")
        if not (config.tls_cert_file and config.tls_key_file):
            problems.append("https_address: set tls_cert_file and tls_key_file too")
    elif config.tls_cert_file or config.tls_key_file:
        problems.append(
            "tls_cert_file/tls_key_file: set https_address too, e.g. :443 (oauthgate serves "
            "HTTPS only on an https_address)"
        )
    if config.tls_min_version not in TLS_VERSIONS:
        problems.append(
            f"tls_min_version: must be TLS1.2 or TLS1.3, got {config.tls_min_version!r}"
        )
    try:
        if config.tls_cipher_suites:
            _ciphers(config.tls_cipher_suites)
    except ValueError as e:
        problems.append(str(e))
    if config.tls_cert_file and config.tls_key_file and config.tls_min_version in TLS_VERSIONS:
        try:
            load_tls_options(config.tls_cert_file, config.tls_key_file)
        except OSError as e:
            problems.append(
                f"tls_cert_file/tls_key_file: cannot read {e.filename}: {e.strerror or e}"
            )
        except ValueError as e:
            problems.append(f"tls_cert_file/tls_key_file: {e}")
    if config.hsts_max_age < 0:
        problems.append(f"hsts_max_age: must be 0 (off) or more, got {config.hsts_max_age}")
    return problems


def _memory_reactor() -> Any:
    from twisted.internet.testing import MemoryReactor

    return MemoryReactor()


# A host name, IPv4 or [IPv6] literal with an optional port: nothing a redirect could be
# bent with (no "/", "@", "\\", spaces, "?" or "#").
_HOST = re.compile(rb"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class HTTPSPolicy(Resource):
    """In front of the gate: redirects plain-HTTP requests to HTTPS (``force_https``) and
    adds Strict-Transport-Security to HTTPS responses (``hsts_max_age``).

    A request is HTTPS when it came over TLS, or a trusted front proxy says so with
    ``X-Forwarded-Proto: https``.
    """

    isLeaf = True

    def __init__(
        self,
        resource: IResource,
        rules: AccessRules,
        *,
        force_https: bool = False,
        https_port: int | None = None,
        hsts_max_age: int = 0,
    ) -> None:
        Resource.__init__(self)
        self._resource = resource
        self._rules = rules
        self._force = force_https
        self._port = https_port
        self._hsts = f"max-age={hsts_max_age}".encode() if hsts_max_age > 0 else None

    def render(self, request: Request) -> Any:
        secure = self._is_https(request)
        if self._force and not secure:
            return self._redirect(request)
        if secure and self._hsts is not None:
            request.setHeader(b"strict-transport-security", self._hsts)
        return self._resource.render(request)

    def _is_https(self, request: Request) -> bool:
        if request.isSecure():
            return True
        if self._rules.trusted_peer(request):
            proto = request.getHeader(b"x-forwarded-proto") or b""
            return proto.strip().lower() == b"https"
        return False

    def _redirect(self, request: Request) -> bytes:
        host = (request.getHeader(b"host") or b"").strip()
        if not host or _HOST.fullmatch(host) is None:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Bad Request: no Host header to redirect to HTTPS\n"
        if host.startswith(b"["):
            name = host[: host.find(b"]") + 1] if b"]" in host else host
        else:
            name = host.rpartition(b":")[0] if b":" in host else host
        port = b":%d" % self._port if self._port is not None else b""
        uri = request.uri if request.uri.startswith(b"/") else b"/"
        request.setResponseCode(308)
        request.setHeader(b"location", b"https://" + name + port + uri)
        # Built from the Host header: a shared cache must never hand it to someone else.
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Permanent Redirect to HTTPS\n"

"""TLS client policies for talking to identity providers and upstreams."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import cast

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["client_tls_policy"]


def client_tls_policy(
    *, insecure_skip_verify: bool = False, ca_files: Sequence[str] = ()
) -> IPolicyForHTTPS:
    """The Agent TLS policy: the system trust store, or only ``ca_files``, or (only when an
    operator asks for it with an ``insecure`` option) no verification at all.

    Raises OSError or ValueError when a CA file cannot be read or parsed.
    """
    if insecure_skip_verify:
        return _UnverifiedPolicy()
    if ca_files:
        certs = []
        for path in ca_files:
            with open(path, "rb") as f:
                pem = f.read()
            try:
                certs.append(ssl.Certificate.loadPEM(pem))
            except crypto.Error:
                raise ValueError(f"{path!r} is not a PEM CA certificate") from None
        return cast(
            IPolicyForHTTPS,
            BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(certs)),
        )
    return cast(IPolicyForHTTPS, BrowserLikePolicyForHTTPS())


@implementer(IPolicyForHTTPS)
class _UnverifiedPolicy:
    """TLS without certificate or host name verification (still sends SNI)."""

    def __init__(self) -> None:
        self._options = ssl.CertificateOptions(verify=False)

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _UnverifiedClientTLS(self._options, hostname)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    def __init__(self, options: ssl.CertificateOptions, hostname: bytes) -> None:
        self._options = options
        self._server_name = None if _is_ip(hostname) else hostname

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        connection.set_app_data(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


def _is_ip(hostname: bytes) -> bool:
    try:
        ipaddress.ip_address(hostname.decode("ascii").strip("[]"))
    except ValueError:
        return False
    return True

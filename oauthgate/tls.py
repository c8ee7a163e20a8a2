"""TLS client policies for talking to identity providers and upstreams."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["client_tls_policy"]


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """A TLS client connection that checks neither the chain nor the host name."""

    def __init__(self, hostname: bytes) -> None:
        self._hostname = hostname
        self._context = ssl.CertificateOptions(verify=False).getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self._hostname)
        return connection


@implementer(IPolicyForHTTPS)
class _NoVerifyPolicy:
    def creatorForNetloc(self, hostname: bytes, port: int) -> _Unverified:
        return _Unverified(hostname)


def client_tls_policy(
    *, insecure_skip_verify: bool = False, ca_files: Sequence[str] = ()
) -> IPolicyForHTTPS:
    """The Agent TLS policy: the system trust store, or only ``ca_files``, or (only when an
    operator asks for it with an ``insecure`` option) no verification at all."""
    if insecure_skip_verify:
        return _NoVerifyPolicy()
    if ca_files:
        certs = []
        for path in ca_files:
            with open(path, "rb") as f:
                certs.append(ssl.Certificate.loadPEM(f.read()))
        return BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(certs))
    return BrowserLikePolicyForHTTPS()

"""The helper servers the benchmark measures against, each run in its own process:

``python -m bench.servers ceiling PORT HEADERS_JSON``
    a bare twisted.web resource answering every request 202 with the given headers
    (those oauthgate's ``/oauth2/auth`` sends): the ceiling.
``python -m bench.servers upstream PORT``
    a static upstream: ``/1k`` and ``/1m`` answer 1 KiB and 1 MiB of bytes.
``python -m bench.servers idp PORT JWKS_JSON``
    an OpenID Connect discovery document and a JWKS (RS256) at ``/jwks``.

None of them logs requests.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = ["main"]

reactor: Any = _reactor


class QuietSite(Site):
    noisy = False

    def __init__(self, resource: Resource) -> None:
        Site.__init__(self, resource)

    def log(self, request: Request) -> None:  # type: ignore[override]
        pass


class Ceiling(Resource):
    isLeaf = True

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        Resource.__init__(self)
        self._headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]

    def render(self, request: Request) -> bytes:
        request.setResponseCode(202)
        for name, value in self._headers:
            request.responseHeaders.addRawHeader(name, value)
        return b""


class Static(Resource):
    isLeaf = True
    bodies = {b"/1k": b"x" * 1024, b"/1m": b"x" * (1024 * 1024)}

    def __init__(self) -> None:
        Resource.__init__(self)

    def render_GET(self, request: Request) -> bytes:
        body = self.bodies.get(request.path or b"")
        if body is None:
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return body


class IdP(Resource):
    isLeaf = True

    def __init__(self, issuer: str, jwks: dict[str, Any]) -> None:
        Resource.__init__(self)
        self._discovery = json.dumps(
            {
                "issuer": issuer,
                "authorization_endpoint": issuer + "/authorize",
                "token_endpoint": issuer + "/token",
                "userinfo_endpoint": issuer + "/userinfo",
                "jwks_uri": issuer + "/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        ).encode()
        self._jwks = json.dumps(jwks).encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        if request.path == b"/.well-known/openid-configuration":
            return self._discovery
        if request.path == b"/jwks":
            return self._jwks
        request.setResponseCode(404)
        return b"{}"


def main(argv: list[str]) -> None:
    role, port = argv[0], int(argv[1])
    resource: Resource
    if role == "ceiling":
        resource = Ceiling([(k, v) for k, v in json.loads(argv[2])])
    elif role == "upstream":
        resource = Static()
    elif role == "idp":
        resource = IdP(f"http://127.0.0.1:{port}", json.loads(argv[2]))
    else:
        raise SystemExit(f"unknown role {role!r}")
    reactor.listenTCP(port, QuietSite(resource), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])

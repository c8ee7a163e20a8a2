"""The static upstream (``static://202``): answers a fixed status itself, with no body."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from zope.interface import implementer

from oauthgate.interfaces import IUpstream
from oauthgate.upstreams.routing import compile_path, is_regex, path_matches
from oauthgate.upstreams.spec import UpstreamSpec

if TYPE_CHECKING:
    from twisted.web.server import Request

__all__ = ["StaticUpstream"]


@implementer(IUpstream)
class StaticUpstream:
    """Answers every request it gets with ``code`` and an empty body.

    oauth2-proxy writes the body ``Authenticated``; oauthgate sends none (issue 3), which
    suits health checks and ``202``-style "you may pass" answers alike.
    """

    def __init__(self, id: str, path: str, code: int = 200, *, regex: bool = False) -> None:
        self.id = id
        self.path = path
        self.code = code
        self._pattern = compile_path(path) if regex else None

    @classmethod
    def from_spec(cls, spec: UpstreamSpec) -> StaticUpstream:
        return cls(spec.id, spec.path, spec.static_code, regex=is_regex(spec))

    def matches(self, path: str) -> bool:
        return path_matches(path, self.path, self._pattern)

    async def forward(
        self,
        request: Request,
        inject: Sequence[tuple[bytes, bytes]],
        *,
        target: bytes | None = None,
    ) -> None:
        """Answer ``code`` with ``Content-Length: 0``; the request body is not read."""
        request.setResponseCode(self.code)
        request.setHeader(b"content-length", b"0")
        request.finish()

"""The file upstream (``file:///srv/docs#/docs/``): serves a directory's files, safely.

The request path, percent-decoded, minus the route's prefix, names a file under the
directory. Nothing outside the directory is ever served: ``..`` segments (also encoded as
``%2e%2e`` or ``%2F..``) are refused, and the resolved path, symlinks followed, must still
lie inside the directory (a symlink out of it is a 404). Only regular files are served,
with a ``Content-Type`` from the extension (``application/octet-stream`` when unknown,
never guessed as HTML) and ``X-Content-Type-Options: nosniff``; ranges and
``If-Modified-Since`` work (Twisted's ``static.File`` does the transfer, with
backpressure). A directory serves its ``index.html``; without one it is a 404 (no
listings, unlike Go's ``http.FileServer``). Methods other than GET and HEAD get 405.

Files are opened and read with ordinary (blocking) calls, in 64 KiB chunks, as Twisted's
``static.File`` does: fine for local disks, not for slow network file systems.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from twisted.web import static
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from oauthgate.errors import AuthError
from oauthgate.interfaces import IUpstream
from oauthgate.upstreams.routing import compile_path, is_regex, path_matches
from oauthgate.upstreams.spec import UpstreamSpec

if TYPE_CHECKING:
    from twisted.web.server import Request

__all__ = ["FileUpstream"]

_MODERN_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".md": "text/markdown",
    ".txt": "text/plain",
}
_INDEX = b"index.html"


@implementer(IUpstream)
class FileUpstream:
    """Serves the files under ``root`` for the route ``path``."""

    def __init__(self, id: str, path: str, root: str, *, regex: bool = False) -> None:
        self.id = id
        self.path = path
        self.root = os.path.realpath(root).encode("utf-8", "surrogateescape")
        self._pattern = compile_path(path) if regex else None
        self._content_types: dict[str, str] = {**static.File.contentTypes, **_MODERN_TYPES}

    @classmethod
    def from_spec(cls, spec: UpstreamSpec) -> FileUpstream:
        """``spec.uri`` is ``file:///directory`` (a ``#/mount/`` fragment is ignored here:
        it is the route's path)."""
        root = unquote(urlsplit(spec.uri).path)
        return cls(spec.id, spec.path, root, regex=is_regex(spec))

    def matches(self, path: str) -> bool:
        return path_matches(path, self.path, self._pattern)

    async def forward(
        self,
        request: Request,
        inject: Sequence[tuple[bytes, bytes]],
        *,
        target: bytes | None = None,
    ) -> None:
        """Answer ``request`` from the directory. Raises AuthError(404) for anything that
        is not a regular file inside it."""
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-length", b"0")
            request.finish()
            return
        raw_path = (target or request.uri).partition(b"?")[0]
        found = self._resolve(unquote_to_bytes(raw_path))
        if isinstance(found, _Slash):
            # the client's own path (not a rewritten one), never as "//host"
            client_path, mark, query = request.uri.partition(b"?")
            location = b"/" + client_path.lstrip(b"/\\") + b"/"
            request.setResponseCode(301)
            request.setHeader(b"location", location + mark + query)
            request.setHeader(b"content-length", b"0")
            request.finish()
            return
        resource = static.File(
            found.decode("utf-8", "surrogateescape"), defaultType="application/octet-stream"
        )
        resource.contentTypes = self._content_types
        resource.contentEncodings = {}  # a .gz file is served as it is, not decoded
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.defaultContentType = None
        body: Any = resource.render(request)
        if body is not NOT_DONE_YET:
            if body:
                request.write(body)
            request.finish()

    def _resolve(self, path: bytes) -> bytes | _Slash:
        """The real path of the file ``path`` names; a _Slash when it names a directory
        without the trailing slash."""
        relative = path
        if self._pattern is None and path.startswith(self.path.encode("utf-8")):
            relative = path[len(self.path.encode("utf-8")) :]
        segments = [s for s in relative.split(b"/") if s]
        if any(s in (b".", b"..") or b"\0" in s for s in segments):
            raise _not_found()
        real = os.path.realpath(os.path.join(self.root, *segments))
        if not self._inside(real):
            raise _not_found()
        if os.path.isdir(real):
            if not path.endswith(b"/"):
                return _Slash()
            real = os.path.realpath(os.path.join(real, _INDEX))
            if not self._inside(real):
                raise _not_found()
        if not os.path.isfile(real):
            raise _not_found()
        return real

    def _inside(self, real: bytes) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(b"/") + b"/")


class _Slash:
    """A directory asked for without its trailing slash."""


def _not_found() -> AuthError:
    return AuthError(404, "not_found", "There is nothing here.")

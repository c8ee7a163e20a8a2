"""The routing table: which upstream serves a request, and which URI it is sent.

oauth2-proxy's rules (``pkg/upstream/proxy.go``), in the order they are tried:

1. Rewrite routes: ``path`` is a regular expression (it has a ``rewrite_target``, or starts
   with ``^``), longest pattern first. ``rewrite_target`` may use the groups as ``$1``,
   ``${1}`` or ``${name}`` (Go's ``Regexp.ReplaceAllString``).
2. The other upstreams, longest path first: a path ending in "/" is a prefix ("/" serves
   everything), any other path serves only itself.
3. Nothing matches, but would with a "/" appended: 301 to the path with the "/".

Paths are matched percent-decoded, or as received with ``proxy_raw_path``. A request
whose (matched) path has ``.`` or ``..`` segments is redirected (301) to the path without
them first, as gorilla/mux does for oauth2-proxy: an upstream never gets a path that
climbs out of the route that was chosen for it. Otherwise the request URI is sent as the
client wrote it (``%2F`` stays ``%2F``); a rewrite replaces its path.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, overload
from urllib.parse import quote, unquote_to_bytes, urlsplit

import attrs
from zope.interface import implementer

from oauthgate.interfaces import IUpstream
from oauthgate.upstreams.spec import UpstreamSpec

if TYPE_CHECKING:
    from twisted.web.server import Request

__all__ = [
    "Routable",
    "Route",
    "RoutingTable",
    "expand_target",
    "route",
    "spec_problems",
]

# What may stay unescaped in a path we build (RFC 3986 pchar and "/").
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_SCHEMES = ("http", "https", "unix", "file")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_]+")
_GO_NAMED_GROUP = re.compile(r"(?<!\\)\(\?<(?=[A-Za-z_])")


class Routable(Protocol):
    """An upstream the table can route to: an :class:`IUpstream` whose ``forward`` also
    takes the request URI to send (origin form, raw bytes; None: the request's own)."""

    id: str
    path: str

    def matches(self, path: str) -> bool: ...

    def forward(
        self,
        request: Request,
        inject: Sequence[tuple[bytes, bytes]],
        *,
        target: bytes | None = None,
    ) -> Awaitable[None]: ...


def is_regex(spec: UpstreamSpec) -> bool:
    """Whether ``spec.path`` is a regular expression rather than a prefix or exact path."""
    return bool(spec.rewrite_target) or spec.path.startswith("^")


def compile_path(path: str) -> re.Pattern[str]:
    """A route's regular expression; Go's ``(?<name>...)`` groups are accepted too.

    Raises re.error when it does not compile.
    """
    return re.compile(_GO_NAMED_GROUP.sub("(?P<", path))


def path_matches(path: str, route_path: str, pattern: re.Pattern[str] | None = None) -> bool:
    """oauth2-proxy's rule for one route: regex search, prefix ("/" at the end) or exact."""
    if pattern is not None:
        return pattern.search(path) is not None
    if route_path.endswith("/"):
        return path.startswith(route_path)
    return path == route_path


@attrs.frozen
class Route:
    """One upstream and the path rule that leads to it."""

    spec: UpstreamSpec
    upstream: Routable
    pattern: re.Pattern[str] | None = None

    @classmethod
    def of(cls, spec: UpstreamSpec, upstream: Routable) -> Route:
        """Raises re.error when ``spec.path`` is an invalid regular expression."""
        return cls(spec, upstream, compile_path(spec.path) if is_regex(spec) else None)

    def matches(self, path: str) -> bool:
        return path_matches(path, self.spec.path, self.pattern)


class RoutingTable(Sequence[IUpstream]):
    """The upstreams in the order they are tried; :meth:`select` picks one for a request.

    As a sequence it holds the upstreams themselves (for closing, listing, checks);
    :meth:`select` returns an :class:`IUpstream` bound to one request's target.
    """

    def __init__(self, routes: Iterable[Route], *, proxy_raw_path: bool = False) -> None:
        self.proxy_raw_path = proxy_raw_path
        self.routes: tuple[Route, ...] = tuple(
            sorted(routes, key=lambda r: (r.pattern is None, -len(r.spec.path)))
        )

    @overload
    def __getitem__(self, index: int) -> IUpstream: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[IUpstream]: ...

    def __getitem__(self, index: int | slice) -> IUpstream | Sequence[IUpstream]:
        if isinstance(index, slice):
            return tuple(r.upstream for r in self.routes[index])  # type: ignore[misc]
        return self.routes[index].upstream  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.routes)

    def __iter__(self) -> Iterator[IUpstream]:
        return (r.upstream for r in self.routes)  # type: ignore[misc]

    def select(self, request: Request) -> IUpstream | None:
        """The upstream for ``request``, bound to the URI it will be sent; a 301 answer
        for an unclean path or a missing trailing slash; None when nothing serves it."""
        raw_path, query = _split(request.uri if request.uri[:1] == b"/" else _origin(request))
        path = self._matched_path(raw_path)
        clean = remove_dot_segments(path)
        if clean != path:
            return Redirect(self._location(clean, query))
        for candidate in self.routes:
            if candidate.matches(path):
                target = None
                if candidate.pattern is not None and candidate.spec.rewrite_target:
                    target = self._rewrite(candidate, path, query)
                return BoundUpstream(candidate.upstream, target)
        if not path.endswith("/"):
            slashed = path + "/"
            if any(r.matches(slashed) for r in self.routes):
                return Redirect(self._location(slashed, query))
        return None

    def _matched_path(self, raw_path: bytes) -> str:
        if self.proxy_raw_path:
            return raw_path.decode("utf-8", "surrogateescape")
        return unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")

    def _encode(self, path: str) -> bytes:
        """``path`` (as matched) back to request-target bytes."""
        safe = _PATH_SAFE + "%" if self.proxy_raw_path else _PATH_SAFE
        return quote(path.encode("utf-8", "surrogateescape"), safe=safe).encode("ascii")

    def _rewrite(self, route: Route, path: str, query: bytes | None) -> bytes:
        assert route.pattern is not None
        rewritten = expand_target(route.pattern, path, route.spec.rewrite_target)
        if not rewritten.startswith("/"):
            rewritten = "/" + rewritten
        target = self._encode(rewritten)
        if query is not None:
            target += (b"&" if b"?" in target else b"?") + query
        return target

    def _location(self, path: str, query: bytes | None) -> bytes:
        # Never "//host" (a protocol-relative URL): the redirect stays on this site.
        location = b"/" + self._encode(path).lstrip(b"/\\")
        return location + b"?" + query if query is not None else location


def route(upstreams: Sequence[IUpstream], request: Request) -> IUpstream | None:
    """The upstream that serves ``request``: the table's choice, or for a plain sequence
    (sorted longest path first) the first whose ``matches`` accepts the request's path."""
    if isinstance(upstreams, RoutingTable):
        return upstreams.select(request)
    path = request.path.decode("utf-8", "replace")
    for upstream in upstreams:
        if upstream.matches(path):
            return upstream
    return None


@implementer(IUpstream)
class BoundUpstream:
    """One request's way to an upstream: forwards with the target the table chose."""

    def __init__(self, upstream: Routable, target: bytes | None) -> None:
        self.upstream = upstream
        self.target = target
        self.id = upstream.id
        self.path = upstream.path

    def matches(self, path: str) -> bool:
        return self.upstream.matches(path)

    def forward(self, request: Request, inject: Sequence[tuple[bytes, bytes]]) -> Awaitable[None]:
        return self.upstream.forward(request, inject, target=self.target)


@implementer(IUpstream)
class Redirect:
    """A 301 to ``location`` (a path on this site) instead of an upstream."""

    id = "redirect"
    path = ""

    def __init__(self, location: bytes) -> None:
        self.location = location

    def matches(self, path: str) -> bool:
        return False

    async def forward(self, request: Request, inject: Sequence[tuple[bytes, bytes]]) -> None:
        request.setResponseCode(301)
        request.setHeader(b"location", self.location)
        request.setHeader(b"content-length", b"0")
        request.finish()


def expand_target(pattern: re.Pattern[str], path: str, template: str) -> str:
    """Go's ``pattern.ReplaceAllString(path, template)``: every non-overlapping match is
    replaced by ``template`` with ``$1``, ``${1}``, ``$name``, ``${name}`` expanded
    (unknown or unmatched groups are empty, ``$$`` is ``$``); an empty match right after
    a previous match is ignored."""
    out: list[str] = []
    last = 0
    previous_end = -1
    for match in pattern.finditer(path):
        start, end = match.span()
        if start == end and start == previous_end:
            continue
        out.append(path[last:start])
        out.append(_expand(match, template))
        last = end
        previous_end = end
    out.append(path[last:])
    return "".join(out)


def _expand(match: re.Match[str], template: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if char != "$" or i + 1 == len(template):
            out.append(char)
            i += 1
            continue
        following = template[i + 1]
        if following == "$":
            out.append("$")
            i += 2
            continue
        if following == "{":
            close = template.find("}", i + 2)
            name = template[i + 2 : close] if close != -1 else ""
            if close == -1 or not _TEMPLATE_NAME.fullmatch(name):
                out.append("$")
                i += 1
                continue
            i = close + 1
        else:
            found = _TEMPLATE_NAME.match(template, i + 1)
            if found is None:
                out.append("$")
                i += 1
                continue
            name = found.group()
            i = found.end()
        out.append(_group(match, name))
    return "".join(out)


def _group(match: re.Match[str], name: str) -> str:
    try:
        value = match.group(int(name) if name.isdigit() else name)
    except IndexError:  # no such group
        return ""
    return value or ""


def remove_dot_segments(path: str) -> str:
    """``path`` without ``.`` and ``..`` segments (RFC 3986 §5.2.4); other segments,
    empty ones included, are kept."""
    if "." not in path:
        return path  # the common case: no segment can be "." or ".."
    segments = path.split("/")
    if all(s not in (".", "..") for s in segments):
        return path
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    cleaned = "/" + "/".join(out)
    if segments[-1] in (".", "..") and not cleaned.endswith("/"):
        cleaned += "/"
    return cleaned


def _split(uri: bytes) -> tuple[bytes, bytes | None]:
    path, mark, query = uri.partition(b"?")
    return (path or b"/"), (query if mark else None)


def _origin(request: Request) -> bytes:
    parts = urlsplit(request.uri)
    path = parts.path or b"/"
    return path + b"?" + parts.query if parts.query else path


def spec_problems(specs: Sequence[UpstreamSpec]) -> list[str]:
    """What is wrong with a set of upstreams, one line each (empty when they are fine):
    duplicate ids or paths, paths that are neither "/..." nor a valid regular expression,
    static codes outside 200-599, URIs oauthgate cannot serve."""
    problems: list[str] = []
    seen_ids: set[str] = set()
    seen_paths: set[str] = set()
    for spec in specs:
        where = f"upstreams: {spec.id!r}"
        if not spec.id:
            problems.append(f"upstreams: the upstream for path {spec.path!r} needs an id")
        elif spec.id in seen_ids and not (spec.id == spec.path and spec.path in seen_paths):
            problems.append(f"{where}: two upstreams have this id; ids must be unique")
        seen_ids.add(spec.id)
        if spec.path in seen_paths:
            problems.append(
                f"{where}: two upstreams serve the path {spec.path!r}; paths must be unique"
            )
        seen_paths.add(spec.path)
        if is_regex(spec):
            try:
                compile_path(spec.path)
            except re.error as e:
                problems.append(
                    f"{where}: path {spec.path!r} is not a valid regular expression: {e}"
                )
        elif not spec.path.startswith("/"):
            problems.append(
                f"{where}: path {spec.path!r} must start with '/' (or '^' for a pattern)"
            )
        if spec.static:
            if not 200 <= spec.static_code <= 599:
                problems.append(
                    f"{where}: static code {spec.static_code} must be an HTTP status 200-599"
                )
            continue
        problems.extend(f"{where}: {problem}" for problem in uri_problems(spec.uri))
    return problems


def uri_problems(uri: str) -> list[str]:
    """Why ``uri`` is no upstream oauthgate can serve; empty when it is fine."""
    try:
        parts = urlsplit(uri)
        _ = parts.port
    except ValueError as e:
        return [f"uri {uri!r} is not a valid URL: {e}"]
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        return [
            f"uri {_shown(uri)!r} must be http(s)://host[:port][/path], unix:///socket "
            "or file:///directory"
        ]
    if scheme in ("http", "https") and not parts.hostname:
        return [f"uri {_shown(uri)!r} needs a host, e.g. http://127.0.0.1:8080/"]
    if scheme in ("http", "https") and not parts.netloc.rpartition("@")[2].isascii():
        return [f"uri {_shown(uri)!r}: write the host name in ASCII (punycode)"]
    if scheme in ("unix", "file") and not parts.path.startswith("/"):
        return [f"uri {uri!r} needs an absolute path, e.g. {scheme}:///srv/app"]
    return []


def _shown(url: str) -> str:
    """``url`` without any password it carries, fit for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()

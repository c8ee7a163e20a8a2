"""Which redirect targets (``rd``, ``X-Auth-Request-Redirect``, the state) may be followed.

A target is either a path on this host or an absolute http(s) URL whose host is in
``whitelist_domains``. Everything else is refused, so oauthgate is never an open redirect:
the rules and the regression corpus follow oauth2-proxy (GHSA-qqxw-m5fj-f7gv,
GHSA-j7px-6hwj-hpjg, GHSA-5m6c-jp6f-2vcv, GHSA-4mf2-f3wh-gvf2).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote

import attrs

from oauthgate.authz.query import DomainPattern, match_host, parse_port
from oauthgate.errors import ConfigError

__all__ = ["DomainPattern", "RedirectValidator"]

# A slash or backslash, then nothing, whitespace/control characters, or one or two dots,
# then another slash or backslash: browsers read "/\t/evil", "/./evil" and "//evil" as
# pointing at another host, or an upstream may collapse them into that.
_SLASH_TRICK = re.compile(r"[/\\](?:[\s\x00-\x1f\x7f]*|\.{1,2})[/\\]")
_SCHEMES = ("http://", "https://")
_AUTHORITY_END = re.compile(r"[/?#\\]")
_MAX_DECODINGS = 4


def _is_forbidden_char(ch: str) -> bool:
    """Control, format, separator and whitespace characters, ASCII or not."""
    return ch.isspace() or unicodedata.category(ch)[0] in "CZ"


def _decodings(path: str) -> list[str] | None:
    """``path`` percent-decoded again and again until it stops changing; None if it never does."""
    forms: list[str] = []
    current = path
    for _ in range(_MAX_DECODINGS):
        decoded = unquote(current, errors="replace")
        if decoded == current:
            return forms
        forms.append(decoded)
        current = decoded
    return None


def _starts_like_another_host(path: str) -> bool:
    """True if ``path`` begins with "/" and then a slash, backslash, whitespace or control."""
    if len(path) < 2:
        return False
    second = path[1]
    if second in "/\\" or _is_forbidden_char(second):
        return True
    # Full-width and other look-alike solidi fold to "/" or "\" under NFKC.
    return unicodedata.normalize("NFKC", second)[:1] in ("/", "\\")


@attrs.frozen
class RedirectValidator:
    """Decides whether a redirect target is safe; built once from ``whitelist_domains``.

    Security: a valid target can only lead to this host (a path) or to a whitelisted
    host over http(s). Values are expected once query-unescaped (as ``rd`` arrives);
    targets that would turn into another host after a further decoding are refused too.
    """

    patterns: tuple[DomainPattern, ...] = ()

    @classmethod
    def from_domains(cls, domains: Iterable[str]) -> RedirectValidator:
        """Parse ``whitelist_domains`` entries; raise ConfigError naming each malformed one."""
        patterns: list[DomainPattern] = []
        problems: list[str] = []
        for entry in domains:
            if not entry.strip():
                continue
            try:
                patterns.append(DomainPattern.parse(entry))
            except ValueError as e:
                problems.append(f"whitelist_domains: {entry!r} is not a valid domain: {e}")
        if problems:
            raise ConfigError(problems)
        return cls(tuple(patterns))

    def is_valid(self, url: str) -> bool:
        """True if ``url`` may be redirected to (see the class docstring)."""
        if not url or any(_is_forbidden_char(ch) for ch in url):
            return False
        if url.startswith("/"):
            return self._is_valid_path(url)
        if url[:8].lower().startswith(_SCHEMES):
            return self._is_valid_absolute(url)
        return False

    def sanitize(self, url: str) -> str:
        """``url`` if it is valid, else ``/``."""
        return url if self.is_valid(url) else "/"

    def _is_valid_path(self, url: str) -> bool:
        if _starts_like_another_host(url) or _SLASH_TRICK.search(url):
            return False
        # A browser or an upstream may decode the path again: "/%2f/evil", "/%5cevil",
        # "/%09/evil" must not become another host then. The query part is left alone.
        path = re.split(r"[?#]", url, maxsplit=1)[0]
        decodings = _decodings(path)
        if decodings is None:
            return False
        for form in decodings:
            if _starts_like_another_host(form) or _SLASH_TRICK.search(form):
                return False
            if any(unicodedata.category(ch) == "Cc" for ch in form):
                return False
        return True

    def _is_valid_absolute(self, url: str) -> bool:
        rest = url[url.index("//") + 2 :]
        end = _AUTHORITY_END.search(rest)
        authority = rest[: end.start()] if end else rest
        if end is not None and end.group() == "\\":
            return False  # browsers end the host at "\": "https://foo.bar\@evil.com"
        if not authority or "@" in authority:
            return False  # no host ("https:///evil") or userinfo ("https://foo.bar@evil")
        port: str | None = None
        if authority.startswith("["):
            close = authority.find("]")
            if close < 0:
                return False
            host, after = authority[: close + 1], authority[close + 1 :]
            if after:
                if not after.startswith(":"):
                    return False
                port = parse_port(after[1:])
                if port is None:
                    return False
        else:
            host, colon, port_text = authority.partition(":")
            if colon:
                port = parse_port(port_text)
                if port is None:
                    return False
        return match_host(self.patterns, host, port)

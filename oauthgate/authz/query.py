"""Per-request constraints from the query string, and the domain matcher they share with redirects.

``/oauth2/auth?allowed_groups=a,b&allowed_emails=x@y&allowed_email_domains=.example.com`` adds
checks on top of the configured authorizers (oauth2-proxy's ``authOnlyAuthorize``). The
host matcher :class:`DomainPattern` is the one ``whitelist_domains`` uses as well; it lives
here because authorizers must not import :mod:`oauthgate.web`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

import attrs

from oauthgate.interfaces import Decision
from oauthgate.session import Session

__all__ = [
    "DomainPattern",
    "check_query_constraints",
    "match_host",
    "normalize_host",
    "parse_port",
]

# A host made of ASCII labels (no empty label), or a bracketed IPv6 literal. Anything else
# (percent-encoding, non-ASCII/IDN, backslashes...) is "exotic" and only ever matches an
# entry that spells it exactly, never as a sub-domain.
_PLAIN_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\Z")
_IPV6_HOST = re.compile(r"\[[0-9a-f:.]+\]\Z")
_BAD_ENTRY_CHARS = re.compile(r"[/\\@?#%*\[\]\s\x00-\x1f\x7f]")


def normalize_host(host: str) -> str:
    """Lower-case ``host`` and drop one trailing dot (``example.com.`` is ``example.com``)."""
    host = host.lower()
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    return host


def _is_plain(host: str) -> bool:
    return bool(_PLAIN_HOST.match(host) or _IPV6_HOST.match(host))


def parse_port(text: str) -> str | None:
    """``text`` as a canonical port number string (``08080`` -> ``8080``), or None if invalid."""
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    number = int(text)
    if not 0 < number <= 65535:
        return None
    return str(number)


@attrs.frozen
class DomainPattern:
    """One ``whitelist_domains`` style entry: ``host``, ``.host`` / ``*.host``, optional port.

    ``port`` is None when the entry has none (then only URLs without an explicit port
    match), ``"*"`` for any port, or a canonical port number.
    """

    host: str
    subdomains: bool = False
    port: str | None = None

    @classmethod
    def parse(cls, entry: str) -> DomainPattern:
        """Parse one entry. Raises ValueError with a readable reason for a malformed one."""
        text = entry.strip()
        subdomains = False
        if text.startswith("*."):
            subdomains, text = True, text[2:]
        elif text.startswith("."):
            subdomains, text = True, text[1:]
        port: str | None = None
        if text.startswith("["):
            close = text.find("]")
            if close < 0:
                raise ValueError("unclosed '[' in an IPv6 address")
            host, rest = text[: close + 1], text[close + 1 :]
            if rest and not rest.startswith(":"):
                raise ValueError("unexpected text after the IPv6 address")
            port_text = rest[1:] if rest else None
        elif ":" in text:
            host, _, port_text = text.partition(":")
        else:
            host, port_text = text, None
        if port_text is not None:
            port = "*" if port_text == "*" else parse_port(port_text)
            if port is None:
                raise ValueError("the port must be a number from 1 to 65535 or '*'")
        host = normalize_host(host)
        if not host or host.startswith(".") or ".." in host:
            raise ValueError("the host is empty or has an empty label")
        if host.startswith("[") and not _IPV6_HOST.match(host):
            raise ValueError("not a valid IPv6 address")
        if not host.startswith("[") and _BAD_ENTRY_CHARS.search(host):
            raise ValueError("the host contains characters not allowed in a host name")
        return cls(host, subdomains, port)

    def matches(self, host: str, port: str | None = None) -> bool:
        """True if ``host`` (normalized, see :func:`normalize_host`) and ``port`` match.

        Sub-domain entries match the apex and hosts ending in ``.`` + host: the suffix is
        checked on a label boundary, so ``.foo.bar`` never matches ``evilfoo.bar``.
        """
        if self.port is None:
            if port is not None:
                return False
        elif self.port != "*" and self.port != port:
            return False
        if host == self.host:
            return True
        return self.subdomains and _is_plain(host) and host.endswith("." + self.host)


def match_host(patterns: Iterable[DomainPattern], host: str, port: str | None = None) -> bool:
    """True if any pattern matches ``host``/``port``; ``host`` is normalized here.

    A host that is not plain ASCII labels (percent-encoded, IDN, empty labels) only
    matches an entry spelling it exactly.
    """
    host = normalize_host(host)
    if not host:
        return False
    return any(p.matches(host, port) for p in patterns)


def _values(args: Mapping[bytes, list[bytes]], name: bytes) -> list[str]:
    """All comma-separated values of a (repeatable) query parameter, empty ones dropped."""
    out: list[str] = []
    for raw in args.get(name, ()):
        text = raw.decode("utf-8", errors="replace")
        out.extend(v.strip() for v in text.split(",") if v.strip())
    return out


@functools.lru_cache(maxsize=256)
def _parsed_email_domain(entry: str) -> DomainPattern | None:
    """``entry`` of ``allowed_email_domains`` parsed, or None if malformed; cached.

    The same few entries arrive on every ``/oauth2/auth`` request (they are written in the
    reverse proxy's config), so each is parsed once; the bound keeps clients that send
    arbitrary entries from growing the cache.
    """
    try:
        return DomainPattern.parse(entry)
    except ValueError:
        return None


def _email_domain_allowed(email: str, entries: list[str]) -> bool:
    if email.count("@") != 1:
        return False
    local, domain = email.split("@")
    if not local or not domain:
        return False
    # A malformed entry matches nothing; the constraint still applies.
    parsed = (_parsed_email_domain(entry) for entry in entries)
    return match_host([p for p in parsed if p is not None], domain)


def check_query_constraints(args: Mapping[bytes, list[bytes]], session: Session) -> Decision:
    """Apply the ``allowed_groups``, ``allowed_emails`` and ``allowed_email_domains`` parameters.

    Each is a comma list and may be repeated; missing or empty parameters impose nothing.
    ``allowed_groups`` needs one shared group, ``allowed_emails`` an exact (case-sensitive)
    match, ``allowed_email_domains`` a domain matched like ``whitelist_domains``
    (``example.com`` only the apex, ``.example.com``/``*.example.com`` apex and sub-domains).
    Every present constraint must hold; a session without email fails the email ones.
    """
    if not args:
        return _ALLOWED  # the common case: a query without parameters imposes nothing
    groups = _values(args, b"allowed_groups")
    if groups and not set(groups).intersection(session.groups):
        return Decision.deny("you are not in any of the allowed groups")
    emails = _values(args, b"allowed_emails")
    domains = _values(args, b"allowed_email_domains")
    if (emails or domains) and not session.email:
        return Decision.deny("no email")
    if emails and session.email not in emails:
        return Decision.deny(f"the email address {session.email} is not allowed")
    if domains and not _email_domain_allowed(session.email, domains):
        return Decision.deny(f"the email domain of {session.email} is not allowed")
    return _ALLOWED


_ALLOWED = Decision.allow()  # frozen: one shared instance

"""Request rules, compiled once at start-up: skip-auth routes, API routes, trusted IPs.

- :class:`RouteRule` / :class:`RouteRules`: ``skip_auth_routes``, ``skip_auth_regex`` and
  ``skip_auth_preflight`` (oauth2-proxy §6.1, §6.9), matched on the normalised path only.
- :class:`ApiRoutes`: ``api_routes`` (§6.2), matched on the request URI with its query.
- :class:`TrustedIPs` and :func:`client_address`: ``trusted_ips``, ``trusted_proxy_ips``,
  ``reverse_proxy`` and ``real_client_ip_header`` (§6.3).

Security: a skip rule is an allow rule, so every doubt resolves to "no rule matched"
(authentication required). A path that cannot be normalised without guessing how the
upstream reads it (an encoded ``/`` or ``\\``, a NUL, ``..;`` path parameters) matches no
rule at all, negated rules included.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

import attrs

from oauthgate.errors import ConfigError

__all__ = [
    "PREFLIGHT_RULE",
    "ApiRoutes",
    "IPAddress",
    "IPNetwork",
    "RouteRule",
    "RouteRules",
    "TrustedIPs",
    "client_address",
    "compile_skip_rules",
    "normalize_path",
    "parse_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SEPARATOR = re.compile(r"!?=")
# RFC 9110 token characters: what an HTTP method may be made of.
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_AMBIGUOUS_BYTES = (b"/", b"\\", b"\x00")


def _compile(regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as e:
        raise ValueError(f"error compiling regex /{regex}/: {e}") from None


def normalize_path(target: str | bytes) -> str | None:
    """The path of a request target as rules see it, or None when it is ambiguous.

    The query and anything after ``#`` are dropped, empty segments are merged
    (``//a`` is ``/a``), each segment is percent-decoded (UTF-8, invalid sequences
    replaced) and dot-segments are resolved (``/a/../admin`` is ``/admin``), so a rule
    sees the resource the upstream will serve. An encoded ``#`` (``%23``) ends the path
    like a ``#`` (GHSA-pxq7-h93f-9jrg). An absolute-form target (``http://host/p``) is
    reduced to its path.

    None (no rule may match) when a segment decodes to something containing ``/``,
    ``\\`` or NUL, or is a dot-segment followed by ``;`` parameters (``..;``, which
    servlet containers treat as ``..``), or when the target is not a path at all.
    """
    raw = target.encode("utf-8") if isinstance(target, str) else target
    raw = raw.split(b"?", 1)[0].split(b"#", 1)[0]
    absolute = _ABSOLUTE_FORM.match(raw)
    if absolute is not None:
        raw = raw[absolute.end() :] or b"/"
    if not raw.startswith(b"/"):
        return None
    segments: list[str] = []
    raw_segments = raw.split(b"/")[1:]
    trailing_slash = raw.endswith(b"/")
    for index, raw_segment in enumerate(raw_segments):
        decoded = unquote_to_bytes(raw_segment)
        cut = decoded.find(b"#")
        ended = cut >= 0
        if ended:
            decoded = decoded[:cut]
            trailing_slash = not decoded
        if any(c in decoded for c in _AMBIGUOUS_BYTES):
            return None
        if decoded.split(b";", 1)[0] in (b".", b"..") and b";" in decoded:
            return None
        last = ended or index == len(raw_segments) - 1
        if decoded == b"..":
            if segments:
                segments.pop()
            trailing_slash = trailing_slash or last
        elif decoded == b".":
            trailing_slash = trailing_slash or last
        elif decoded:
            segments.append(decoded.decode("utf-8", "replace"))
        if ended:
            break
    path = "/" + "/".join(segments)
    if trailing_slash and segments:
        path += "/"
    return path


@attrs.frozen
class RouteRule:
    """One ``skip_auth_routes`` entry: an optional method and a path regex, maybe negated.

    ``text`` is the entry as configured, for the auth log.
    """

    text: str
    method: str | None
    pattern: re.Pattern[str]
    negate: bool = False

    @classmethod
    def parse(cls, text: str) -> RouteRule:
        """Parse ``REGEX``, ``METHOD=REGEX``, ``METHOD!=REGEX`` or ``!=REGEX``.

        The entry is split once, on the first ``=`` or ``!=``; everything after it is
        the regex (which may contain more ``=``). The method is upper-cased; an empty
        one means every method. The rule is negated iff that separator is ``!=``.

        Unlike oauth2-proxy, a method that is not an HTTP token (``^/a?b=c`` would
        give the method ``^/A?B``, a rule that never matches) is an error, not a
        silent no-op: write ``=^/a?b=c``.

        Raises:
            ValueError: a bad regex (``error compiling regex /<re>/: <reason>``) or method.
        """
        separator = _SEPARATOR.search(text)
        if separator is None:
            return cls(text, None, _compile(text))
        method = text[: separator.start()].upper()
        regex = text[separator.end() :]
        if method and not _METHOD.match(method):
            raise ValueError(
                f"{method!r} is not an HTTP method (to match a path regex that "
                f"contains '=', write it as '={text}')"
            )
        return cls(text, method or None, _compile(regex), separator.group() == "!=")

    @classmethod
    def from_regex(cls, regex: str) -> RouteRule:
        """A ``skip_auth_regex`` entry: every method, never negated. Raises ValueError."""
        return cls(regex, None, _compile(regex))

    def matches(self, method: str, path: str) -> bool:
        """True if this rule applies to ``method`` and the normalised ``path``."""
        if self.method is not None and self.method != method.upper():
            return False
        return (self.pattern.search(path) is not None) != self.negate


def _rule_tuple(rules: Iterable[RouteRule]) -> tuple[RouteRule, ...]:
    return tuple(rules)


@attrs.frozen
class RouteRules:
    """The skip-auth rules, in order; the first that matches wins."""

    rules: tuple[RouteRule, ...] = attrs.field(converter=_rule_tuple)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def matches(self, method: str, target: str | bytes) -> RouteRule | None:
        """The rule that lets this request skip authentication, or None.

        ``target`` is the request target as received (path, maybe a query); it is
        normalised with :func:`normalize_path`, and an ambiguous one matches nothing.
        """
        if not self.rules:
            return None
        path = normalize_path(target)
        if path is None:
            return None
        for rule in self.rules:
            if rule.matches(method, path):
                return rule
        return None


# The rule ``skip_auth_preflight`` adds: OPTIONS on any path.
PREFLIGHT_RULE = RouteRule("skip_auth_preflight", "OPTIONS", re.compile(""))


def compile_skip_rules(
    skip_auth_routes: Iterable[str],
    skip_auth_regex: Iterable[str] = (),
    skip_auth_preflight: bool = False,
) -> RouteRules:
    """All skip-auth options as one :class:`RouteRules` (preflight, routes, then regexes).

    Raises:
        ConfigError: one line per bad entry, such as
            ``skip_auth_routes: GET=(: error compiling regex /(/: ...``.
    """
    rules: list[RouteRule] = [PREFLIGHT_RULE] if skip_auth_preflight else []
    problems: list[str] = []
    for entry in skip_auth_routes:
        try:
            rules.append(RouteRule.parse(entry))
        except ValueError as e:
            problems.append(f"skip_auth_routes: {entry}: {e}")
    for entry in skip_auth_regex:
        try:
            rules.append(RouteRule.from_regex(entry))
        except ValueError as e:
            problems.append(f"skip_auth_regex: {entry}: {e}")
    if problems:
        raise ConfigError(problems)
    return RouteRules(rules)


@attrs.frozen
class ApiRoutes:
    """``api_routes``: requests whose URI matches get 401 JSON instead of a login redirect.

    Matched (unanchored) against the request URI as received, query included, as
    oauth2-proxy does. This only chooses the form of a refusal, never whether to refuse.
    """

    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def parse(cls, regexes: Iterable[str]) -> ApiRoutes:
        """Compile ``regexes``. Raises ValueError (``error compiling regex /<re>/: ...``)."""
        return cls(tuple(_compile(regex) for regex in regexes))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, uri: str) -> bool:
        """True if any regex matches ``uri`` (path and query)."""
        return any(p.search(uri) is not None for p in self.patterns)


def parse_ip(text: str | None) -> IPAddress | None:
    """``text`` as an IP address, or None. IPv4-mapped IPv6 becomes IPv4; a zone is dropped."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class TrustedIPs:
    """A set of IP networks (``trusted_ips``, ``trusted_proxy_ips``), IPv4 and IPv6."""

    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedIPs:
        """Parse IP addresses and CIDRs; a bare address is a /32 or /128; blanks are skipped.

        Raises:
            ValueError: naming each bad entry: not an address, a bad mask, or host bits
                set (``10.0.0.1/24``: did you mean ``10.0.0.0/24``?).
        """
        networks: list[IPNetwork] = []
        problems: list[str] = []
        for entry in entries:
            text = entry.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=True))
            except ValueError as e:
                problems.append(f"{entry!r} is not an IP address or CIDR: {e}")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, ip: str | None) -> bool:
        """True if ``ip`` (a bare address) is in one of the networks; None or garbage: False."""
        address = parse_ip(ip)
        if address is None:
            return False
        return any(address in network for network in self.networks)


def _forwarded_address(value: str) -> IPAddress | None:
    """A forwarded address: ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]:80``."""
    text = value.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or (close + 1 < len(text) and text[close + 1] != ":"):
            return None
        return parse_ip(text[1:close])
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return parse_ip(text)


def client_address(
    peer_ip: str | None,
    header_value: str | None,
    *,
    reverse_proxy: bool,
    header_name: str,
    trusted_proxies: TrustedIPs | None,
) -> str | None:
    """The address of the client, for ``trusted_ips`` and the logs; None if unknown.

    Without ``reverse_proxy`` it is always the TCP peer: no header makes a client anyone
    else. With it, a peer outside ``trusted_proxies`` (when given) is a client that went
    around the proxy, so its header is ignored and the peer is the answer. Otherwise:

    - ``X-Forwarded-For`` (``header_value`` is every line of it joined with ``,``): the
      addresses are walked from the right, skipping trusted proxies, and the first one
      that is not a trusted proxy is the client, so addresses a client prepends are never
      believed. With no ``trusted_proxies``, that is the right-most address. If every
      address is a trusted proxy, the left-most one.
    - any other header (``X-Real-IP``, ``CF-Connecting-IP``...): its value, which must be
      exactly one address (a port is allowed and dropped).

    A missing header or an entry that is not an address gives None (the caller logs it:
    the proxy is misconfigured or someone is spoofing). The peer is never used instead,
    as it is the proxy itself. A peer that is not an IP address (a UNIX socket) counts
    as a trusted proxy: only local processes can reach it.

    ``trusted_proxies`` None trusts every peer (oauth2-proxy's default when
    ``trusted_proxy_ips`` is unset); an empty :class:`TrustedIPs` trusts none.
    """
    peer = parse_ip(peer_ip)
    if not reverse_proxy:
        return str(peer) if peer is not None else None
    if trusted_proxies is not None and peer is not None and not trusted_proxies.contains(str(peer)):
        return str(peer)
    if not header_value or not header_value.strip():
        return None
    if header_name.strip().lower() != "x-forwarded-for":
        address = _forwarded_address(header_value)
        return str(address) if address is not None else None
    entries = [e for e in header_value.split(",") if e.strip()]
    leftmost: IPAddress | None = None
    for entry in reversed(entries):
        address = _forwarded_address(entry)
        if address is None:
            return None
        if trusted_proxies is None or not trusted_proxies.contains(str(address)):
            return str(address)
        leftmost = address
    return str(leftmost) if leftmost is not None else None

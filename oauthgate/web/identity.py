"""Identity headers: which ones oauthgate injects, and stripping every client copy of them.

What is injected is a list of :class:`~oauthgate.config.headers.HeaderRule` values, from
the alpha YAML (``injectRequestHeaders`` / ``injectResponseHeaders``) or converted from
the legacy header flags, so both configurations go through this one engine.

The strip set is computed once from the configuration; stripping runs on every request,
also on routes that skip authentication, so no client can spoof an identity. Header
names are compared normalised (case-insensitive, ``_`` equal to ``-``), which closes the
header-smuggling variants of GHSA-vjrc-mh2v-45x6.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import attrs
from twisted.web.http_headers import Headers

from oauthgate.config.headers import HeaderRule, HeaderValue, legacy_header_rules
from oauthgate.config.options import Config
from oauthgate.memo import Memo, session_weight
from oauthgate.session import Session

__all__ = ["IDENTITY_HEADERS", "IdentityHeaders", "claim_values", "normalise", "set_all"]

Pairs = list[tuple[bytes, bytes]]

# Headers oauthgate sets towards the upstream or in its own responses. Clients never
# get to send them, whatever is configured.
IDENTITY_HEADERS = (
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Preferred-Username",
    "X-Auth-Request-Access-Token",
    "GAP-Auth",
    "GAP-Signature",
)


def normalise(name: bytes | str) -> bytes:
    """A header name as compared for stripping: lower case, ``_`` read as ``-``."""
    if isinstance(name, str):
        name = name.encode("latin-1")
    return name.lower().replace(b"_", b"-")


_CONTROL = dict.fromkeys([*range(32), 127], " ")
# Header names remembered by strip_from (names are few; a client inventing new ones on
# every request only makes the map start over).
_MAX_NAMES = 1024


def _header_value(value: str) -> bytes:
    # Identity values come from the IdP: no line breaks, NULs or other control characters
    # may reach a header.
    return value.translate(_CONTROL).encode("utf-8")


def _go_time(seconds: float) -> str:
    """``seconds`` as Go's ``time.Time.String`` writes a UTC time (oauth2-proxy's format)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + " +0000 UTC"


def claim_values(session: Session, claim: str) -> list[str]:
    """The values of ``claim`` in ``session`` (several only for ``groups``); empty if unset.

    ``user`` falls back to the email when the session has no user name.
    """
    if claim == "user":
        values = [session.user or session.email]
    elif claim == "groups":
        values = list(session.groups)
    elif claim == "created_at":
        values = [_go_time(session.created_at)] if session.created_at else []
    elif claim == "expires_on":
        values = [] if session.expires_on is None else [_go_time(session.expires_on)]
    elif claim in ("email", "preferred_username", "access_token", "id_token", "refresh_token"):
        values = [getattr(session, claim)]
    else:
        values = []
    return [value for value in values if value]


def _render(value: HeaderValue, session: Session) -> list[str]:
    if not value.claim:
        return [value.value] if value.value else []
    claims = claim_values(session, value.claim)
    if value.basic_auth_password is not None:
        return [
            "Basic " + base64.b64encode(f"{v}:{value.basic_auth_password}".encode()).decode()
            for v in claims
        ]
    return [value.prefix + v for v in claims]


@attrs.frozen
class IdentityHeaders:
    """What to strip from requests and what to add for an authenticated session.

    The headers of a session are worked out once and remembered, keyed by the (frozen)
    session, in bounded memos; so is whether each incoming header name is one to strip.
    """

    request_rules: tuple[HeaderRule, ...]
    response_rules: tuple[HeaderRule, ...]
    strip: frozenset[bytes]
    _stripped: dict[bytes, bool] = attrs.field(init=False, factory=dict, eq=False, repr=False)
    _responses: Memo[tuple[Session, bool], tuple[tuple[bytes, bytes], ...]] = attrs.field(
        init=False, factory=Memo, eq=False, repr=False
    )
    _upstreams: Memo[Session, tuple[tuple[bytes, bytes], ...]] = attrs.field(
        init=False, factory=Memo, eq=False, repr=False
    )
    _preserving: bool = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # A rule keeping the client's value makes the upstream headers depend on the request.
        preserving = any(rule.preserve_request_value for rule in self.request_rules)
        object.__setattr__(self, "_preserving", preserving)

    @classmethod
    def from_rules(
        cls, request: Iterable[HeaderRule], response: Iterable[HeaderRule]
    ) -> IdentityHeaders:
        """Apply ``request`` rules to proxied requests and ``response`` rules to answers.

        Client copies of every request header a rule injects are stripped unless the rule
        preserves them; :data:`IDENTITY_HEADERS` are stripped in any case.
        """
        request = tuple(request)
        strip = {normalise(h) for h in IDENTITY_HEADERS}
        strip.update(normalise(r.name) for r in request if not r.preserve_request_value)
        return cls(request, tuple(response), frozenset(strip))

    @classmethod
    def from_config(cls, config: Config) -> IdentityHeaders:
        """The rules of the alpha YAML when it gave them, else those of the legacy flags."""
        legacy_request, legacy_response = legacy_header_rules(config)
        request = config.request_header_rules
        response = config.response_header_rules
        return cls.from_rules(
            legacy_request if request is None else request,
            legacy_response if response is None else response,
        )

    def strip_from(self, headers: Headers) -> list[bytes]:
        """Remove every incoming copy of an identity header; returns the names removed."""
        stripped = self._stripped
        removed = []
        for name, _ in headers.getAllRawHeaders():
            strip = stripped.get(name)
            if strip is None:
                strip = normalise(name) in self.strip
                if len(stripped) >= _MAX_NAMES:
                    stripped.clear()
                stripped[name] = strip
            if strip:
                removed.append(name)
        for name in removed:
            headers.removeHeader(name)
        return removed

    def upstream(self, session: Session, incoming: Headers | None = None) -> Pairs:
        """Headers added to the request sent upstream (proxy mode).

        One pair per header name; several values (groups, or rules sharing a name) are
        joined with ``,``, as oauth2-proxy does. With ``incoming`` (the request's headers,
        already stripped), a rule that preserves the request value puts the client's
        values first.
        """
        if self._preserving and incoming is not None:
            return _apply(self.request_rules, session, secrets=True, incoming=incoming)
        pairs = self._upstreams.get(session)
        if pairs is None:
            pairs = tuple(_apply(self.request_rules, session, secrets=True, incoming=None))
            self._upstreams.put(session, pairs, session_weight(session) + _weight(pairs))
        return list(pairs)

    def response(self, session: Session, *, tokens: bool) -> Pairs:
        """Headers added to oauthgate's answer: ``/oauth2/auth`` (``tokens=True``) and
        proxied responses (``tokens=False``: token claims and Basic credentials never go
        to the browser, where page scripts could read them)."""
        key = (session, tokens)
        pairs = self._responses.get(key)
        if pairs is None:
            out: Pairs = [(b"GAP-Auth", _header_value(session.email or session.user))]
            out.extend(_apply(self.response_rules, session, secrets=tokens, incoming=None))
            pairs = tuple(out)
            self._responses.put(key, pairs, session_weight(session) + _weight(pairs))
        return list(pairs)


def _weight(pairs: Sequence[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + len(value) + 64 for name, value in pairs) + 128


def _apply(
    rules: Sequence[HeaderRule], session: Session, *, secrets: bool, incoming: Headers | None
) -> Pairs:
    names: dict[bytes, str] = {}
    injected: dict[bytes, list[bytes]] = {}
    kept: dict[bytes, list[bytes]] = {}
    for rule in rules:
        key = normalise(rule.name)
        names.setdefault(key, rule.name)
        found = injected.setdefault(key, [])
        if rule.preserve_request_value and incoming is not None and key not in kept:
            kept[key] = list(incoming.getRawHeaders(rule.name.encode("latin-1"), []))
        for value in rule.values:
            if value.secret and not secrets:
                continue
            found.extend(_header_value(text) for text in _render(value, session))
    # Nothing injected leaves the header alone (a preserved client copy stays as it is).
    return [
        (names[key].encode("latin-1"), b",".join([*kept.get(key, []), *values]))
        for key, values in injected.items()
        if values
    ]


def set_all(headers: Headers, pairs: Sequence[tuple[bytes, bytes]]) -> None:
    """Set each header, replacing any value of the same name."""
    for name, value in pairs:
        headers.setRawHeaders(name, [value])

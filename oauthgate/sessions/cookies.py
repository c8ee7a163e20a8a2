"""Cookie names, attributes, the Domain choice and splitting of large values.

Values larger than one cookie are split as oauth2-proxy does: when the whole
``Set-Cookie`` header would exceed :data:`MAX_SET_COOKIE` bytes the value is sent as
``NAME_0``, ``NAME_1``, ... and joined again on read. Every write also expires the other
cookies of the same family the request carried, so a session that shrinks leaves no
stale parts behind.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs
from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.web.http import Request

    from oauthgate.config.options import Config

__all__ = [
    "MAX_SET_COOKIE",
    "SAMESITE_VALUES",
    "CookieSettings",
    "choose_domain",
    "clear",
    "read_value",
    "write_value",
]

log = Logger()

#: The most bytes one ``Set-Cookie`` header value may have (oauth2-proxy's limit; browsers
#: keep at least 4096 bytes per cookie, name and attributes included).
MAX_SET_COOKIE = 4000

#: ``--cookie-samesite`` values and how each is spelled in the header ("" sends none).
SAMESITE_VALUES = {"lax": "Lax", "strict": "Strict", "none": "None", "": ""}

# RFC 6265 cookie-name (an RFC 7230 token) and cookie-value characters.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
# Path and Domain attribute values: printable ASCII without ';'.
_ATTRIBUTE_VALUE = re.compile(r"[\x20-\x3a\x3c-\x7e]*")


def _samesite(value: str) -> str:
    return value.lower()


def _check_samesite(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in SAMESITE_VALUES:
        raise ValueError(f"cookie samesite must be lax, strict, none or empty, got {value!r}")


def _check_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"cookie name {value!r} is not a valid cookie token")


def _check_attribute(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _ATTRIBUTE_VALUE.fullmatch(value):
        raise ValueError(f"cookie {attribute.name} {value!r} contains invalid characters")


def _check_domains(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for domain in value:
        if not _ATTRIBUTE_VALUE.fullmatch(domain):
            raise ValueError(f"cookie domain {domain!r} contains invalid characters")


def _domains(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class CookieSettings:
    """The name and attributes of one cookie family (the session cookie, a CSRF cookie).

    ``expire`` is the Max-Age in seconds; 0 makes a browser-session cookie (no Max-Age).
    ``samesite`` is ``lax``, ``strict``, ``none`` or ``""`` (no SameSite attribute).
    Derive variants (a CSRF cookie) with ``attrs.evolve``.
    """

    name: str = attrs.field(validator=_check_name)
    domains: tuple[str, ...] = attrs.field(default=(), converter=_domains, validator=_check_domains)
    path: str = attrs.field(default="/", validator=_check_attribute)
    expire: float = 7 * 24 * 3600.0
    secure: bool = True
    httponly: bool = True
    samesite: str = attrs.field(default="", converter=_samesite, validator=_check_samesite)

    @classmethod
    def from_config(cls, config: Config) -> CookieSettings:
        """The session cookie's settings from the ``cookie_*`` options."""
        return cls(
            name=config.cookie_name,
            domains=config.cookie_domains,
            path=config.cookie_path,
            expire=config.cookie_expire,
            secure=config.cookie_secure,
            httponly=config.cookie_httponly,
            samesite=config.cookie_samesite,
        )


def _strip_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end != -1 else host[1:]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def choose_domain(domains: Iterable[str], host: str) -> str | None:
    """The longest of ``domains`` that ``host`` equals or is a sub-domain of, or None.

    ``host`` may carry a port. Matching ignores case and a leading dot of the configured
    domain, and only happens on a label boundary: ``example.com`` matches
    ``app.example.com`` but not ``evilexample.com``. The configured spelling is returned.
    """
    host = _strip_port(host).rstrip(".").lower()
    best: str | None = None
    best_length = -1
    candidates = tuple(domains)
    for domain in candidates:
        bare = domain.lstrip(".").rstrip(".").lower()
        if not bare:
            continue
        if (host == bare or host.endswith("." + bare)) and len(bare) > best_length:
            best, best_length = domain, len(bare)
    if best is None and candidates:
        log.debug(
            "No cookie domain matches host {host}; cookie set without Domain",
            host=host,
            domains=candidates,
        )
    return best


def _request_domain(request: Request, settings: CookieSettings) -> str | None:
    if not settings.domains:
        return None
    host = request.getRequestHostname().decode("ascii", "replace")
    return choose_domain(settings.domains, host)


def _part_name(name: str, index: int) -> str:
    return f"{name}_{index}"


@functools.lru_cache(maxsize=64)
def _family_pattern(name: str) -> re.Pattern[str]:
    """The names of ``name``'s family (NAME, NAME_<digits>), compiled once per name.

    Only the few configured cookie names (session, CSRF) come here, so the cache stays tiny.
    """
    return re.compile(re.escape(name) + r"(?:_\d+)?")


def _family(request: Request, name: str) -> set[str]:
    """Names of the cookies of ``name``'s family (NAME, NAME_<digits>) the request carried."""
    pattern = _family_pattern(name)
    found = set()
    for key in request.received_cookies:
        text = key.decode("latin-1")
        if pattern.fullmatch(text):
            found.add(text)
    return found


def _received(request: Request, name: str) -> str | None:
    value = request.received_cookies.get(name.encode("ascii"))
    if not value:
        return None
    return value.decode("latin-1")


def read_value(request: Request, name: str) -> str | None:
    """The value of cookie ``name``, or of its parts ``NAME_0``, ``NAME_1``... joined.

    The whole cookie wins over parts. Parts are joined up to the first missing index;
    None when neither is present (an empty cookie counts as missing).
    """
    whole = _received(request, name)
    if whole is not None:
        return whole
    parts: list[str] = []
    while (part := _received(request, _part_name(name, len(parts)))) is not None:
        parts.append(part)
    return "".join(parts) if parts else None


def _attributes(settings: CookieSettings, domain: str | None, max_age: int | None) -> str:
    out = [f"; Path={settings.path}"]
    if domain is not None:
        out.append(f"; Domain={domain}")
    if max_age is not None:
        out.append(f"; Max-Age={max_age}")
    if settings.secure:
        out.append("; Secure")
    if settings.httponly:
        out.append("; HttpOnly")
    if settings.samesite:
        out.append(f"; SameSite={SAMESITE_VALUES[settings.samesite]}")
    return "".join(out)


def _set_cookie(request: Request, name: str, value: str, attributes: str) -> None:
    # Appended to ``request.cookies`` like Request.addCookie does (Twisted turns the list
    # into Set-Cookie headers); addCookie itself would lower-case SameSite and refuse
    # SameSite=None without Secure, which the configuration may legitimately ask for.
    request.cookies.append(f"{name}={value}{attributes}".encode("ascii"))


def _split(name: str, value: str, attributes: str) -> list[str]:
    parts: list[str] = []
    position = 0
    while position < len(value):
        room = MAX_SET_COOKIE - len(f"{_part_name(name, len(parts))}={attributes}")
        if room <= 0:
            raise ValueError("cookie attributes leave no room for the value")
        parts.append(value[position : position + room])
        position += room
    return parts


def write_value(
    request: Request,
    settings: CookieSettings,
    value: str,
    *,
    expire: float | None = None,
    name: str | None = None,
) -> None:
    """Set cookie ``name`` (default ``settings.name``) to ``value`` on the response.

    ``expire`` (default ``settings.expire``) is the Max-Age; 0 leaves it out. A value
    whose ``Set-Cookie`` would exceed :data:`MAX_SET_COOKIE` bytes is split into
    ``NAME_0``, ``NAME_1``...; the family's other cookies the request carried are expired.

    Raises:
        ValueError: ``value`` has characters a cookie value cannot carry (sealed values
            are base64url and always can), or ``name`` is not a cookie token.
    """
    name = settings.name if name is None else name
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"cookie name {name!r} is not a valid cookie token")
    if not _COOKIE_VALUE.fullmatch(value):
        raise ValueError("cookie value contains characters a cookie cannot carry")
    expire = settings.expire if expire is None else expire
    max_age = max(1, int(expire)) if expire > 0 else None
    attributes = _attributes(settings, _request_domain(request, settings), max_age)

    if len(f"{name}={value}{attributes}") <= MAX_SET_COOKIE:
        written = {name: value}
    else:
        parts = _split(name, value, attributes)
        log.info(
            "Cookie {name} is {size} bytes; split into {count} cookies (consider a "
            "server-side session store)",
            name=name,
            size=len(value),
            count=len(parts),
        )
        written = {_part_name(name, i): part for i, part in enumerate(parts)}
    for key, part in written.items():
        _set_cookie(request, key, part, attributes)
    _expire(request, settings, _family(request, name) - written.keys())


def _family_order(name: str) -> tuple[int, str]:
    index = name.rpartition("_")[2]
    return (int(index) if index.isdigit() else -1, name)


def _expire(request: Request, settings: CookieSettings, names: Iterable[str]) -> None:
    names = sorted(names, key=_family_order)
    if not names:
        return
    attributes = _attributes(settings, _request_domain(request, settings), 0)
    for key in names:
        _set_cookie(request, key, "", attributes)


def clear(request: Request, settings: CookieSettings, name: str | None = None) -> None:
    """Expire cookie ``name`` (default ``settings.name``) and every part the request carried.

    The cookies are sent empty with ``Max-Age=0`` and the same Path and Domain, so
    browsers drop them.
    """
    name = settings.name if name is None else name
    _expire(request, settings, _family(request, name) | {name})

"""Sessions: sealing, cookies (attributes, domains, splitting) and the session stores
(in the cookie, or in Redis: docs/sessions.md)."""

from oauthgate.sessions.cookie_store import CookieSessionStore
from oauthgate.sessions.cookies import CookieSettings, choose_domain, clear, read_value, write_value
from oauthgate.sessions.crypto import Sealer, decode_secret
from oauthgate.sessions.redis_store import RedisSessionStore

__all__ = [
    "CookieSessionStore",
    "CookieSettings",
    "RedisSessionStore",
    "Sealer",
    "choose_domain",
    "clear",
    "decode_secret",
    "read_value",
    "write_value",
]

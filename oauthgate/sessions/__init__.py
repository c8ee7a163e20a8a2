"""Sessions: sealing, cookies (attributes, domains, splitting) and the session stores."""

from oauthgate.sessions.cookie_store import CookieSessionStore
from oauthgate.sessions.cookies import CookieSettings, choose_domain, clear, read_value, write_value
from oauthgate.sessions.crypto import Sealer, decode_secret

__all__ = [
    "CookieSessionStore",
    "CookieSettings",
    "Sealer",
    "choose_domain",
    "clear",
    "decode_secret",
    "read_value",
    "write_value",
]

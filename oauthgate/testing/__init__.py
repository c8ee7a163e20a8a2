"""Test doubles and a harness for oauthgate and its plugins.

Public API: plugin authors may rely on everything in ``__all__``.

- :class:`GateTestCase`: ``get_success``, ``get_failure`` and ``assert_provides``.
- :func:`memory_http_client` and :class:`ByHost`: in-memory HTTP through a real
  ``Agent`` and ``Site``, for one host or several.
- :class:`Browser`: follows redirects and keeps cookies, in memory or over sockets.
- :class:`FakeIdP`: an OpenID Connect provider issuing real ES256 tokens.
- :class:`EchoResource`: an upstream that shows the request it received.
- :class:`ProviderConformance` and :class:`ProviderSubject`: the contracts every
  identity provider must keep, as a test mixin; :func:`provider_config` builds the
  configuration a provider factory is given.
"""

from oauthgate.testing.conformance import ProviderConformance, ProviderSubject, provider_config
from oauthgate.testing.echo import EchoResource
from oauthgate.testing.fakeidp import (
    CODE_LIFETIME,
    FakeIdP,
    TokenRequest,
    default_clients,
    default_users,
)
from oauthgate.testing.harness import (
    Browser,
    BrowserResponse,
    ByHost,
    GateTestCase,
    MemoryHTTPClient,
    StoredCookie,
    TooManyRedirects,
    memory_http_client,
)

__all__ = [
    "CODE_LIFETIME",
    "Browser",
    "BrowserResponse",
    "ByHost",
    "EchoResource",
    "FakeIdP",
    "GateTestCase",
    "MemoryHTTPClient",
    "ProviderConformance",
    "ProviderSubject",
    "StoredCookie",
    "TokenRequest",
    "TooManyRedirects",
    "default_clients",
    "default_users",
    "memory_http_client",
    "provider_config",
]

"""The provider conformance suite (oauthgate.testing.conformance) run against the built-in
OpenID Connect providers, each over the FakeIdP on the memory client."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oauthgate.interfaces import IProviderFactory
from oauthgate.providers import keycloak, oidc
from oauthgate.testing import (
    ByHost,
    FakeIdP,
    ProviderConformance,
    ProviderSubject,
    memory_http_client,
    provider_config,
)
from oauthgate.testing.conformance import NONCE

ISSUER = "https://idp.test/realms/main"
CLIENT_ID = "gate"
CLIENT_SECRET = "gate-secret"
REDIRECT = "https://app.test/oauth2/callback"


def fake_idp_subject(clock: Clock, factory: IProviderFactory) -> ProviderSubject:
    """A provider built by ``factory`` over a FakeIdP, with a code for alice."""
    idp = FakeIdP(ISSUER, clock, clients={CLIENT_ID: CLIENT_SECRET})
    http = memory_http_client(ByHost({"idp.test": idp.resource()}), clock=clock)
    config = provider_config(
        provider=factory.name,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        oidc_issuer_url=ISSUER,
    )

    def break_api() -> None:
        idp.fail_token_endpoint = 503

    return ProviderSubject(
        provider=factory.build(config, http, clock),
        http=http,
        code=idp.issue_code("alice", client_id=CLIENT_ID, redirect_uri=REDIRECT, nonce=NONCE),
        redirect_uri=REDIRECT,
        email="alice@example.com",
        break_api=break_api,
        refreshes=True,
    )


class OIDCConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        return fake_idp_subject(clock, oidc.factory)


class KeycloakOIDCConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        return fake_idp_subject(clock, keycloak.factory)

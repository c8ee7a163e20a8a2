"""Tests for oauthgate.providers.oidc against a tiny in-memory OpenID provider."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote_plus, urlsplit

import attrs
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from oauthgate.errors import ConfigError, ProviderError, RefreshError, TokenError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.providers.oidc import OIDCProvider, OIDCProviderFactory, factory
from oauthgate.session import Session
from tests.providers.idp import (
    CLIENT_ID,
    CLIENT_SECRET,
    ES256,
    ES256_ROTATED,
    ISSUER,
    NONCE,
    RS256,
    T0,
    Answer,
    SigningKey,
    TinyIdP,
    config,
    hs256_token,
    resolve,
    unsigned_token,
)

REDIRECT = "https://app.example/oauth2/callback"


class OIDCTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.idp = TinyIdP(self.clock)
        self.stub = StubTreq(self.idp)

    def provider(self, **changes: Any) -> OIDCProvider:
        return factory.build(config(**changes), self.stub, self.clock)

    def get(self, coro: Any) -> Any:
        return self.successResultOf(resolve(self.stub, coro))

    def refused(self, coro: Any, *errors: type[BaseException]) -> Any:
        return self.failureResultOf(resolve(self.stub, coro), *errors).value

    def login_params(self, provider: OIDCProvider, **kwargs: Any) -> dict[str, str]:
        args: dict[str, Any] = {
            "state": "state-1",
            "nonce": NONCE,
            "code_challenge": None,
            "code_challenge_method": None,
            "redirect_uri": REDIRECT,
            "extra_params": (),
        }
        args.update(kwargs)
        url = self.get(provider.authorize_url(**args))
        return dict(parse_qsl(urlsplit(url).query))

    def redeem(self, provider: OIDCProvider, nonce: str = NONCE) -> Any:
        return provider.redeem("code-xyz", "verifier-1", REDIRECT, nonce)

    async def login(self, provider: OIDCProvider) -> Session:
        """What the gate's callback does: redeem the code, then enrich the session once."""
        session = await provider.redeem("code-xyz", "verifier-1", REDIRECT, NONCE)
        return await provider.enrich(session)

    def with_id_token(self, token: str) -> None:
        self.idp.token_answer = lambda: Answer.json(self.idp.tokens(id_token=token))


class FactoryTests(OIDCTestCase):
    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assertTrue(verifyObject(IProviderFactory, factory))
        self.assertEqual(factory.name, "oidc")
        self.assertTrue(verifyObject(IProvider, self.provider()))

    def test_display_name_defaults_and_can_be_configured(self) -> None:
        self.assertEqual(self.provider().display_name, "OpenID Connect")
        self.assertEqual(self.provider(provider_display_name="Corp SSO").display_name, "Corp SSO")
        self.assertEqual(self.provider().id, "oidc")

    def test_missing_issuer_is_a_config_error(self) -> None:
        with self.assertRaises(ConfigError) as e:
            factory.build(config(oidc_issuer_url="", client_id=""), self.stub, self.clock)
        self.assertEqual(len(e.exception.problems), 2)
        self.assertTrue(e.exception.problems[0].startswith("client_id:"))
        self.assertTrue(e.exception.problems[1].startswith("oidc_issuer_url:"))

    def test_factory_builds_subclasses_under_another_name(self) -> None:
        class Custom(OIDCProvider):
            id = "custom-oidc"

        custom = OIDCProviderFactory("custom-oidc", Custom)
        self.assertTrue(verifyObject(IProviderFactory, custom))
        provider = custom.build(config(), self.stub, self.clock)
        self.assertIsInstance(provider, Custom)
        self.assertEqual(provider.id, "custom-oidc")


class DiscoveryTests(OIDCTestCase):
    def test_concurrent_first_uses_share_one_discovery(self) -> None:
        provider = self.provider()
        first = resolve(self.stub, provider.authorize_url("a", "n", None, None, REDIRECT, ()))
        second = resolve(self.stub, provider.authorize_url("b", "n", None, None, REDIRECT, ()))
        self.successResultOf(first)
        self.successResultOf(second)
        self.get(provider.authorize_url("c", "n", None, None, REDIRECT, ()))
        self.assertEqual(self.idp.count(b"/.well-known/openid-configuration"), 1)

    def test_failed_discovery_is_reported_and_retried_on_next_use(self) -> None:
        self.idp.discovery_answers.append(Answer(503, b"down", b"text/plain"))
        provider = self.provider()
        with capturedLogs() as events:
            error = self.refused(provider.start(), ProviderError)
        self.assertIn("HTTP 503", str(error))
        self.assertTrue(any(e["log_level"].name == "error" for e in events))
        self.assertIn("state-1", self.login_params(provider).values())
        self.assertEqual(self.idp.count(b"/.well-known/openid-configuration"), 2)

    def test_discovered_issuer_must_be_the_configured_one(self) -> None:
        self.idp.discovery["issuer"] = "https://evil.example"
        error = self.refused(self.provider().start(), ProviderError)
        self.assertIn("https://evil.example", str(error))

    def test_issuer_mismatch_allowed_when_verification_is_skipped(self) -> None:
        self.idp.discovery["issuer"] = "https://login.example/tenant"
        provider = self.provider(insecure_oidc_skip_issuer_verification=True)
        self.get(provider.start())

    def test_trailing_slash_on_issuer_is_tolerated(self) -> None:
        self.idp.discovery["issuer"] = ISSUER + "/"
        self.get(self.provider().start())

    def test_start_warms_discovery(self) -> None:
        provider = self.provider()
        self.get(provider.start())
        self.login_params(provider)
        self.assertEqual(self.idp.count(b"/.well-known/openid-configuration"), 1)

    def test_skipped_discovery_uses_configured_endpoints(self) -> None:
        provider = self.provider(
            skip_oidc_discovery=True,
            login_url="https://sso.example/auth",
            redeem_url=ISSUER + "/token",
            oidc_jwks_url=ISSUER + "/jwks",
        )
        url = self.get(provider.authorize_url("s", "n", None, None, REDIRECT, ()))
        self.assertTrue(url.startswith("https://sso.example/auth?"))
        session = self.get(self.redeem(provider))
        self.assertEqual(session.email, "alice@example.com")
        self.assertEqual(self.idp.count(b"/.well-known/openid-configuration"), 0)

    def test_configured_login_url_overrides_discovery(self) -> None:
        provider = self.provider(login_url="https://sso.example/auth")
        url = self.get(provider.authorize_url("s", "n", None, None, REDIRECT, ()))
        self.assertTrue(url.startswith("https://sso.example/auth?"))


class AuthorizeURLTests(OIDCTestCase):
    def test_carries_client_redirect_state_nonce_and_pkce(self) -> None:
        params = self.login_params(
            self.provider(), code_challenge="challenge-1", code_challenge_method="S256"
        )
        self.assertEqual(
            params,
            {
                "client_id": CLIENT_ID,
                "redirect_uri": REDIRECT,
                "response_type": "code",
                "scope": "openid email profile",
                "state": "state-1",
                "nonce": NONCE,
                "code_challenge": "challenge-1",
                "code_challenge_method": "S256",
                "approval_prompt": "force",
            },
        )

    def test_without_pkce_no_challenge_is_sent(self) -> None:
        params = self.login_params(self.provider())
        self.assertNotIn("code_challenge", params)
        self.assertNotIn("code_challenge_method", params)

    def test_prompt_replaces_approval_prompt(self) -> None:
        params = self.login_params(self.provider(prompt="select_account"))
        self.assertEqual(params["prompt"], "select_account")
        self.assertNotIn("approval_prompt", params)

    def test_scope_gains_groups_when_allowed_groups_are_set(self) -> None:
        params = self.login_params(self.provider(allowed_groups=("admins",)))
        self.assertEqual(params["scope"], "openid email profile groups")

    def test_configured_scope_is_sent_unchanged(self) -> None:
        params = self.login_params(self.provider(scope="openid email", allowed_groups=("a",)))
        self.assertEqual(params["scope"], "openid email")

    def test_nonce_left_out_when_skipped(self) -> None:
        self.assertNotIn("nonce", self.login_params(self.provider(insecure_oidc_skip_nonce=True)))

    def test_acr_values_sent_when_set(self) -> None:
        params = self.login_params(self.provider(acr_values="urn:mace:incommon:iap:silver"))
        self.assertEqual(params["acr_values"], "urn:mace:incommon:iap:silver")

    def test_login_urls_own_query_is_kept(self) -> None:
        self.idp.discovery["authorization_endpoint"] = ISSUER + "/authorize?tenant=a%20b"
        url = self.get(self.provider().authorize_url("s", "n", None, None, REDIRECT, ()))
        parts = urlsplit(url)
        self.assertEqual(parts.path, "/authorize")
        self.assertTrue(parts.query.startswith("tenant=a%20b&"))
        self.assertEqual(parse_qs(parts.query)["tenant"], ["a b"])

    def test_extra_params_are_added_but_cannot_replace_state(self) -> None:
        params = self.login_params(
            self.provider(),
            extra_params=(("login_hint", "alice"), ("state", "forged"), ("prompt", "login")),
        )
        self.assertEqual(params["login_hint"], "alice")
        self.assertEqual(params["state"], "state-1")
        self.assertEqual(params["prompt"], "login")


class RedeemTests(OIDCTestCase):
    def test_es256_id_token_gives_a_session(self) -> None:
        session = self.get(self.redeem(self.provider()))
        self.assertEqual(
            session,
            Session(
                user="user-1",
                email="alice@example.com",
                groups=("admins", "staff"),
                preferred_username="alice",
                access_token="at-1",
                id_token=session.id_token,
                refresh_token="rt-1",
                created_at=T0,
                expires_on=T0 + 300,
                provider="oidc",
            ),
        )
        self.assertEqual(self.idp.count(b"/userinfo"), 0)

    def test_rs256_id_token_gives_a_session(self) -> None:
        self.idp.signing_key = RS256
        session = self.get(self.redeem(self.provider()))
        self.assertEqual(session.user, "user-1")

    def test_token_request_sends_code_verifier_and_basic_auth(self) -> None:
        self.get(self.redeem(self.provider()))
        headers, form = self.idp.last(b"/token")
        self.assertEqual(
            form,
            {
                "grant_type": "authorization_code",
                "code": "code-xyz",
                "redirect_uri": REDIRECT,
                "code_verifier": "verifier-1",
                "client_id": CLIENT_ID,
            },
        )
        scheme, _, encoded = headers[b"authorization"][0].partition(b" ")
        self.assertEqual(scheme, b"Basic")
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        self.assertEqual(password, "s3cr%2Ft%3A%26")  # form-encoded first (RFC 6749 2.3.1)
        self.assertEqual((unquote_plus(user), unquote_plus(password)), (CLIENT_ID, CLIENT_SECRET))

    def test_public_client_sends_no_basic_auth(self) -> None:
        self.get(self.redeem(self.provider(client_secret="")))
        headers, form = self.idp.last(b"/token")
        self.assertNotIn(b"authorization", headers)
        self.assertEqual(form["client_id"], CLIENT_ID)
        self.assertNotIn("client_secret", form)

    def test_form_encoded_token_response_is_accepted(self) -> None:
        body = "access_token=at-f&refresh_token=rt-f&expires_in=60&id_token=" + self.idp.id_token()
        self.idp.token_answer = lambda: Answer(
            200, body.encode(), b"application/x-www-form-urlencoded"
        )
        session = self.get(self.redeem(self.provider()))
        self.assertEqual((session.access_token, session.expires_on), ("at-f", T0 + 60))

    def test_expiry_falls_back_to_the_id_token_exp(self) -> None:
        self.idp.token_answer = lambda: Answer.json(self.idp.tokens(expires_in=None))
        session = self.get(self.redeem(self.provider()))
        self.assertEqual(session.expires_on, T0 + 3600)

    def test_token_endpoint_error_is_reported_without_the_code(self) -> None:
        self.idp.token_answer = lambda: Answer.json(
            {"error": "invalid_grant", "error_description": "code expired"}, status=400
        )
        with capturedLogs() as events:
            error = self.refused(self.redeem(self.provider()), ProviderError)
        self.assertIn("invalid_grant", str(error))
        self.assertIn("code expired", str(error))
        self.assertNotIn("code-xyz", str(error))
        self.assertNotIsInstance(error, TokenError)
        logged = repr([dict(e) for e in events])
        self.assertNotIn("code-xyz", logged)
        self.assertNotIn(CLIENT_SECRET, logged)

    def test_hung_token_endpoint_times_out(self) -> None:
        self.idp.hang_token = True
        d = resolve(self.stub, self.redeem(self.provider()))
        self.assertNoResult(d)
        self.clock.advance(10)
        error = self.failureResultOf(d, ProviderError).value
        self.assertIn("did not answer within 10 s", str(error))

    def test_no_id_token_is_an_error(self) -> None:
        self.idp.token_answer = lambda: Answer.json(self.idp.tokens(id_token=None))
        self.refused(self.redeem(self.provider()), ProviderError)


class IDTokenVerificationTests(OIDCTestCase):
    def assert_rejected(self, reason: str, **changes: Any) -> None:
        error = self.refused(self.redeem(self.provider(**changes)), TokenError)
        self.assertIn(reason, str(error))

    def test_bad_signature_is_rejected(self) -> None:
        head, body, _ = self.idp.id_token().split(".")
        _, _, other_signature = self.idp.id_token(sub="someone-else").split(".")
        self.with_id_token(f"{head}.{body}.{other_signature}")
        self.assert_rejected("signature")

    def test_token_signed_by_an_unpublished_key_is_rejected(self) -> None:
        self.with_id_token(
            self.idp.id_token(key=SigningKey("ec-1", ES256_ROTATED.private, "ES256"))
        )
        self.assert_rejected("signature")

    def test_wrong_audience_is_rejected(self) -> None:
        self.idp.claims["aud"] = "another-client"
        self.assert_rejected("audience")

    def test_extra_audience_is_accepted(self) -> None:
        self.idp.claims["aud"] = ["api", "another-client"]
        provider = self.provider(oidc_extra_audiences=("another-client",))
        self.assertEqual(self.get(self.redeem(provider)).user, "user-1")

    def test_first_present_audience_claim_decides(self) -> None:
        self.idp.claims.update(aud="someone-else", azp=CLIENT_ID)
        provider = self.provider(oidc_audience_claims=("client_id", "azp", "aud"))
        self.assertEqual(self.get(self.redeem(provider)).user, "user-1")

    def test_wrong_issuer_is_rejected(self) -> None:
        self.idp.claims["iss"] = "https://evil.example"
        self.assert_rejected("issuer")

    def test_expired_within_leeway_is_accepted(self) -> None:
        self.idp.claims["exp"] = int(T0) - 59
        self.assertEqual(self.get(self.redeem(self.provider())).user, "user-1")

    def test_expired_beyond_leeway_is_rejected(self) -> None:
        self.idp.claims["exp"] = int(T0) - 61
        self.assert_rejected("expired")

    def test_expiry_is_judged_by_the_injected_clock(self) -> None:
        provider = self.provider()
        self.get(provider.start())
        token = self.idp.id_token()
        self.with_id_token(token)
        self.clock.advance(3600 + 61)
        self.refused(self.redeem(provider), TokenError)

    def test_issued_in_the_future_is_rejected(self) -> None:
        self.idp.claims["iat"] = int(T0) + 120
        self.assert_rejected("future")

    def test_not_yet_valid_is_rejected(self) -> None:
        self.idp.claims["nbf"] = int(T0) + 120
        self.assert_rejected("not valid yet")

    def test_other_nonce_is_rejected(self) -> None:
        self.idp.claims["nonce"] = "other-login"
        self.assert_rejected("nonce")

    def test_missing_nonce_is_rejected(self) -> None:
        self.idp.claims["nonce"] = None
        self.assert_rejected("no nonce")

    def test_nonce_not_checked_when_skipped(self) -> None:
        self.idp.claims["nonce"] = None
        provider = self.provider(insecure_oidc_skip_nonce=True)
        self.assertEqual(self.get(self.redeem(provider)).user, "user-1")

    def test_alg_none_token_is_rejected(self) -> None:
        self.with_id_token(unsigned_token({"alg": "none", "kid": "ec-1"}, self.idp.id_claims()))
        self.assert_rejected("algorithm")

    def test_hs256_token_keyed_with_the_public_key_is_rejected(self) -> None:
        token = hs256_token(
            RS256.public_pem(), {"alg": "HS256", "kid": "rsa-1"}, self.idp.id_claims()
        )
        self.with_id_token(token)
        self.assert_rejected("algorithm")

    def test_rotated_key_is_fetched_for_an_unknown_kid(self) -> None:
        provider = self.provider()
        self.get(self.redeem(provider))
        self.clock.advance(3600)  # a later login, after the provider rotated its keys
        self.idp.keys = [ES256_ROTATED]
        self.idp.signing_key = ES256_ROTATED
        self.assertEqual(self.get(self.redeem(provider)).user, "user-1")
        self.assertEqual(self.idp.count(b"/jwks"), 2)

    def test_unknown_kids_refetch_the_jwks_at_most_once_a_minute(self) -> None:
        provider = self.provider()
        self.get(self.redeem(provider))  # fetches the JWKS at T0
        self.idp.keys = [ES256, ES256_ROTATED]
        self.idp.signing_key = ES256_ROTATED
        self.clock.advance(30)
        self.refused(self.redeem(provider), TokenError)
        self.assertEqual(self.idp.count(b"/jwks"), 1)
        self.clock.advance(30)
        self.assertEqual(self.get(self.redeem(provider)).user, "user-1")
        self.assertEqual(self.idp.count(b"/jwks"), 2)


class ClaimsTests(OIDCTestCase):
    def test_unverified_email_is_refused(self) -> None:
        self.idp.claims["email_verified"] = False
        error = self.refused(self.redeem(self.provider()), TokenError)
        self.assertIn("email not verified", str(error))

    def test_unverified_email_allowed_with_the_insecure_flag(self) -> None:
        self.idp.claims["email_verified"] = False
        provider = self.provider(insecure_oidc_allow_unverified_email=True)
        self.assertEqual(self.get(self.redeem(provider)).email, "alice@example.com")

    def test_email_from_a_dotted_claim_path(self) -> None:
        self.idp.claims["ocs"] = {"data": {"email": "bob@example.com"}}
        provider = self.provider(oidc_email_claim="ocs.data.email")
        self.assertEqual(self.get(self.redeem(provider)).email, "bob@example.com")

    def test_user_id_claim_becomes_the_email_claim(self) -> None:
        self.idp.claims["upn"] = "carol@example.com"
        provider = self.provider(user_id_claim="upn")
        self.assertEqual(self.get(self.redeem(provider)).email, "carol@example.com")

    def test_scalar_groups_claim_becomes_one_group(self) -> None:
        self.idp.claims["roles"] = "admin"
        provider = self.provider(oidc_groups_claim="roles")
        self.assertEqual(self.get(self.redeem(provider)).groups, ("admin",))

    def test_missing_groups_are_fetched_from_userinfo(self) -> None:
        self.idp.claims["groups"] = None
        self.idp.userinfo = {"sub": "user-1", "groups": ["ops", 7]}
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.groups, ("ops", "7"))
        headers, _ = self.idp.last(b"/userinfo")
        self.assertEqual(headers[b"authorization"], [b"Bearer at-1"])

    def test_missing_email_is_fetched_from_userinfo(self) -> None:
        self.idp.claims.update(email=None, email_verified=None)
        self.idp.userinfo = {"sub": "user-1", "email": "dave@example.com"}
        self.assertEqual(self.get(self.login(self.provider())).email, "dave@example.com")

    def test_unverified_email_from_userinfo_is_refused(self) -> None:
        self.idp.claims.update(email=None, email_verified=None)
        self.idp.userinfo = {"sub": "user-1", "email": "dave@example.com", "email_verified": False}
        error = self.refused(self.login(self.provider()), TokenError)
        self.assertIn("email not verified", str(error))

    def test_userinfo_for_another_user_is_not_used(self) -> None:
        self.idp.claims.update(email=None)
        self.idp.userinfo = {"sub": "user-2", "email": "mallory@example.com"}
        with capturedLogs() as events:
            error = self.refused(self.login(self.provider()), ProviderError)
        self.assertIn("neither the id_token nor the userinfo endpoint gave an email", str(error))
        self.assertIn("another user", repr([e.get("reason") for e in events]))

    def test_userinfo_without_sub_is_not_used(self) -> None:
        """OIDC Core 5.3.2: a userinfo answer must carry the id_token's sub to be used."""
        self.idp.claims["groups"] = None
        self.idp.userinfo = {"groups": ["admins"]}
        with capturedLogs() as events:
            session = self.get(self.login(self.provider()))
        self.assertEqual(session.groups, ())
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertIn("without a subject (sub)", repr([e.get("reason") for e in warnings]))

    def test_no_email_anywhere_is_refused(self) -> None:
        self.idp.claims.update(email=None)
        error = self.refused(self.login(self.provider()), ProviderError)
        self.assertIn("neither the id_token nor the userinfo endpoint gave an email", str(error))

    def test_userinfo_not_called_when_skipped(self) -> None:
        self.idp.claims.update(email=None)
        provider = self.provider(skip_claims_from_profile_url=True)
        self.refused(self.login(provider), ProviderError)
        self.assertEqual(self.idp.count(b"/userinfo"), 0)

    def test_redeem_returns_the_id_token_identity_without_asking_userinfo(self) -> None:
        """Backfilling is enrich's job; redeem gives only what the verified id_token says."""
        self.idp.claims.update(email=None, groups=None)
        self.idp.userinfo = {"sub": "user-1", "email": "dave@example.com", "groups": ["ops"]}
        session = self.get(self.redeem(self.provider()))
        self.assertEqual((session.user, session.email, session.groups), ("user-1", "", ()))
        self.assertEqual(self.idp.count(b"/userinfo"), 0)

    def test_a_login_asks_userinfo_at_most_once(self) -> None:
        """Even when userinfo cannot fill everything the id_token lacked."""
        self.idp.claims.update(groups=None, preferred_username=None)
        self.idp.userinfo = {"sub": "user-1", "groups": ["ops"]}
        session = self.get(self.login(self.provider()))
        self.assertEqual((session.groups, session.preferred_username), (("ops",), ""))
        self.assertEqual(self.idp.count(b"/userinfo"), 1)

    def test_a_login_with_a_complete_id_token_does_not_ask_userinfo(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.groups, ("admins", "staff"))
        self.assertEqual(self.idp.count(b"/userinfo"), 0)

    def test_enrich_leaves_a_complete_session_alone(self) -> None:
        session = Session(
            user="u",
            email="e@example.com",
            groups=("g",),
            preferred_username="p",
            access_token="at",
        )
        self.assertEqual(self.get(self.provider().enrich(session)), session)
        self.assertEqual(self.idp.count(b"/userinfo"), 0)


class RefreshTests(OIDCTestCase):
    def session(self) -> Session:
        return Session(
            user="user-1",
            email="alice@example.com",
            groups=("admins",),
            access_token="at-0",
            id_token="old-id-token",
            refresh_token="rt-0",
            created_at=T0 - 1000,
            expires_on=T0 - 10,
            provider="oidc",
        )

    def test_refresh_gives_new_tokens_and_times(self) -> None:
        self.idp.token_answer = lambda: Answer.json(
            {"access_token": "at-2", "expires_in": 600, "refresh_token": "rt-2"}
        )
        refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual(
            (refreshed.access_token, refreshed.refresh_token, refreshed.id_token),
            ("at-2", "rt-2", "old-id-token"),
        )
        self.assertEqual((refreshed.created_at, refreshed.expires_on), (T0, T0 + 600))
        _, form = self.idp.last(b"/token")
        self.assertEqual(
            form, {"grant_type": "refresh_token", "refresh_token": "rt-0", "client_id": CLIENT_ID}
        )

    def test_old_refresh_token_kept_when_none_is_returned(self) -> None:
        self.idp.token_answer = lambda: Answer.json({"access_token": "at-2", "expires_in": 600})
        refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual(refreshed.refresh_token, "rt-0")

    def test_new_id_token_updates_identity_without_a_nonce_check(self) -> None:
        self.idp.claims.update(nonce=None, groups=["admins", "new-team"])
        refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual(refreshed.groups, ("admins", "new-team"))
        self.assertEqual(refreshed.preferred_username, "alice")
        self.assertNotEqual(refreshed.id_token, "old-id-token")

    def refresh_with_id_token(self, **claims: Any) -> None:
        """The token endpoint answers the refresh with a new id_token carrying ``claims``."""
        self.idp.token_answer = lambda: Answer.json(
            {
                "access_token": "at-2",
                "expires_in": 600,
                "id_token": self.idp.id_token(nonce=None, **claims),
            }
        )

    def refresh_without_id_token(self) -> None:
        self.idp.token_answer = lambda: Answer.json({"access_token": "at-2", "expires_in": 600})

    def test_groups_missing_from_the_new_id_token_are_removed(self) -> None:
        """A user taken out of every group at the provider loses them on the next refresh."""
        self.refresh_with_id_token(groups=None)
        refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual(refreshed.groups, ())
        headers, _ = self.idp.last(b"/userinfo")
        self.assertEqual(headers[b"authorization"], [b"Bearer at-2"])

    def test_empty_groups_in_the_new_id_token_are_removed(self) -> None:
        self.refresh_with_id_token(groups=[])
        refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual(refreshed.groups, ())

    def test_claims_missing_from_the_new_id_token_come_from_userinfo(self) -> None:
        self.refresh_with_id_token(groups=None, preferred_username=None)
        self.idp.userinfo = {"sub": "user-1", "groups": ["staff"], "preferred_username": "al"}
        refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual((refreshed.groups, refreshed.preferred_username), (("staff",), "al"))
        self.assertEqual(self.idp.count(b"/userinfo"), 1)

    def test_claims_missing_from_the_new_id_token_are_cleared_when_userinfo_is_skipped(
        self,
    ) -> None:
        self.refresh_with_id_token(groups=None, preferred_username=None)
        session = attrs.evolve(self.session(), preferred_username="alice")
        refreshed = self.get(self.provider(skip_claims_from_profile_url=True).refresh(session))
        self.assertEqual((refreshed.groups, refreshed.preferred_username), ((), ""))
        self.assertEqual(self.idp.count(b"/userinfo"), 0)

    def test_userinfo_without_sub_does_not_refill_a_refreshed_identity(self) -> None:
        self.refresh_with_id_token(groups=None)
        self.idp.userinfo = {"groups": ["admins"]}
        with capturedLogs() as events:
            refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual(refreshed.groups, ("admins",))  # kept, as for a failed request
        self.assertTrue(any(e["log_level"].name == "warn" for e in events))

    def test_failed_userinfo_keeps_the_previous_values_of_missing_claims(self) -> None:
        self.refresh_with_id_token(groups=None, email="alice@new.example")
        self.idp.userinfo_answer = Answer(503, b"busy", b"text/plain")
        with capturedLogs() as events:
            refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual(refreshed.groups, ("admins",))
        self.assertEqual(refreshed.email, "alice@new.example")
        self.assertEqual(refreshed.access_token, "at-2")
        self.assertTrue(any(e["log_level"].name == "warn" for e in events))

    def test_new_id_token_without_email_takes_it_from_userinfo(self) -> None:
        self.refresh_with_id_token(email=None, email_verified=None)
        self.idp.userinfo = {"sub": "user-1", "email": "alice@new.example"}
        refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual(refreshed.email, "alice@new.example")

    def test_no_email_after_a_refresh_ends_the_session(self) -> None:
        self.refresh_with_id_token(email=None, email_verified=None)
        error = self.refused(self.provider().refresh(self.session()), RefreshError)
        self.assertTrue(error.fatal)
        self.assertIn("email", str(error))

    def test_unverified_email_after_a_refresh_ends_the_session(self) -> None:
        self.refresh_with_id_token(email_verified=False)
        error = self.refused(self.provider().refresh(self.session()), RefreshError)
        self.assertTrue(error.fatal)

    def test_refresh_without_id_token_takes_groups_from_userinfo(self) -> None:
        """Without a new id_token, removals still take effect through userinfo."""
        self.refresh_without_id_token()
        self.idp.userinfo = {"sub": "user-1", "groups": ["staff"]}
        refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual(refreshed.groups, ("staff",))
        self.assertEqual(
            (refreshed.email, refreshed.id_token), ("alice@example.com", "old-id-token")
        )
        headers, _ = self.idp.last(b"/userinfo")
        self.assertEqual(headers[b"authorization"], [b"Bearer at-2"])

    def test_refresh_without_id_token_removes_groups_userinfo_no_longer_gives(self) -> None:
        self.refresh_without_id_token()
        refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual(refreshed.groups, ())

    def test_refresh_without_id_token_keeps_the_identity_when_userinfo_fails(self) -> None:
        self.refresh_without_id_token()
        self.idp.userinfo_answer = Answer(500, b"oops", b"text/plain")
        with capturedLogs() as events:
            refreshed = self.get(self.provider().refresh(self.session()))
        self.assertEqual((refreshed.groups, refreshed.access_token), (("admins",), "at-2"))
        self.assertTrue(any(e["log_level"].name == "warn" for e in events))

    def test_refresh_without_id_token_keeps_the_identity_when_userinfo_is_skipped(self) -> None:
        self.refresh_without_id_token()
        provider = self.provider(skip_claims_from_profile_url=True)
        refreshed = self.get(provider.refresh(self.session()))
        self.assertEqual(refreshed.groups, ("admins",))
        self.assertEqual(self.idp.count(b"/userinfo"), 0)

    def test_new_id_token_for_another_user_ends_the_session(self) -> None:
        self.idp.claims["sub"] = "user-2"
        error = self.refused(self.provider().refresh(self.session()), RefreshError)
        self.assertTrue(error.fatal)

    def test_invalid_grant_is_fatal(self) -> None:
        self.idp.token_answer = lambda: Answer.json({"error": "invalid_grant"}, status=400)
        error = self.refused(self.provider().refresh(self.session()), RefreshError)
        self.assertTrue(error.fatal)
        self.assertNotIn("rt-0", str(error))

    def test_unavailable_provider_is_not_fatal(self) -> None:
        self.idp.token_answer = lambda: Answer(503, b"busy", b"text/html")
        error = self.refused(self.provider().refresh(self.session()), RefreshError)
        self.assertFalse(error.fatal)

    def test_failed_discovery_is_not_fatal(self) -> None:
        self.idp.discovery_answers.append(Answer(500, b"", b"text/plain"))
        error = self.refused(self.provider().refresh(self.session()), RefreshError)
        self.assertFalse(error.fatal)

    def test_session_without_refresh_token_is_not_refreshed(self) -> None:
        session = Session(user="user-1", email="a@example.com", access_token="at")
        self.assertIsNone(self.get(self.provider().refresh(session)))
        self.assertEqual(self.idp.count(b"/token"), 0)


class AuthorizeAndLogoutTests(OIDCTestCase):
    def test_authorize_leaves_groups_to_the_common_authorizers(self) -> None:
        self.assertTrue(self.get(self.provider().authorize(Session(user="u"))))

    def test_logout_url_ends_the_session_at_the_provider(self) -> None:
        url = self.get(
            self.provider().logout_url(Session(user="u", id_token="idt"), "https://app.example/bye")
        )
        parts = urlsplit(url)
        self.assertEqual(f"{parts.scheme}://{parts.netloc}{parts.path}", ISSUER + "/logout")
        self.assertEqual(
            parse_qsl(parts.query),
            [
                ("id_token_hint", "idt"),
                ("post_logout_redirect_uri", "https://app.example/bye"),
                ("client_id", CLIENT_ID),
            ],
        )

    def test_relative_redirect_is_not_sent_to_the_provider(self) -> None:
        url = self.get(self.provider().logout_url(Session(user="u"), "/bye"))
        self.assertEqual(parse_qsl(urlsplit(url).query), [("client_id", CLIENT_ID)])

    def test_no_logout_url_without_end_session_endpoint(self) -> None:
        del self.idp.discovery["end_session_endpoint"]
        self.assertIsNone(self.get(self.provider().logout_url(Session(user="u"), "/")))

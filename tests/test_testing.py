"""Tests for oauthgate.testing: the fake IdP, the echo upstream and the harness."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import Interface, implementer

from oauthgate.testing import (
    CODE_LIFETIME,
    Browser,
    ByHost,
    EchoResource,
    FakeIdP,
    GateTestCase,
    TooManyRedirects,
    memory_http_client,
)

ISSUER = "https://idp.test/realms/demo"
CLIENT_ID = "app"
SECRET = "app-secret"
REDIRECT = "https://app.test/oauth2/callback"
START = 1_700_000_000.0


def counter_random() -> Any:
    """Deterministic 'randomness' so tests never depend on os.urandom."""
    state = {"n": 0}

    def random(n: int) -> bytes:
        state["n"] += 1
        return hashlib.sha256(str(state["n"]).encode()).digest()[:n].ljust(n, b"\0")

    return random


def s256(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


def basic(client_id: str = CLIENT_ID, secret: str = SECRET) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


class IdPTestCase(GateTestCase):
    """Builds a FakeIdP in memory and drives its endpoints directly."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.idp = FakeIdP(ISSUER, self.clock, clients={CLIENT_ID: SECRET}, random=counter_random())
        self.client = memory_http_client(ByHost({"idp.test": self.idp.resource()}))

    def call(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        response = self.get_success(
            self.client.request(method, url, allow_redirects=False, **kwargs)
        )
        body = self.get_success(response.content())
        return response.code, response.headers, body

    def authorize(self, **params: str) -> dict[str, str]:
        """Run /authorize and return the query of the redirect back to the client."""
        query = {
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT,
            "response_type": "code",
            "scope": "openid email",
            "state": "st4te",
            "nonce": "n0nce",
            "user": "alice",
            **params,
        }
        query = {k: v for k, v in query.items() if v}
        status, headers, _ = self.call("GET", f"{ISSUER}/authorize?{urlencode(query)}")
        self.assertEqual(status, 302)
        location = headers.getRawHeaders("location")[0]
        self.assertTrue(location.startswith(REDIRECT + "?"), location)
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    def token(self, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, _, body = self.call(
            "POST", f"{ISSUER}/token", data=form, headers=basic() if headers is None else headers
        )
        return status, json.loads(body)

    def redeem(self, code: str, **extra: str) -> tuple[int, Any]:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        form.update(extra)
        return self.token(form)

    def verify(self, id_token: str, *, audience: str = CLIENT_ID) -> dict[str, Any]:
        """Verify like a relying party: JWKS signature, aud, iss; exp against the clock."""
        _, _, body = self.call("GET", f"{ISSUER}/jwks")
        keys = jwt.PyJWKSet.from_dict(json.loads(body))
        kid = jwt.get_unverified_header(id_token)["kid"]
        claims: dict[str, Any] = jwt.decode(
            id_token,
            keys[kid].key,
            algorithms=["ES256"],
            audience=audience,
            issuer=ISSUER,
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
        return claims


class DiscoveryTests(IdPTestCase):
    def test_discovery_document_points_at_endpoints_under_the_issuer_path(self) -> None:
        status, headers, body = self.call("GET", f"{ISSUER}/.well-known/openid-configuration")
        doc = json.loads(body)
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(doc["issuer"], ISSUER)
        self.assertEqual(doc["authorization_endpoint"], f"{ISSUER}/authorize")
        self.assertEqual(doc["token_endpoint"], f"{ISSUER}/token")
        self.assertEqual(doc["userinfo_endpoint"], f"{ISSUER}/userinfo")
        self.assertEqual(doc["jwks_uri"], f"{ISSUER}/jwks")
        self.assertEqual(doc["end_session_endpoint"], f"{ISSUER}/end_session")
        self.assertEqual(doc["id_token_signing_alg_values_supported"], ["ES256"])
        self.assertEqual(doc["code_challenge_methods_supported"], ["S256", "plain"])
        self.assertEqual(
            doc["token_endpoint_auth_methods_supported"],
            ["client_secret_basic", "client_secret_post"],
        )
        self.assertIn("code", doc["response_types_supported"])
        self.assertIn("openid", doc["scopes_supported"])

    def test_jwks_publishes_the_signing_key(self) -> None:
        _, _, body = self.call("GET", f"{ISSUER}/jwks")
        (key,) = json.loads(body)["keys"]
        self.assertEqual((key["kty"], key["crv"], key["alg"]), ("EC", "P-256", "ES256"))
        self.assertEqual(key["kid"], self.idp.signing_kid)
        self.assertNotIn("d", key)  # never the private part

    def test_paths_outside_the_issuer_are_not_found(self) -> None:
        status, _, _ = self.call("GET", "https://idp.test/.well-known/openid-configuration")
        self.assertEqual(status, 404)

    def test_token_endpoint_refuses_get(self) -> None:
        status, _, _ = self.call("GET", f"{ISSUER}/token")
        self.assertEqual(status, 405)


class AuthorizationCodeTests(IdPTestCase):
    def test_browser_login_through_the_form_with_pkce_yields_a_verifiable_id_token(self) -> None:
        """The whole flow a relying party drives, with a browser following the redirects."""
        site = ByHost({"idp.test": self.idp.resource(), "app.test": EchoResource()})
        browser = Browser(memory_http_client(site), self.clock)
        verifier = "v" * 50
        query = urlencode(
            {
                "client_id": CLIENT_ID,
                "redirect_uri": REDIRECT,
                "response_type": "code",
                "scope": "openid email profile",
                "state": "abc",
                "nonce": "xyz",
                "code_challenge": s256(verifier),
                "code_challenge_method": "S256",
            }
        )
        form = self.get_success(browser.get(f"{ISSUER}/authorize?{query}"))
        self.assertEqual(form.status, 200)
        self.assertIn('name="user" value="bob"', form.text)

        params = {k: v[0] for k, v in parse_qs(query).items()}
        back = self.get_success(browser.post(f"{ISSUER}/authorize", {**params, "user": "bob"}))
        self.assertEqual(back.status, 200)  # the echo upstream stands in for the client
        self.assertEqual([r.status for r in back.history], [302])
        returned = parse_qs(urlsplit(back.url).query)
        self.assertEqual(returned["state"], ["abc"])

        status, tokens = self.redeem(returned["code"][0], code_verifier=verifier)
        self.assertEqual(status, 200)
        self.assertEqual(tokens["token_type"], "Bearer")
        self.assertEqual(tokens["expires_in"], 3600)
        self.assertEqual(tokens["scope"], "openid email profile")
        claims = self.verify(tokens["id_token"])
        self.assertEqual(claims["nonce"], "xyz")
        self.assertEqual(claims["sub"], "1002")
        self.assertEqual(claims["email"], "bob@example.org")
        self.assertEqual(claims["groups"], ["staff"])
        self.assertEqual(claims["iat"], int(START))
        self.assertEqual(claims["exp"], int(START) + 3600)
        self.assertEqual(self.idp.token_requests[-1].auth_method, "client_secret_basic")

    def test_login_hint_naming_a_user_skips_the_form(self) -> None:
        returned = self.authorize(user="", login_hint="mallory")
        _, tokens = self.redeem(returned["code"])
        claims = self.verify(tokens["id_token"])
        self.assertEqual(claims["preferred_username"], "mallory")
        self.assertIs(claims["email_verified"], False)

    def test_auto_login_signs_in_without_a_form(self) -> None:
        self.idp.auto_login = "bob"
        returned = self.authorize(user="")
        _, tokens = self.redeem(returned["code"])
        self.assertEqual(self.verify(tokens["id_token"])["sub"], "1002")

    def test_authorize_records_the_request(self) -> None:
        self.authorize(nonce="n-1")
        self.assertEqual(self.idp.authorize_requests[-1]["nonce"], "n-1")
        self.assertEqual(self.idp.authorize_requests[-1]["client_id"], CLIENT_ID)

    def test_client_secret_post_works_and_the_secret_is_not_recorded(self) -> None:
        code = self.authorize()["code"]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
        }
        status, _ = self.token(form, headers={})
        self.assertEqual(status, 200)
        record = self.idp.token_requests[-1]
        self.assertEqual(record.auth_method, "client_secret_post")
        self.assertEqual(record.client_id, CLIENT_ID)
        self.assertNotIn("client_secret", record.form)
        self.assertNotIn(SECRET, repr(self.idp.token_requests))

    def test_wrong_client_secret_is_invalid_client(self) -> None:
        code = self.authorize()["code"]
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        status, body = self.token(form, headers=basic(secret="nope"))
        self.assertEqual((status, body), (401, {"error": "invalid_client"}))

    def test_unknown_client_at_authorize_is_a_400_page(self) -> None:
        status, _, body = self.call(
            "GET", f"{ISSUER}/authorize?client_id=evil&redirect_uri={REDIRECT}&response_type=code"
        )
        self.assertEqual(status, 400)
        self.assertIn(b"Unknown client", body)

    def test_missing_redirect_uri_is_a_400_page(self) -> None:
        status, _, _ = self.call("GET", f"{ISSUER}/authorize?client_id={CLIENT_ID}")
        self.assertEqual(status, 400)

    def test_other_response_types_are_refused_back_to_the_client(self) -> None:
        returned = self.authorize(response_type="token")
        self.assertEqual(returned["error"], "unsupported_response_type")
        self.assertEqual(returned["state"], "st4te")

    def test_wrong_pkce_verifier_is_invalid_grant(self) -> None:
        code = self.authorize(code_challenge=s256("right" * 10), code_challenge_method="S256")
        status, body = self.redeem(code["code"], code_verifier="wrong" * 10)
        self.assertEqual((status, body), (400, {"error": "invalid_grant"}))

    def test_missing_pkce_verifier_is_invalid_grant(self) -> None:
        code = self.authorize(code_challenge=s256("right" * 10), code_challenge_method="S256")
        status, body = self.redeem(code["code"])
        self.assertEqual((status, body), (400, {"error": "invalid_grant"}))

    def test_plain_pkce_compares_the_verifier_itself(self) -> None:
        code = self.authorize(code_challenge="p" * 43, code_challenge_method="plain")
        self.assertEqual(self.redeem(code["code"], code_verifier="p" * 43)[0], 200)

    def test_verifier_without_a_challenge_is_refused_as_a_downgrade(self) -> None:
        code = self.authorize()["code"]
        self.assertEqual(self.redeem(code, code_verifier="x" * 43)[1], {"error": "invalid_grant"})

    def test_a_code_is_single_use(self) -> None:
        code = self.authorize()["code"]
        self.assertEqual(self.redeem(code)[0], 200)
        self.assertEqual(self.redeem(code), (400, {"error": "invalid_grant"}))

    def test_a_code_is_redeemable_until_it_is_60_seconds_old(self) -> None:
        first = self.authorize()["code"]
        second = self.authorize()["code"]
        self.clock.advance(CODE_LIFETIME - 0.001)
        self.assertEqual(self.redeem(first)[0], 200)
        self.clock.advance(0.001)
        self.assertEqual(self.redeem(second), (400, {"error": "invalid_grant"}))

    def test_redirect_uri_must_equal_the_authorize_one(self) -> None:
        code = self.authorize()["code"]
        status, body = self.redeem(code, redirect_uri="https://app.test/elsewhere")
        self.assertEqual((status, body), (400, {"error": "invalid_grant"}))

    def test_unknown_grant_type_is_refused(self) -> None:
        self.assertEqual(
            self.token({"grant_type": "password"}), (400, {"error": "unsupported_grant_type"})
        )

    def test_user_claims_can_be_configured(self) -> None:
        idp = FakeIdP(
            ISSUER,
            self.clock,
            clients={CLIENT_ID: SECRET},
            users={"carol": {"email": "carol@corp.test", "groups": ["ops"]}},
        )
        token = idp.issue_id_token("carol", audience=CLIENT_ID)
        claims = jwt.decode(token, options={"verify_signature": False})
        self.assertEqual((claims["sub"], claims["groups"]), ("carol", ["ops"]))


class RefreshTests(IdPTestCase):
    def tokens(self) -> Any:
        return self.redeem(self.authorize()["code"])[1]

    def refresh(self, refresh_token: str) -> tuple[int, Any]:
        return self.token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def test_refresh_gives_new_tokens_and_rotates_the_refresh_token(self) -> None:
        first = self.tokens()
        self.clock.advance(100)
        status, second = self.refresh(first["refresh_token"])
        self.assertEqual(status, 200)
        self.assertNotEqual(second["refresh_token"], first["refresh_token"])
        self.assertNotEqual(second["access_token"], first["access_token"])
        claims = self.verify(second["id_token"])
        self.assertEqual(claims["iat"], int(START) + 100)
        self.assertNotIn("nonce", claims)
        self.assertEqual(self.refresh(first["refresh_token"]), (400, {"error": "invalid_grant"}))
        self.assertEqual(self.refresh(second["refresh_token"])[0], 200)

    def test_fail_refresh_with_an_error_code(self) -> None:
        first = self.tokens()
        self.idp.fail_refresh = "invalid_grant"
        self.assertEqual(self.refresh(first["refresh_token"]), (400, {"error": "invalid_grant"}))

    def test_fail_refresh_with_a_status(self) -> None:
        first = self.tokens()
        self.idp.fail_refresh = 503
        self.assertEqual(self.refresh(first["refresh_token"])[0], 503)
        self.idp.fail_refresh = None
        self.assertEqual(self.refresh(first["refresh_token"])[0], 200)

    def test_fail_token_endpoint_answers_that_status(self) -> None:
        code = self.authorize()["code"]
        self.idp.fail_token_endpoint = 500
        self.assertEqual(self.redeem(code), (500, {"error": "server_error"}))


class SwitchTests(IdPTestCase):
    def issue(self) -> str:
        token: str = self.redeem(self.authorize()["code"])[1]["id_token"]
        return token

    def test_expired_tokens_have_exp_in_the_past(self) -> None:
        self.idp.expired_tokens = True
        claims = self.verify(self.issue())
        self.assertLess(claims["exp"], self.clock.seconds())

    def test_wrong_audience(self) -> None:
        self.idp.wrong_audience = True
        with self.assertRaises(jwt.InvalidAudienceError):
            self.verify(self.issue())

    def test_wrong_issuer(self) -> None:
        self.idp.wrong_issuer = True
        with self.assertRaises(jwt.InvalidIssuerError):
            self.verify(self.issue())

    def test_bad_signature_claims_a_published_kid(self) -> None:
        self.idp.bad_signature = True
        token = self.issue()
        self.assertIn(jwt.get_unverified_header(token)["kid"], self.idp.published_kids)
        with self.assertRaises(jwt.InvalidSignatureError):
            self.verify(token)

    def test_omit_nonce(self) -> None:
        self.idp.omit_nonce = True
        self.assertNotIn("nonce", self.verify(self.issue()))

    def test_error_redirect_sends_the_error_back_with_the_state(self) -> None:
        self.idp.error_redirect = "access_denied"
        returned = self.authorize()
        self.assertEqual(returned, {"error": "access_denied", "state": "st4te"})

    def test_switches_apply_to_issue_id_token_and_overrides_win(self) -> None:
        token = self.idp.issue_id_token("alice", audience=CLIENT_ID, nonce="n", groups=["x"])
        claims = self.verify(token)
        self.assertEqual((claims["nonce"], claims["groups"]), ("n", ["x"]))
        without_email = self.idp.issue_id_token("alice", audience=CLIENT_ID, email=None)
        self.assertNotIn("email", self.verify(without_email))


class KeyRotationTests(IdPTestCase):
    def test_rotation_keeps_the_old_key_so_old_tokens_still_verify(self) -> None:
        old_kid = self.idp.signing_kid
        old_token = self.idp.issue_id_token("alice", audience=CLIENT_ID)
        new_kid = self.idp.rotate_key()
        self.assertNotEqual(new_kid, old_kid)
        self.assertEqual(self.idp.published_kids, (old_kid, new_kid))
        self.verify(old_token)
        new_token = self.idp.issue_id_token("alice", audience=CLIENT_ID)
        self.assertEqual(jwt.get_unverified_header(new_token)["kid"], new_kid)
        self.verify(new_token)

    def test_rotation_can_drop_the_old_key(self) -> None:
        old_token = self.idp.issue_id_token("alice", audience=CLIENT_ID)
        new_kid = self.idp.rotate_key(keep_old=False)
        self.assertEqual(self.idp.published_kids, (new_kid,))
        with self.assertRaises(KeyError):
            self.verify(old_token)


class UserinfoAndEndSessionTests(IdPTestCase):
    def test_userinfo_answers_the_claims_for_a_valid_access_token(self) -> None:
        tokens = self.redeem(self.authorize()["code"])[1]
        status, _, body = self.call(
            "GET",
            f"{ISSUER}/userinfo",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
        self.assertEqual(status, 200)
        info = json.loads(body)
        self.assertEqual((info["sub"], info["email"]), ("1001", "alice@example.com"))
        self.assertEqual(info["groups"], ["admins", "staff"])

    def test_userinfo_without_a_token_is_401(self) -> None:
        status, headers, _ = self.call("GET", f"{ISSUER}/userinfo")
        self.assertEqual(status, 401)
        self.assertIn("Bearer", headers.getRawHeaders("www-authenticate")[0])

    def test_userinfo_with_an_unknown_token_is_401(self) -> None:
        status, _, _ = self.call(
            "GET", f"{ISSUER}/userinfo", headers={"Authorization": "Bearer made-up"}
        )
        self.assertEqual(status, 401)

    def test_userinfo_refuses_an_access_token_once_it_expires(self) -> None:
        tokens = self.redeem(self.authorize()["code"])[1]
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        self.clock.advance(3599)
        self.assertEqual(self.call("GET", f"{ISSUER}/userinfo", headers=auth)[0], 200)
        self.clock.advance(1)
        self.assertEqual(self.call("GET", f"{ISSUER}/userinfo", headers=auth)[0], 401)

    def test_end_session_redirects_back_and_records_the_id_token_hint(self) -> None:
        query = urlencode(
            {
                "id_token_hint": "the-id-token",
                "post_logout_redirect_uri": "https://app.test/bye",
                "state": "s",
            }
        )
        status, headers, _ = self.call("GET", f"{ISSUER}/end_session?{query}")
        self.assertEqual(status, 302)
        self.assertEqual(headers.getRawHeaders("location"), ["https://app.test/bye?state=s"])
        self.assertEqual(self.idp.end_session_requests[-1]["id_token_hint"], "the-id-token")

    def test_end_session_without_a_redirect_shows_a_signed_out_page(self) -> None:
        status, _, body = self.call("GET", f"{ISSUER}/end_session")
        self.assertEqual(status, 200)
        self.assertIn(b"signed out", body)


class _TinyRelyingParty(Resource):
    """Logs users in through the IdP; its callback redeems the code asynchronously."""

    isLeaf = True

    def __init__(self, http: Any) -> None:
        Resource.__init__(self)
        self.http = http

    def render(self, request: Request) -> bytes | int:
        if request.path == b"/login":
            query = urlencode(
                {
                    "client_id": CLIENT_ID,
                    "redirect_uri": REDIRECT,
                    "response_type": "code",
                    "state": "s",
                    "code_challenge": s256("v" * 43),
                    "code_challenge_method": "S256",
                }
            )
            request.redirect(f"{ISSUER}/authorize?{query}".encode())
            return b""
        if request.path == b"/oauth2/callback":
            d = Deferred.fromCoroutine(self.callback(request))
            d.addErrback(self.failed, request)
            return NOT_DONE_YET
        return b"home " + (request.getHeader(b"cookie") or b"")

    def failed(self, failure: Any, request: Request) -> None:
        request.setResponseCode(500)
        request.write(failure.getErrorMessage().encode())
        request.finish()

    async def callback(self, request: Request) -> None:
        code = request.args[b"code"][0].decode()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": "v" * 43,
        }
        response = await self.http.post(f"{ISSUER}/token", data=form, headers=basic())
        tokens = await response.json()
        sub = jwt.decode(tokens["id_token"], options={"verify_signature": False})["sub"]
        request.addCookie(b"rp", sub.encode(), path=b"/", secure=True, httpOnly=True)
        request.redirect(b"/home")
        request.finish()


class RelyingPartyTests(IdPTestCase):
    def test_browser_logs_in_to_an_async_relying_party_sharing_one_memory_client(self) -> None:
        """The pattern gate tests use: one ByHost, one client, nested requests in memory."""
        self.idp.auto_login = "alice"
        site = ByHost({"idp.test": self.idp.resource()})
        client = memory_http_client(site)
        site.add_host("app.test", _TinyRelyingParty(client))
        browser = Browser(client, self.clock)
        landed = self.get_success(browser.get("https://app.test/login"))
        self.assertEqual(landed.text, "home rp=1001")
        self.assertEqual(
            [urlsplit(u).path for u in landed.urls],
            ["/login", "/realms/demo/authorize", "/oauth2/callback", "/home"],
        )
        self.assertEqual(browser.cookie("rp", domain="app.test"), "1001")


class LoginFormEscapingTests(IdPTestCase):
    def test_the_form_escapes_request_parameters_and_user_names(self) -> None:
        evil = '"><script>alert(1)</script>'
        idp = FakeIdP(
            ISSUER,
            self.clock,
            clients={CLIENT_ID: SECRET},
            users={"<b>eve</b>": {"name": evil, "email": "e@x.test"}},
        )
        client = memory_http_client(idp.resource())
        query = urlencode(
            {
                "client_id": CLIENT_ID,
                "redirect_uri": REDIRECT,
                "response_type": "code",
                "state": evil,
            }
        )
        response = self.get_success(client.get(f"{ISSUER}/authorize?{query}"))
        page = self.get_success(response.text("utf-8"))
        self.assertNotIn("<script>", page)
        self.assertNotIn("<b>eve</b>", page)
        self.assertIn("&quot;&gt;&lt;script&gt;", page)
        self.assertIn('value="&lt;b&gt;eve&lt;/b&gt;"', page)


class EchoResourceTests(GateTestCase):
    def setUp(self) -> None:
        self.client = memory_http_client(EchoResource())

    def test_html_page_shows_identity_headers_escaped_and_hides_credentials(self) -> None:
        headers: dict[str | bytes, str | bytes] = {
            "X-Forwarded-User": "<script>x</script>",
            "X-Forwarded-Email": "alice@example.com",
            "X-Forwarded-Groups": "admins,staff",
            "Authorization": "Bearer " + "t" * 40,
            "X-Forwarded-Access-Token": "secret-access-token",
        }
        response = self.get_success(
            self.client.get("https://app.test/some/path?a=1", headers=headers)
        )
        page = self.get_success(response.text("utf-8"))
        self.assertEqual(response.code, 200)
        self.assertNotIn("<script>x", page)
        self.assertIn("&lt;script&gt;x&lt;/script&gt;", page)
        self.assertIn("alice@example.com", page)
        self.assertIn("admins,staff", page)
        self.assertIn("Bearer [40 chars hidden]", page)
        self.assertNotIn("t" * 40, page)
        self.assertNotIn("secret-access-token", page)
        self.assertIn("[19 chars hidden]", page)
        self.assertIn("/some/path", page)
        self.assertIn("X-Auth-Request-User", page)  # listed as absent

    def test_page_says_when_there_is_no_identity(self) -> None:
        response = self.get_success(self.client.get("https://app.test/"))
        self.assertIn("No identity headers", self.get_success(response.text("utf-8")))

    def test_json_when_asked_by_accept_header(self) -> None:
        response = self.get_success(
            self.client.post(
                "https://app.test/api/x?b=2&b=3",
                data=b"12345",
                headers=Headers(
                    {
                        "Accept": ["application/json"],
                        "X-Auth-Request-Email": ["a@b.c"],
                        "X-Forwarded-Groups": ["a", "b"],
                    }
                ),
            )
        )
        info = self.get_success(response.json())
        self.assertEqual(info["method"], "POST")
        self.assertEqual(info["path"], "/api/x")
        self.assertEqual(info["query"], {"b": ["2", "3"]})
        self.assertEqual(info["headers"]["X-Auth-Request-Email"], ["a@b.c"])
        self.assertEqual(info["headers"]["X-Forwarded-Groups"], ["a", "b"])  # as received
        self.assertEqual(info["body_length"], 5)

    def test_json_when_asked_by_query(self) -> None:
        response = self.get_success(
            self.client.get(
                "https://app.test/?format=json", headers=Headers({"Cookie": ["s=abcdef"]})
            )
        )
        info = self.get_success(response.json())
        self.assertEqual(info["headers"]["Cookie"], ["s=[6 chars]"])


class _Named(Resource):
    isLeaf = True

    def __init__(self, name: bytes) -> None:
        Resource.__init__(self)
        self.name = name

    def render(self, request: Request) -> bytes:
        return self.name + b" " + (request.path or b"")


class ByHostTests(GateTestCase):
    def fetch(self, url: str) -> tuple[int, bytes]:
        site = Resource()
        site.putChild(b"deep", _Named(b"deep"))
        client = memory_http_client(ByHost({"one.test": _Named(b"one"), "two.test": site}))
        response = self.get_success(client.get(url))
        return response.code, self.get_success(response.content())

    def test_dispatches_on_the_host_header(self) -> None:
        self.assertEqual(self.fetch("http://one.test/x"), (200, b"one /x"))
        self.assertEqual(self.fetch("http://TWO.test/deep/er"), (200, b"deep /deep/er"))

    def test_unknown_host_is_not_found(self) -> None:
        self.assertEqual(self.fetch("http://three.test/")[0], 404)

    def test_host_with_port_can_be_served_separately(self) -> None:
        client = memory_http_client(
            ByHost({"a.test:8080": _Named(b"8080"), "a.test": _Named(b"80")})
        )
        response = self.get_success(client.get("http://a.test:8080/"))
        self.assertEqual(self.get_success(response.content()), b"8080 /")


class _Cookies(Resource):
    """Sets ?set= cookies, redirects to ?to= (``self``: here again), shows the Cookie header."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        for value in request.args.get(b"set", []):
            request.responseHeaders.addRawHeader(b"Set-Cookie", value)
        for target in request.args.get(b"to", []):
            if target == b"self":
                target = request.uri
            request.setResponseCode(int(request.args.get(b"status", [b"302"])[0]))
            request.setHeader(b"Location", target)
        return (request.method or b"") + b" " + (request.getHeader(b"cookie") or b"")


class BrowserTests(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        site = ByHost(
            {"app.test": _Cookies(), "sso.app.test": _Cookies(), "other.test": _Cookies()}
        )
        self.browser = Browser(memory_http_client(site), self.clock)

    def get(self, url: str, **query: str) -> str:
        if query:
            url += "?" + urlencode(query)
        return self.get_success(self.browser.get(url)).text

    def test_keeps_cookies_and_sends_them_back(self) -> None:
        self.get("https://app.test/", set="a=1; Path=/")
        self.assertEqual(self.get("https://app.test/x"), "GET a=1")
        self.assertEqual(self.browser.cookie("a"), "1")

    def test_host_only_cookies_stay_on_their_host_and_domain_cookies_spread(self) -> None:
        self.get("https://app.test/", set="host=1")
        self.get("https://app.test/", set="dom=2; Domain=.app.test")
        self.assertEqual(self.get("https://sso.app.test/"), "GET dom=2")
        self.assertEqual(self.get("https://other.test/"), "GET ")

    def test_domain_that_does_not_match_is_rejected(self) -> None:
        self.get("https://app.test/", set="x=1; Domain=other.test")
        self.assertIsNone(self.browser.cookie("x"))
        self.assertEqual(len(self.browser.rejected_cookies), 1)

    def test_path_limits_where_a_cookie_is_sent(self) -> None:
        self.get("https://app.test/", set="p=1; Path=/oauth2")
        self.assertEqual(self.get("https://app.test/oauth2/callback"), "GET p=1")
        self.assertEqual(self.get("https://app.test/oauth2x"), "GET ")
        self.assertEqual(self.get("https://app.test/"), "GET ")

    def test_max_age_zero_deletes_a_cookie(self) -> None:
        self.get("https://app.test/", set="s=1; Path=/")
        self.get("https://app.test/", set="s=; Path=/; Max-Age=0")
        self.assertIsNone(self.browser.cookie("s"))
        self.assertEqual(self.get("https://app.test/"), "GET ")

    def test_expires_in_the_past_deletes_a_cookie(self) -> None:
        self.get("https://app.test/", set="s=1")
        self.get("https://app.test/", set="s=; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        self.assertIsNone(self.browser.cookie("s"))

    def test_cookies_expire_on_the_clock(self) -> None:
        self.get("https://app.test/", set="s=1; Max-Age=60")
        self.clock.advance(59)
        self.assertEqual(self.browser.cookie("s"), "1")
        self.clock.advance(1)
        self.assertIsNone(self.browser.cookie("s"))

    def test_secure_cookies_need_https(self) -> None:
        self.get("http://app.test/", set="s=1; Secure")
        self.assertIsNone(self.browser.cookie("s"))
        self.get("https://app.test/", set="s=1; Secure")
        self.assertEqual(self.get("http://app.test/"), "GET ")
        self.assertEqual(self.get("https://app.test/"), "GET s=1")

    def test_follows_redirects_across_hosts_and_records_the_chain(self) -> None:
        inner = "https://sso.app.test/login?" + urlencode({"to": "https://app.test/done"})
        response = self.get_success(
            self.browser.get("https://app.test/start?" + urlencode({"to": inner, "set": "c=1"}))
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.url, "https://app.test/done")
        self.assertEqual(len(response.history), 2)
        self.assertEqual(response.urls[-1], "https://app.test/done")
        self.assertEqual(response.text, "GET c=1")
        self.assertEqual(self.browser.visited, list(response.urls))

    def test_303_after_post_turns_into_get_and_307_keeps_post(self) -> None:
        r = self.get_success(self.browser.post("https://app.test/?to=/next&status=303", {"a": "b"}))
        self.assertEqual(r.text, "GET ")
        r = self.get_success(self.browser.post("https://app.test/?to=/next&status=307", {"a": "b"}))
        self.assertTrue(r.text.startswith("POST"))

    def test_redirect_loops_are_cut_short(self) -> None:
        self.get_failure(self.browser.get("https://app.test/?to=self"), TooManyRedirects)

    def test_tests_can_read_and_clear_cookies(self) -> None:
        self.browser.set_cookie("https://app.test/", "manual=yes")
        self.assertEqual(self.browser.cookie_header("https://app.test/a"), "manual=yes")
        self.browser.clear_cookies()
        self.assertEqual(self.browser.cookies(), [])


class _Later(Resource):
    isLeaf = True

    def __init__(self, clock: Clock) -> None:
        Resource.__init__(self)
        self.clock = clock

    def render(self, request: Request) -> int:
        def finish() -> None:
            request.write(b"late")
            request.finish()

        self.clock.callLater(5, finish)
        return NOT_DONE_YET


class IThing(Interface):
    def go() -> None:
        """Go."""


@implementer(IThing)
class _Thing:
    def go(self) -> None:
        pass


class HarnessTests(GateTestCase):
    def test_get_success_runs_coroutines_deferreds_and_other_awaitables(self) -> None:
        async def answer() -> int:
            return 42

        self.assertEqual(self.get_success(answer()), 42)
        self.assertEqual(self.get_success(Deferred.fromCoroutine(answer())), 42)

    def test_get_success_fails_clearly_when_the_awaitable_is_still_waiting(self) -> None:
        e = self.assertRaises(self.failureException, self.get_success, Deferred())
        self.assertIn("has not completed", str(e))

    def test_get_failure_returns_the_exception(self) -> None:
        async def boom() -> None:
            raise ValueError("no")

        self.assertEqual(str(self.get_failure(boom(), ValueError)), "no")
        self.assertRaises(self.failureException, self.get_failure, boom(), KeyError)

    def test_assert_provides(self) -> None:
        self.assert_provides(IThing, _Thing())
        self.assertRaises(self.failureException, self.assert_provides, IThing, object())

    def test_memory_client_completes_a_late_response_after_the_clock_and_a_flush(self) -> None:
        clock = Clock()
        client = memory_http_client(_Later(clock))
        d = client.get("http://late.test/")
        self.assertNoResult(d)
        clock.advance(5)
        client.flush()
        self.assertEqual(self.get_success(self.get_success(d).content()), b"late")

    def test_memory_client_keeps_no_cookies(self) -> None:
        client = memory_http_client(_Cookies())
        self.get_success(client.get("http://a.test/?set=a%3D1"))
        response = self.get_success(client.get("http://a.test/"))
        self.assertEqual(self.get_success(response.content()), b"GET ")


@pytest.mark.integration
class RealSocketTests(TestCase):
    """The fake IdP and the browser also work over a real port, as in ``--demo``."""

    def test_browser_logs_in_against_the_fake_idp_on_a_real_port(self) -> Deferred[None]:
        from twisted.internet import reactor as global_reactor

        reactor: Any = global_reactor
        root = Resource()
        site = Site(root)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"
        idp = FakeIdP(f"{base}/idp", reactor, auto_login="alice")
        root.putChild(b"idp", idp.resource())
        root.putChild(b"app", EchoResource())
        browser = Browser.over_agent(Agent(reactor), reactor)

        async def login() -> None:
            query = urlencode(
                {
                    "client_id": "oauthgate",
                    "redirect_uri": f"{base}/app/cb",
                    "response_type": "code",
                }
            )
            response = await browser.get(f"{base}/idp/authorize?{query}")
            self.assertEqual(response.status, 200)
            self.assertEqual([r.status for r in response.history], [302])
            self.assertTrue(response.url.startswith(f"{base}/app/cb?code="))
            self.assertIn("oauthgate demo upstream", response.text)

        return Deferred.fromCoroutine(login())


class IssueCodeTests(IdPTestCase):
    """FakeIdP.issue_code: a code as /authorize would send back, for tests without a browser."""

    def test_an_issued_code_redeems_for_tokens_carrying_its_nonce(self) -> None:
        code = self.idp.issue_code("alice", client_id=CLIENT_ID, redirect_uri=REDIRECT, nonce="n-1")
        status, body = self.redeem(code)
        self.assertEqual(status, 200)
        claims = self.verify(body["id_token"])
        self.assertEqual((claims["email"], claims["nonce"]), ("alice@example.com", "n-1"))

    def test_an_issued_code_is_bound_to_its_redirect_uri_and_single_use(self) -> None:
        code = self.idp.issue_code("alice", client_id=CLIENT_ID, redirect_uri=REDIRECT)
        other = self.idp.issue_code("alice", client_id=CLIENT_ID, redirect_uri=REDIRECT)
        self.assertEqual(self.redeem(code)[0], 200)
        self.assertEqual(self.redeem(code), (400, {"error": "invalid_grant"}))
        wrong = self.redeem(other, redirect_uri="https://app.test/elsewhere")
        self.assertEqual(wrong, (400, {"error": "invalid_grant"}))

    def test_an_issued_code_expires_like_one_from_authorize(self) -> None:
        code = self.idp.issue_code("alice", client_id=CLIENT_ID, redirect_uri=REDIRECT)
        self.clock.advance(CODE_LIFETIME)
        self.assertEqual(self.redeem(code), (400, {"error": "invalid_grant"}))

    def test_an_issued_code_with_a_challenge_needs_the_verifier(self) -> None:
        verifier = "v" * 43
        code = self.idp.issue_code(
            "alice",
            client_id=CLIENT_ID,
            redirect_uri=REDIRECT,
            code_challenge=s256(verifier),
            method="S256",
        )
        again = self.idp.issue_code(
            "alice",
            client_id=CLIENT_ID,
            redirect_uri=REDIRECT,
            code_challenge=s256(verifier),
            method="S256",
        )
        self.assertEqual(self.redeem(code), (400, {"error": "invalid_grant"}))
        self.assertEqual(self.redeem(again, code_verifier=verifier)[0], 200)

    def test_unknown_users_and_clients_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            self.idp.issue_code("nobody", client_id=CLIENT_ID, redirect_uri=REDIRECT)
        with self.assertRaises(ValueError):
            self.idp.issue_code("alice", client_id="other", redirect_uri=REDIRECT)

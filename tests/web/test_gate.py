"""The gate's whole request path in memory: login, sessions, refresh, authorization,
spoofing, upstream failures and probes, with a fake IdP and an echo upstream.

Everything runs on one ``Clock`` through real ``Agent``/``Site`` pairs (see
:func:`make_world`), so a test reads like what a browser or an API client sees.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import attrs
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, eventAsJSON, formatEvent
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyChannel
from zope.interface import implementer

from oauthgate.config.options import Config
from oauthgate.errors import AuthError, ProviderError
from oauthgate.interfaces import Decision, IAuthorizer, RequestInfo
from oauthgate.metrics import NO_METRICS
from oauthgate.plugins import Plugins
from oauthgate.service import Components, build_components
from oauthgate.session import Session
from oauthgate.testing import (
    Browser,
    BrowserResponse,
    ByHost,
    EchoResource,
    FakeIdP,
    GateTestCase,
    MemoryHTTPClient,
    default_users,
    memory_http_client,
)
from oauthgate.upstreams.http import HTTPUpstream
from oauthgate.web.gate import Gate, GateResource, _to_origin_form

EPOCH = 1_800_000_000
APP = "https://app.test"
IDP = "https://idp.test"
CLIENT_SECRET = "app-secret"
COOKIE_SECRET = base64.urlsafe_b64encode(bytes(range(32))).decode("ascii")
SESSION = "_oauth2_proxy"
CSRF = "_oauth2_proxy_csrf"
JSON = {"Accept": "application/json"}


# -- the world: a gate in front of an echo upstream, a fake IdP, one clock ---------------


class RecordingEcho(EchoResource):
    """The echo upstream, also remembering what it received (``seen``)."""

    def __init__(self) -> None:
        EchoResource.__init__(self)
        self.seen: list[dict[str, Any]] = []

    def render(self, request: Request) -> bytes:
        self.seen.append(self.describe(request))
        return EchoResource.render(self, request)


class RecordingResource(Resource):
    """Answers 200 to everything and remembers each request's path and query."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.requests: list[tuple[str, dict[str, list[str]]]] = []

    def render(self, request: Request) -> bytes:
        self.requests.append(
            (
                request.path.decode(),
                {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
            )
        )
        return b"ok"


class Delayed(Resource):
    """Serves ``inner`` ``delay`` seconds late on ``clock`` (a slow host)."""

    isLeaf = True

    def __init__(self, inner: Resource, clock: Clock, delay: float) -> None:
        Resource.__init__(self)
        self._inner = inner
        self._clock = clock
        self._delay = delay

    def render(self, request: Request) -> int:
        def answer() -> None:
            body = self._inner.render(request)
            if body is not NOT_DONE_YET:
                request.write(body)
                request.finish()

        self._clock.callLater(self._delay, answer)
        return NOT_DONE_YET


class Hanging(Resource):
    """Never answers."""

    isLeaf = True

    def render(self, request: Request) -> int:
        return NOT_DONE_YET


class Unavailable(Resource):
    """A host answering 503 to everything (an identity provider that is down)."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(503)
        return b"down for maintenance"


@implementer(IAuthorizer)
class BrokenAuthorizer:
    """An authorizer with a bug."""

    async def authorize(self, request: RequestInfo, session: Session) -> Decision:
        raise ZeroDivisionError("a bug")


class DenyingAuthorizer:
    """An authorizer refusing everybody."""

    async def authorize(self, request: RequestInfo, session: Session) -> Decision:
        return Decision.deny("nobody today")


@implementer(IAgent)
class RefusingAgent:
    """An upstream that is down."""

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        return fail(ConnectionRefusedError())


@implementer(IAgent)
class SilentAgent:
    """An upstream that accepts the request and never answers."""

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        return Deferred()


@attrs.define
class GateWorld:
    """A gate at https://app.test, the FakeIdP at https://idp.test and a browser."""

    clock: Clock
    idp: FakeIdP
    hosts: ByHost
    http: MemoryHTTPClient
    components: Components
    upstream: RecordingEcho
    browser: Browser

    @property
    def gate(self) -> Gate:
        return self.components.gate

    def flush(self) -> None:
        """Move bytes until every in-memory exchange has settled after a clock advance.

        ``MemoryHTTPClient.flush`` makes one pass over its connections in no fixed
        order, so an answer that depends on another in-memory exchange (the gate waiting
        on the IdP) may need several passes.
        """
        for _ in range(10):
            self.http.flush()

    def new_browser(self) -> Browser:
        """Another browser, with an empty cookie jar."""
        return Browser(self.http, self.clock)

    async def get(
        self,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        browser: Browser | None = None,
        follow: bool = True,
    ) -> BrowserResponse:
        """GET ``path`` on the app (an absolute URL is used as it is)."""
        url = path if path.startswith("https://") else APP + path
        return await (browser or self.browser).request(
            "GET", url, headers=headers, follow_redirects=follow
        )

    async def login(
        self,
        rd: str = "/",
        *,
        browser: Browser | None = None,
        headers: dict[str, str] | None = None,
    ) -> BrowserResponse:
        """Press "Sign in" with ``rd`` and follow every redirect to where it ends."""
        return await self.get(
            f"/oauth2/start?rd={quote(rd, safe='')}", browser=browser, headers=headers
        )

    async def begin_login(self, rd: str = "/", *, browser: Browser | None = None) -> str:
        """Start a login (sets the CSRF cookie); returns the IdP authorize URL."""
        start = await self.get(
            f"/oauth2/start?rd={quote(rd, safe='')}", browser=browser, follow=False
        )
        assert start.status == 302, start.text
        location = start.header("location")
        assert location is not None and location.startswith(IDP + "/authorize"), location
        return location

    async def callback_url(self, authorize_url: str, *, browser: Browser | None = None) -> str:
        """Visit the IdP; returns the callback URL it redirects back to."""
        answer = await self.get(authorize_url, browser=browser, follow=False)
        location = answer.header("location")
        assert answer.status == 302 and location is not None, answer.text
        return location

    async def echo(
        self, path: str = "/echo", *, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """What the upstream received for ``path``: the echo JSON, header names lower-cased."""
        answer = await self.get(path, headers={**JSON, **(headers or {})})
        assert answer.status == 200, (answer.status, answer.text)
        info: dict[str, Any] = answer.json()
        info["headers"] = {k.lower(): v for k, v in info["headers"].items()}
        return info

    async def session(self, browser: Browser | None = None) -> Session | None:
        """The session behind the browser's cookie, opened with the gate's store."""
        value = (browser or self.browser).cookie(SESSION)
        return None if value is None else await self.components.store.load(value)


def make_world(
    *,
    upstream_agent: IAgent | None = None,
    users: Mapping[str, Mapping[str, Any]] | None = None,
    **changes: Any,
) -> GateWorld:
    """A gate configured like the integration test, changed by ``changes`` (Config fields).

    The clock starts at a realistic epoch; the IdP (with ``users``, default the
    FakeIdP's) logs everyone in as alice.
    """
    clock = Clock()
    clock.advance(EPOCH)
    idp = FakeIdP(IDP, clock, clients={"app": CLIENT_SECRET}, users=users, auto_login="alice")
    hosts = ByHost({"idp.test": idp.resource()})
    http = memory_http_client(hosts, clock=clock)
    options: dict[str, Any] = {
        "provider": "oidc",
        "oidc_issuer_url": IDP,
        "client_id": "app",
        "client_secret": CLIENT_SECRET,
        "cookie_secret": COOKIE_SECRET,
        "email_domains": ("example.com",),
        "upstreams": ("http://upstream.test/",),
        "code_challenge_method": "S256",
        "set_xauthrequest": True,
    }
    options.update(changes)
    config = attrs.evolve(Config(), **options)
    upstream = RecordingEcho()
    agent: IAgent = upstream_agent or RequestTraversalAgent(upstream)
    components = build_components(
        config,
        reactor=clock,
        plugins=Plugins.from_entry_points(),
        http_client=http,
        upstream_factory=lambda url: HTTPUpstream(url, agent, clock),
    )
    hosts.add_host("app.test", GateResource(components.gate))
    return GateWorld(clock, idp, hosts, http, components, upstream, Browser(http, clock))


def set_cookies(response: BrowserResponse) -> dict[str, str]:
    """The response's raw Set-Cookie header values, by cookie name (the last one wins)."""
    out = {}
    for raw in response.headers.getRawHeaders("set-cookie", []):
        out[raw.partition("=")[0]] = raw
    return out


def attributes(set_cookie: str) -> dict[str, str]:
    """The attributes of one Set-Cookie value, names lower-cased ("" for flags)."""
    out = {}
    for part in set_cookie.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        out[name.lower()] = value
    return out


def callback_response(landed: BrowserResponse) -> BrowserResponse:
    """The callback's own response in a followed login."""
    for response in (*landed.history, landed):
        if urlsplit(response.url).path == "/oauth2/callback":
            return response
    raise AssertionError(f"no callback in {landed.urls}")


def grants(idp: FakeIdP) -> list[str]:
    """The grant_type of every token request the IdP received, in order."""
    return [r.form.get("grant_type", "") for r in idp.token_requests]


# -- login ---------------------------------------------------------------------------------


class LoginTests(GateTestCase):
    def test_a_visitor_without_session_gets_the_sign_in_page_keeping_the_target(self) -> None:
        world = make_world()
        page = self.get_success(world.get("/x?y=1"))
        self.assertEqual(page.status, 403)
        self.assertIn('action="/oauth2/start"', page.text)
        self.assertIn('name="rd" value="/x?y=1"', page.text)

    def test_login_round_trip_lands_on_the_requested_page_with_identity_headers(self) -> None:
        world = make_world()
        landed = self.get_success(world.login("/x?y=1", headers=JSON))
        self.assertEqual(landed.status, 200, landed.text)
        self.assertEqual(landed.url, APP + "/x?y=1")
        paths = [urlsplit(u).netloc + urlsplit(u).path for u in landed.urls]
        self.assertEqual(
            paths,
            [
                "app.test/oauth2/start",
                "idp.test/authorize",
                "app.test/oauth2/callback",
                "app.test/x",
            ],
        )
        echoed = {k.lower(): v for k, v in landed.json()["headers"].items()}
        self.assertEqual(echoed["x-forwarded-user"], ["1001"])
        self.assertEqual(echoed["x-forwarded-email"], ["alice@example.com"])
        self.assertEqual(echoed["x-forwarded-groups"], ["admins,staff"])
        self.assertEqual(echoed["x-forwarded-preferred-username"], ["alice"])
        self.assertEqual(landed.json()["query"], {"y": ["1"]})

    def test_login_uses_pkce(self) -> None:
        world = make_world()
        self.get_success(world.login())
        self.assertEqual(world.idp.authorize_requests[-1]["code_challenge_method"], "S256")
        self.assertIn("code_verifier", world.idp.token_requests[-1].form)

    def test_the_csrf_cookie_is_gone_after_the_callback(self) -> None:
        world = make_world()
        authorize = self.get_success(world.begin_login())
        self.assertIsNotNone(world.browser.cookie(CSRF))
        self.get_success(world.get(authorize))
        self.assertIsNone(world.browser.cookie(CSRF))
        self.assertIsNotNone(world.browser.cookie(SESSION))

    def test_the_session_cookie_is_httponly_secure_path_root_for_seven_days(self) -> None:
        world = make_world()
        callback = callback_response(self.get_success(world.login()))
        cookie = attributes(set_cookies(callback)[SESSION])
        self.assertIn("httponly", cookie)
        self.assertIn("secure", cookie)
        self.assertEqual(cookie["path"], "/")
        self.assertEqual(cookie["max-age"], "604800")
        self.assertNotIn("domain", cookie)

    def test_after_login_the_app_is_served_without_another_login(self) -> None:
        world = make_world()
        self.get_success(world.login())
        page = self.get_success(world.get("/other"))
        self.assertEqual(page.status, 200)
        self.assertEqual(page.history, ())


class LargeSessionTests(GateTestCase):
    def big_world(self) -> GateWorld:
        users = default_users()
        # Incompressible group names: the sealed session needs several cookies.
        users["alice"]["groups"] = [
            hashlib.sha256(str(i).encode()).hexdigest()[:16] for i in range(400)
        ]
        world = make_world(users=users)
        landed = self.get_success(world.login("/x"))
        self.assertEqual(landed.status, 200)
        return world

    def test_a_large_session_is_split_over_several_cookies_and_works(self) -> None:
        world = self.big_world()
        names = sorted(c.name for c in world.browser.cookies())
        self.assertGreater(len(names), 1)
        self.assertTrue(all(n.startswith(SESSION + "_") for n in names), names)
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 202)

    def test_the_upstream_sees_none_of_the_parts(self) -> None:
        world = self.big_world()
        world.browser.set_cookie(APP + "/", "theme=dark; Path=/")
        self.assertEqual(
            self.get_success(world.echo("/api"))["headers"]["cookie"], ["theme=[4 chars]"]
        )

    def test_sign_out_clears_every_part(self) -> None:
        world = self.big_world()
        self.get_success(world.get("/oauth2/sign_out"))
        self.assertEqual([c.name for c in world.browser.cookies()], [])


class CookieAttributeTests(GateTestCase):
    def session_cookie(self, **changes: Any) -> dict[str, str]:
        world = make_world(**changes)
        callback = callback_response(self.get_success(world.login()))
        return attributes(set_cookies(callback)[SESSION])

    def test_cookie_secure_false_drops_secure(self) -> None:
        self.assertNotIn("secure", self.session_cookie(cookie_secure=False))

    def test_cookie_httponly_false_drops_httponly(self) -> None:
        self.assertNotIn("httponly", self.session_cookie(cookie_httponly=False))

    def test_cookie_samesite_is_sent(self) -> None:
        self.assertEqual(self.session_cookie(cookie_samesite="strict")["samesite"], "Strict")

    def test_no_samesite_by_default(self) -> None:
        self.assertNotIn("samesite", self.session_cookie())

    def test_the_longest_matching_cookie_domain_is_used(self) -> None:
        cookie = self.session_cookie(cookie_domains=(".test", ".app.test", ".other.test"))
        self.assertEqual(cookie["domain"], ".app.test")

    def test_the_csrf_cookie_uses_the_cookie_domain_too(self) -> None:
        world = make_world(cookie_domains=(".app.test",))
        start = self.get_success(world.get("/oauth2/start", follow=False))
        self.assertEqual(attributes(set_cookies(start)[CSRF])["domain"], ".app.test")

    def test_no_domain_when_no_cookie_domain_matches_the_host(self) -> None:
        world = make_world(cookie_domains=(".other.test",))
        callback = callback_response(self.get_success(world.login()))
        self.assertNotIn("domain", attributes(set_cookies(callback)[SESSION]))
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 202)

    def test_cookie_expire_zero_makes_a_browser_session_cookie_that_works(self) -> None:
        world = make_world(cookie_expire=0.0)
        callback = callback_response(self.get_success(world.login()))
        self.assertNotIn("max-age", attributes(set_cookies(callback)[SESSION]))
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 202)

    def test_the_csrf_cookie_lives_for_cookie_csrf_expire(self) -> None:
        world = make_world(cookie_csrf_expire=120.0)
        start = self.get_success(world.get("/oauth2/start", follow=False))
        self.assertEqual(attributes(set_cookies(start)[CSRF])["max-age"], "120")


class CallbackFailureTests(GateTestCase):
    def assert_no_session(self, world: GateWorld, response: BrowserResponse) -> None:
        self.assertNotIn(SESSION, set_cookies(response))
        self.assertIsNone(world.browser.cookie(SESSION))

    def test_provider_error_redirect_shows_403_with_the_error(self) -> None:
        world = make_world()
        world.idp.error_redirect = "access_denied"
        landed = self.get_success(world.login())
        self.assertEqual(landed.status, 403)
        self.assertIn("access_denied", landed.text)
        self.assert_no_session(world, landed)

    def test_a_tampered_state_is_refused(self) -> None:
        world = make_world()
        callback = self.get_success(world.callback_url(self.get_success(world.begin_login())))
        query = parse_qs(urlsplit(callback).query)
        state = query["state"][0]
        forged = callback.replace(state, state[:-2] + ("AA" if state[-2:] != "AA" else "BB"))
        answer = self.get_success(world.get(forged))
        self.assertEqual(answer.status, 403)
        self.assertIn("state", answer.text)
        self.assert_no_session(world, answer)
        # The code was not even tried at the token endpoint.
        self.assertEqual(world.idp.token_requests, [])

    def test_a_callback_without_the_csrf_cookie_is_refused(self) -> None:
        world = make_world()
        callback = self.get_success(world.callback_url(self.get_success(world.begin_login())))
        world.browser.clear_cookies()
        answer = self.get_success(world.get(callback))
        self.assertEqual(answer.status, 403)
        self.assertIn("CSRF", answer.text)
        self.assert_no_session(world, answer)

    def test_a_csrf_cookie_from_another_browser_is_refused(self) -> None:
        world = make_world()
        callback = self.get_success(world.callback_url(self.get_success(world.begin_login())))
        attacker = world.new_browser()
        self.get_success(world.begin_login(browser=attacker))
        answer = self.get_success(world.get(callback, browser=attacker))
        self.assertEqual(answer.status, 403)
        self.assertIsNone(attacker.cookie(SESSION))

    def test_login_completes_just_before_the_csrf_cookie_expires(self) -> None:
        world = make_world()
        authorize = self.get_success(world.begin_login("/late"))
        world.clock.advance(15 * 60 - 1)
        landed = self.get_success(world.get(authorize))
        self.assertEqual(landed.status, 200)
        self.assertEqual(landed.url, APP + "/late")

    def test_a_csrf_cookie_older_than_cookie_csrf_expire_is_refused(self) -> None:
        """The browser drops the cookie at Max-Age; a client that keeps it sends it anyway."""
        world = make_world()
        authorize = self.get_success(world.begin_login())
        csrf = world.browser.cookie(CSRF)
        world.clock.advance(15 * 60 + 1)
        callback = self.get_success(world.callback_url(authorize))
        answer = self.get_success(world.get(callback, headers={"Cookie": f"{CSRF}={csrf}"}))
        self.assertEqual(answer.status, 403)
        self.assertIn("CSRF", answer.text)
        self.assertEqual(world.idp.token_requests, [])

    def assert_refused_when(self, switch: str) -> None:
        """The login ends in a 403 without a session when the FakeIdP's ``switch`` is on."""
        world = make_world()
        setattr(world.idp, switch, True)
        landed = self.get_success(world.login())
        self.assertEqual(landed.status, 403)
        self.assertIn("not accepted", landed.text)
        self.assert_no_session(world, landed)

    def test_an_id_token_for_another_audience_is_refused(self) -> None:
        self.assert_refused_when("wrong_audience")

    def test_an_id_token_with_a_bad_signature_is_refused(self) -> None:
        self.assert_refused_when("bad_signature")

    def test_an_expired_id_token_is_refused(self) -> None:
        self.assert_refused_when("expired_tokens")

    def test_a_failing_token_endpoint_gives_a_502_page(self) -> None:
        world = make_world()
        world.idp.fail_token_endpoint = 503
        landed = self.get_success(world.login())
        self.assertEqual(landed.status, 502)
        self.assertIn("identity provider", landed.text)
        self.assert_no_session(world, landed)

    def test_an_unverified_email_is_refused(self) -> None:
        world = make_world(email_domains=("*",))
        world.idp.auto_login = "mallory"
        landed = self.get_success(world.login())
        self.assertEqual(landed.status, 403)
        self.assert_no_session(world, landed)

    def test_failures_render_as_json_for_api_clients(self) -> None:
        world = make_world()
        world.idp.error_redirect = "access_denied"
        landed = self.get_success(world.login(headers=JSON))
        self.assertEqual(landed.status, 403)
        self.assertEqual(landed.json()["error"], "login_failed")


class ProviderOutageTests(GateTestCase):
    def test_an_unreachable_idp_at_sign_in_gives_a_502_page(self) -> None:
        """Discovery fails: an expected outage, not a bug (no 500, no traceback)."""
        world = make_world()
        world.hosts.add_host("idp.test", Unavailable())
        with capturedLogs() as events:
            page = self.get_success(world.get("/oauth2/start?rd=/x"))
        failures = [e for e in events if "log_failure" in e]
        self.flushLoggedErrors(ProviderError)  # asserted below, not by trial
        self.assertEqual(page.status, 502)
        self.assertIn("identity provider", page.text)
        self.assertEqual([formatEvent(e) for e in failures], [])

    def test_login_works_once_the_idp_is_back(self) -> None:
        world = make_world()
        world.hosts.add_host("idp.test", Unavailable())
        with capturedLogs():
            self.get_success(world.get("/oauth2/start?rd=/x"))
        self.flushLoggedErrors(ProviderError)
        world.hosts.add_host("idp.test", world.idp.resource())
        landed = self.get_success(world.login("/x"))
        self.assertEqual((landed.status, landed.url), (200, APP + "/x"))


class RedirectSafetyTests(GateTestCase):
    def landing(self, rd: str, **changes: Any) -> str:
        world = make_world(**changes)
        return self.get_success(world.login(rd)).url

    def test_a_protocol_relative_target_lands_on_root(self) -> None:
        self.assertEqual(self.landing("//evil.com"), APP + "/")

    def test_an_absolute_foreign_target_lands_on_root(self) -> None:
        self.assertEqual(self.landing("https://evil.com"), APP + "/")

    def test_a_backslash_trick_lands_on_root(self) -> None:
        self.assertEqual(self.landing("/\\evil.com"), APP + "/")

    def test_a_whitelisted_domain_is_honoured(self) -> None:
        landed = self.landing("https://ok.test/a", whitelist_domains=(".ok.test",))
        self.assertEqual(landed, "https://ok.test/a")

    def test_a_lookalike_of_a_whitelisted_domain_is_not(self) -> None:
        landed = self.landing("https://notok.test/a", whitelist_domains=(".ok.test",))
        self.assertEqual(landed, APP + "/")

    def test_x_auth_request_redirect_is_used_without_rd(self) -> None:
        world = make_world()
        landed = self.get_success(
            world.get("/oauth2/start", headers={"X-Auth-Request-Redirect": "/from-header"})
        )
        self.assertEqual(landed.url, APP + "/from-header")

    def test_rd_wins_over_x_auth_request_redirect(self) -> None:
        world = make_world()
        landed = self.get_success(
            world.get("/oauth2/start?rd=/from-rd", headers={"X-Auth-Request-Redirect": "/h"})
        )
        self.assertEqual(landed.url, APP + "/from-rd")

    def test_an_invalid_x_auth_request_redirect_lands_on_root(self) -> None:
        world = make_world()
        landed = self.get_success(
            world.get("/oauth2/start", headers={"X-Auth-Request-Redirect": "//evil.com/"})
        )
        self.assertEqual(landed.url, APP + "/")


# -- /oauth2/auth and /oauth2/userinfo ----------------------------------------------------


class AuthEndpointTests(GateTestCase):
    def logged_in(self, **changes: Any) -> GateWorld:
        world = make_world(**changes)
        self.assertEqual(self.get_success(world.login()).status, 200)
        return world

    def test_a_session_gets_202_and_identity_headers(self) -> None:
        world = self.logged_in()
        answer = self.get_success(world.get("/oauth2/auth"))
        self.assertEqual(answer.status, 202)
        self.assertEqual(answer.header("x-auth-request-user"), "1001")
        self.assertEqual(answer.header("x-auth-request-email"), "alice@example.com")
        self.assertEqual(answer.header("x-auth-request-groups"), "admins,staff")
        self.assertEqual(answer.header("x-auth-request-preferred-username"), "alice")
        self.assertEqual(answer.header("gap-auth"), "alice@example.com")

    def test_a_refused_session_passes_a_skip_auth_route_without_identity_headers(self) -> None:
        world = self.logged_in(skip_auth_routes=("^/public/",), reverse_proxy=True)
        world.gate.authorizers = (DenyingAuthorizer(),)
        public = self.get_success(
            world.get("/oauth2/auth", headers={"X-Forwarded-Uri": "/public/page"})
        )
        self.assertEqual(public.status, 202)
        self.assertIsNone(public.header("x-auth-request-email"))
        self.assertIsNone(public.header("gap-auth"))
        private = self.get_success(
            world.get("/oauth2/auth", headers={"X-Forwarded-Uri": "/private"})
        )
        self.assertEqual(private.status, 401)

    def test_no_session_gets_401(self) -> None:
        world = make_world()
        answer = self.get_success(world.get("/oauth2/auth"))
        self.assertEqual(answer.status, 401)
        self.assertIsNone(answer.header("x-auth-request-email"))

    def test_allowed_groups_query_outside_the_users_groups_gets_403(self) -> None:
        world = self.logged_in()
        self.assertEqual(
            self.get_success(world.get("/oauth2/auth?allowed_groups=nope")).status, 403
        )

    def test_allowed_groups_query_with_the_users_group_gets_202(self) -> None:
        world = self.logged_in()
        answer = self.get_success(world.get("/oauth2/auth?allowed_groups=admins"))
        self.assertEqual(answer.status, 202)

    def test_auth_answers_carry_no_no_cache_headers(self) -> None:
        world = self.logged_in()
        answer = self.get_success(world.get("/oauth2/auth"))
        self.assertIsNone(answer.header("cache-control"))
        self.assertIsNone(answer.header("expires"))
        self.assertIsNone(answer.header("x-accel-expires"))

    def test_the_sign_in_page_carries_no_cache_headers(self) -> None:
        world = make_world()
        answer = self.get_success(world.get("/oauth2/sign_in"))
        self.assertEqual(answer.status, 200)
        self.assertIn("no-store", answer.header("cache-control") or "")
        self.assertEqual(answer.header("x-accel-expires"), "0")
        self.assertIsNotNone(answer.header("expires"))

    def test_a_tampered_cookie_gets_401_and_is_cleared(self) -> None:
        world = self.logged_in()
        value = world.browser.cookie(SESSION)
        assert value is not None
        flipped = value[:-6] + ("A" if value[-6] != "A" else "B") + value[-5:]
        stranger = world.new_browser()
        answer = self.get_success(
            world.get("/oauth2/auth", browser=stranger, headers={"Cookie": f"{SESSION}={flipped}"})
        )
        self.assertEqual(answer.status, 401)
        cleared = attributes(set_cookies(answer)[SESSION])
        self.assertEqual(cleared["max-age"], "0")
        self.assertTrue(set_cookies(answer)[SESSION].startswith(f"{SESSION}=;"))

    def test_a_session_outside_the_allowed_emails_gets_401(self) -> None:
        world = make_world(email_domains=("example.com", "example.org"))
        world.idp.auto_login = "bob"
        self.get_success(world.login())
        gate = make_world(email_domains=("example.com",))
        # The same cookie secret: bob's cookie opens, but bob is not allowed there.
        answer = self.get_success(
            gate.get(
                "/oauth2/auth", headers={"Cookie": f"{SESSION}={world.browser.cookie(SESSION)}"}
            )
        )
        self.assertEqual(answer.status, 401)


class UserinfoTests(GateTestCase):
    def test_userinfo_shows_the_session_as_json(self) -> None:
        world = make_world()
        self.get_success(world.login())
        answer = self.get_success(world.get("/oauth2/userinfo"))
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            answer.json(),
            {
                "user": "1001",
                "email": "alice@example.com",
                "groups": ["admins", "staff"],
                "preferredUsername": "alice",
            },
        )

    def test_userinfo_without_session_is_401(self) -> None:
        world = make_world()
        answer = self.get_success(world.get("/oauth2/userinfo"))
        self.assertEqual(answer.status, 401)
        self.assertEqual(answer.json(), {"error": "unauthorized"})


# -- authorization ------------------------------------------------------------------------


class AuthorizationTests(GateTestCase):
    def test_allowed_groups_lets_a_member_in(self) -> None:
        world = make_world(allowed_groups=("admins",))
        landed = self.get_success(world.login("/inside"))
        self.assertEqual(landed.status, 200)
        self.assertEqual(landed.url, APP + "/inside")
        self.assertIn("groups", world.idp.authorize_requests[-1]["scope"].split())

    def test_allowed_groups_refuses_a_non_member_with_a_final_403_saying_why(self) -> None:
        world = make_world(allowed_groups=("admins",), email_domains=("example.com", "example.org"))
        world.idp.auto_login = "bob"
        landed = self.get_success(world.login("/inside"))
        self.assertEqual(landed.status, 403)
        self.assertIn("allowed groups", landed.text)
        # The 403 is where the browser stopped: no loop back into the login.
        self.assertEqual(urlsplit(landed.url).path, "/oauth2/callback")
        self.assertEqual(len(landed.history), 2)
        self.assertIsNone(world.browser.cookie(SESSION))

    def test_an_email_outside_the_domains_is_refused_saying_why(self) -> None:
        world = make_world()
        world.idp.auto_login = "bob"
        landed = self.get_success(world.login())
        self.assertEqual(landed.status, 403)
        self.assertIn("bob@example.org", landed.text)
        self.assertIn("not allowed", landed.text)
        self.assertIsNone(world.browser.cookie(SESSION))

    def test_authenticated_emails_file_lets_a_listed_address_in(self) -> None:
        emails = Path(self.mktemp())
        emails.write_text("# allowed people\nbob@example.org\n", "utf-8")
        world = make_world(authenticated_emails_file=str(emails))
        world.idp.auto_login = "bob"
        landed = self.get_success(world.login("/inside"))
        self.assertEqual(landed.status, 200)
        self.assertEqual(landed.url, APP + "/inside")


# -- spoofing and what the upstream sees --------------------------------------------------


class QueryConstraintTests(GateTestCase):
    def test_allowed_groups_on_a_proxied_url_refuses_a_non_member(self) -> None:
        world = make_world()
        self.get_success(world.login())
        self.assertEqual(self.get_success(world.get("/page?allowed_groups=nope")).status, 403)
        self.assertEqual(self.get_success(world.get("/page?allowed_groups=staff")).status, 200)


class BugTests(GateTestCase):
    def test_a_bug_gives_a_generic_500_page_with_a_request_id(self) -> None:
        world = make_world()
        self.get_success(world.login())
        world.gate.authorizers = (BrokenAuthorizer(),)
        with capturedLogs() as events:
            page = self.get_success(world.get("/page", headers={"X-Request-Id": "req-42"}))
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(page.status, 500)
        self.assertIn("Something went wrong", page.text)
        self.assertIn("Request id: req-42", page.text)
        self.assertNotIn("ZeroDivisionError", page.text)
        self.assertNotIn("Traceback", page.text)
        logged = [e for e in events if "log_failure" in e]
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["request_id"], "req-42")

    def test_a_bug_answers_an_api_client_with_json(self) -> None:
        world = make_world()
        self.get_success(world.login())
        world.gate.authorizers = (BrokenAuthorizer(),)
        with capturedLogs():
            answer = self.get_success(world.get("/page", headers=JSON))
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(answer.status, 500)
        self.assertEqual(answer.json()["error"], "internal_error")


class SpoofingTests(GateTestCase):
    FORGED = {
        "X-Forwarded-Email": "mallory@example.com",
        "X_Forwarded_User": "mallory",
        "X-Auth-Request-User": "mallory",
        "X-Forwarded-Groups": "admins",
        "GAP-Auth": "mallory@example.com",
    }

    def test_forged_identity_headers_never_reach_the_upstream(self) -> None:
        world = make_world()
        self.get_success(world.login())
        headers = self.get_success(world.echo("/api", headers=self.FORGED))["headers"]
        self.assertEqual(headers["x-forwarded-email"], ["alice@example.com"])
        self.assertEqual(headers["x-forwarded-user"], ["1001"])
        self.assertEqual(headers["x-forwarded-groups"], ["admins,staff"])
        self.assertNotIn("x_forwarded_user", headers)
        self.assertNotIn("x-auth-request-user", headers)
        self.assertNotIn("gap-auth", headers)
        self.assertNotIn("mallory", json.dumps(headers))

    def test_forged_headers_without_a_session_get_the_sign_in_page_only(self) -> None:
        world = make_world()
        page = self.get_success(world.get("/api", headers=self.FORGED))
        self.assertEqual(page.status, 403)
        self.assertIn("Sign in", page.text)
        self.assertEqual(world.upstream.seen, [])

    def test_a_path_that_looks_like_another_host_is_not_offered_as_rd(self) -> None:
        world = make_world()
        page = self.get_success(world.get("//evil.com/x"))
        self.assertEqual(page.status, 403)
        self.assertIn('name="rd" value="/"', page.text)

    def test_forged_headers_on_auth_without_a_session_get_401(self) -> None:
        world = make_world()
        answer = self.get_success(world.get("/oauth2/auth", headers=self.FORGED))
        self.assertEqual(answer.status, 401)

    def test_the_upstream_never_sees_oauthgates_cookies_but_sees_the_others(self) -> None:
        world = make_world()
        self.get_success(world.login())
        world.browser.set_cookie(APP + "/", "theme=dark; Path=/")
        world.browser.set_cookie(APP + "/", f"{CSRF}=leftover; Path=/; Secure")
        world.browser.set_cookie(APP + "/", f"{SESSION}_extra=kept; Path=/")
        cookie = self.get_success(world.echo("/api"))["headers"]["cookie"]
        names = sorted(part.split("=")[0].strip() for part in ";".join(cookie).split(";"))
        self.assertEqual(names, [f"{SESSION}_extra", "theme"])


class ForwardedHeaderTests(GateTestCase):
    FORWARDED = {
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "gopher",
        "X-Forwarded-For": "6.6.6.6",
        "Forwarded": "for=6.6.6.6;host=evil.example",
    }

    def test_without_reverse_proxy_client_forwarding_headers_are_replaced(self) -> None:
        """An app that builds absolute links from X-Forwarded-Host must not be poisoned by
        whoever reaches oauthgate directly."""
        world = make_world()
        self.get_success(world.login())
        headers = self.get_success(world.echo("/api", headers=self.FORWARDED))["headers"]
        self.assertEqual(headers["x-forwarded-host"], ["app.test"])
        self.assertEqual(headers["x-forwarded-proto"], ["https"])
        self.assertNotIn("6.6.6.6", json.dumps(headers))
        self.assertNotIn("forwarded", headers)

    def test_with_reverse_proxy_the_front_proxys_headers_are_kept(self) -> None:
        world = make_world(reverse_proxy=True, redirect_url=APP + "/oauth2/callback")
        self.get_success(world.login())
        headers = self.get_success(
            world.echo("/api", headers={"X-Forwarded-Host": "app.example.com"})
        )["headers"]
        self.assertEqual(headers["x-forwarded-host"], ["app.example.com"])

    def test_a_real_ip_header_that_is_no_address_is_not_used(self) -> None:
        world = make_world(reverse_proxy=True)
        request = _request_with(b"X-Real-IP", b"1.2.3.4 - alice GET /admin 200")
        self.assertNotEqual(world.gate.client_ip(request), "1.2.3.4 - alice GET /admin 200")
        request = _request_with(b"X-Real-IP", b"[2001:db8::1]:443")
        self.assertEqual(world.gate.client_ip(request), "2001:db8::1")


def _request_with(name: bytes, value: bytes) -> Request:
    request = Request(DummyChannel())
    request.requestHeaders.setRawHeaders(name, [value])
    return request


class MalformedRequestTests(GateTestCase):
    def raw_get(self, world: GateWorld, path: str, headers: dict[bytes, bytes]) -> int:
        d = world.http.request(
            "GET", APP + path, headers=Headers({k: [v] for k, v in headers.items()})
        )
        return int(self.successResultOf(d).code)

    def test_headers_that_are_not_utf8_get_an_answer_not_a_500(self) -> None:
        world = make_world(reverse_proxy=True)
        self.assertEqual(self.raw_get(world, "/", {b"Accept": b"\xff\xfe"}), 401)
        self.assertEqual(
            self.raw_get(world, "/oauth2/sign_in", {b"X-Auth-Request-Redirect": b"/\xff"}), 200
        )
        self.assertEqual(self.raw_get(world, "/ping", {b"X-Real-IP": b"\xff"}), 200)
        self.assertEqual(self.raw_get(world, "/oauth2/auth", {b"X-Request-Id": b"\xff"}), 401)

    def test_absolute_form_requests_are_routed_by_their_path(self) -> None:
        request = _request_with(b"Host", b"app.test")
        request.uri = b"http://app.test/oauth2/auth?x=1"
        request.path = b"http://app.test/oauth2/auth"
        _to_origin_form(request)
        self.assertEqual((request.path, request.uri), (b"/oauth2/auth", b"/oauth2/auth?x=1"))


class TokenExposureTests(GateTestCase):
    def test_tokens_go_to_auth_request_answers_but_never_to_the_browser(self) -> None:
        world = make_world(pass_access_token=True, set_authorization_header=True)
        self.get_success(world.login())
        auth = self.get_success(world.get("/oauth2/auth"))
        self.assertIsNotNone(auth.header("x-auth-request-access-token"))
        self.assertTrue((auth.header("authorization") or "").startswith("Bearer "))
        page = self.get_success(world.get("/page"))
        self.assertEqual(page.status, 200)
        self.assertIsNone(page.header("x-auth-request-access-token"))
        self.assertIsNone(page.header("authorization"))
        self.assertEqual(page.header("x-auth-request-email"), "alice@example.com")

    def test_the_auth_answer_has_an_empty_body_with_a_length(self) -> None:
        world = make_world()
        self.get_success(world.login())
        auth = self.get_success(world.get("/oauth2/auth"))
        self.assertEqual((auth.status, auth.body), (202, b""))
        self.assertNotIn("text/html", auth.header("content-type") or "")


class StrictSameSiteTests(GateTestCase):
    def test_login_works_with_a_strict_session_cookie(self) -> None:
        """The provider's redirect back is cross-site: the CSRF cookie is Lax so it comes
        back, while the session cookie stays Strict."""
        world = make_world(cookie_samesite="strict")
        start = self.get_success(world.get("/oauth2/start?rd=/", follow=False))
        self.assertIn("SameSite=Lax", set_cookies(start)[CSRF])
        landed = self.get_success(world.login())
        self.assertEqual(landed.status, 200)
        self.assertIn("SameSite=Strict", set_cookies(callback_response(landed))[SESSION])


# -- API clients and the sign-in button ---------------------------------------------------


class SessionLifetimeTests(GateTestCase):
    def test_a_session_cookie_is_honoured_until_cookie_expire(self) -> None:
        world = make_world(cookie_expire=3000.0)
        self.get_success(world.login())
        value = world.browser.cookie(SESSION)
        world.clock.advance(2999)
        answer = self.get_success(
            world.get(
                "/oauth2/auth",
                browser=world.new_browser(),
                headers={"Cookie": f"{SESSION}={value}"},
            )
        )
        self.assertEqual(answer.status, 202)

    def test_a_session_cookie_older_than_cookie_expire_is_refused(self) -> None:
        """The browser drops it at Max-Age; a client that keeps it sends it anyway."""
        world = make_world(cookie_expire=3000.0)
        self.get_success(world.login())
        value = world.browser.cookie(SESSION)
        world.clock.advance(3001)
        self.assertIsNone(world.browser.cookie(SESSION))
        answer = self.get_success(
            world.get(
                "/oauth2/auth",
                browser=world.new_browser(),
                headers={"Cookie": f"{SESSION}={value}"},
            )
        )
        self.assertEqual(answer.status, 401)
        self.assertEqual(attributes(set_cookies(answer)[SESSION])["max-age"], "0")


class APIClientTests(GateTestCase):
    def test_a_json_client_without_session_gets_401_json(self) -> None:
        world = make_world()
        answer = self.get_success(world.get("/api", headers=JSON))
        self.assertEqual(answer.status, 401)
        self.assertEqual(answer.header("content-type"), "application/json")
        answer.json()

    def test_force_json_errors_answers_a_browser_with_401_json(self) -> None:
        world = make_world(force_json_errors=True)
        answer = self.get_success(world.get("/api"))
        self.assertEqual(answer.status, 401)
        self.assertEqual(answer.header("content-type"), "application/json")

    def test_skip_provider_button_sends_a_browser_straight_to_the_idp(self) -> None:
        world = make_world(skip_provider_button=True)
        first = self.get_success(world.get("/x?y=1", follow=False))
        self.assertEqual(first.status, 302)
        self.assertTrue((first.header("location") or "").startswith(IDP + "/authorize"))
        landed = self.get_success(world.get("/x?y=1"))
        self.assertEqual(landed.status, 200)
        self.assertEqual(landed.url, APP + "/x?y=1")


# -- sign in / sign out -------------------------------------------------------------------


class SignInOutTests(GateTestCase):
    def test_the_sign_in_page_clears_an_existing_session(self) -> None:
        world = make_world()
        self.get_success(world.login())
        page = self.get_success(world.get("/oauth2/sign_in"))
        self.assertEqual(attributes(set_cookies(page)[SESSION])["max-age"], "0")
        self.assertIsNone(world.browser.cookie(SESSION))

    def test_sign_out_clears_the_session_and_ends_it_at_the_provider_then_goes_to_rd(
        self,
    ) -> None:
        """RP-initiated logout: the provider's end_session_endpoint gets the id_token as a
        hint and sends the browser back to rd, made absolute."""
        world = make_world()
        self.get_success(world.login())
        session = self.get_success(world.session())
        assert session is not None
        out = self.get_success(world.get("/oauth2/sign_out?rd=/bye", follow=False))
        self.assertEqual(out.status, 302)
        location = out.header("location") or ""
        self.assertTrue(location.startswith(IDP + "/end_session?"), location)
        self.assertEqual(
            parse_qs(urlsplit(location).query),
            {
                "id_token_hint": [session.id_token],
                "post_logout_redirect_uri": [APP + "/bye"],
                "client_id": ["app"],
            },
        )
        self.assertEqual(attributes(set_cookies(out)[SESSION])["max-age"], "0")
        self.assertIsNone(world.browser.cookie(SESSION))
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 401)
        back = self.get_success(world.get(location, follow=False))
        self.assertEqual(back.header("location"), APP + "/bye")
        self.assertEqual(len(world.idp.end_session_requests), 1)

    def test_sign_out_refuses_a_foreign_rd(self) -> None:
        world = make_world()
        self.get_success(world.login())
        out = self.get_success(world.get("/oauth2/sign_out?rd=https://evil.com/", follow=False))
        location = out.header("location") or ""
        self.assertEqual(
            parse_qs(urlsplit(location).query)["post_logout_redirect_uri"], [APP + "/"]
        )

    def test_sign_out_without_an_end_session_endpoint_goes_to_rd(self) -> None:
        world = make_world(
            skip_oidc_discovery=True,
            login_url=IDP + "/authorize",
            redeem_url=IDP + "/token",
            oidc_jwks_url=IDP + "/jwks",
        )
        self.get_success(world.login())
        out = self.get_success(world.get("/oauth2/sign_out?rd=/bye", follow=False))
        self.assertEqual((out.status, out.header("location")), (302, "/bye"))
        self.assertEqual(world.idp.end_session_requests, [])

    def test_sign_out_without_a_session_goes_to_rd(self) -> None:
        world = make_world()
        out = self.get_success(world.get("/oauth2/sign_out?rd=/bye", follow=False))
        self.assertEqual((out.status, out.header("location")), (302, "/bye"))

    def test_sign_out_calls_the_backend_logout_url_with_the_id_token(self) -> None:
        logout = RecordingResource()
        world = make_world(backend_logout_url="https://logout.test/logout?token={id_token}")
        world.hosts.add_host("logout.test", logout)
        self.get_success(world.login())
        session = self.get_success(world.session())
        assert session is not None
        self.get_success(world.get("/oauth2/sign_out", follow=False))
        self.assertEqual(logout.requests, [("/logout", {"token": [session.id_token]})])

    def test_sign_out_completes_when_the_backend_logout_hangs(self) -> None:
        world = make_world(backend_logout_url="https://logout.test/logout?token={id_token}")
        world.hosts.add_host("logout.test", Hanging())
        self.get_success(world.login())
        out = Deferred.fromCoroutine(world.get("/oauth2/sign_out?rd=/bye", follow=False))
        world.clock.advance(9)
        world.flush()
        self.assertNoResult(out)
        world.clock.advance(1)
        world.flush()
        answer = self.successResultOf(out)
        self.assertEqual(answer.status, 302)
        self.assertTrue((answer.header("location") or "").startswith(IDP + "/end_session?"))
        self.assertIsNone(world.browser.cookie(SESSION))

    def test_sign_out_completes_when_the_backend_logout_fails(self) -> None:
        world = make_world(backend_logout_url="https://nowhere.test/logout?token={id_token}")
        self.get_success(world.login())
        answer = self.get_success(world.get("/oauth2/sign_out?rd=/bye", follow=False))
        self.assertEqual(answer.status, 302)
        self.assertTrue((answer.header("location") or "").startswith(IDP + "/end_session?"))

    def test_sign_out_without_a_session_calls_no_backend(self) -> None:
        logout = RecordingResource()
        world = make_world(backend_logout_url="https://logout.test/logout?token={id_token}")
        world.hosts.add_host("logout.test", logout)
        out = self.get_success(world.get("/oauth2/sign_out", follow=False))
        self.assertEqual(out.status, 302)
        self.assertEqual(logout.requests, [])


# -- refresh ------------------------------------------------------------------------------


class RefreshTests(GateTestCase):
    def logged_in(self, **changes: Any) -> GateWorld:
        world = make_world(**{"cookie_refresh": 60.0, **changes})
        self.assertEqual(self.get_success(world.login()).status, 200)
        self.assertEqual(grants(world.idp), ["authorization_code"])
        return world

    def test_a_session_younger_than_cookie_refresh_is_not_refreshed(self) -> None:
        world = self.logged_in()
        world.clock.advance(59)
        answer = self.get_success(world.get("/oauth2/auth"))
        self.assertEqual(answer.status, 202)
        self.assertNotIn(SESSION, set_cookies(answer))
        self.assertEqual(grants(world.idp), ["authorization_code"])

    def test_a_session_older_than_cookie_refresh_is_refreshed_on_the_next_request(self) -> None:
        world = self.logged_in()
        old = world.browser.cookie(SESSION)
        world.clock.advance(61)
        page = self.get_success(world.get("/page"))
        self.assertEqual(page.status, 200)
        self.assertEqual(grants(world.idp), ["authorization_code", "refresh_token"])
        self.assertIn(SESSION, set_cookies(page))
        self.assertNotEqual(world.browser.cookie(SESSION), old)
        # The new cookie is fresh: no refresh on the next request.
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 202)
        self.assertEqual(len(grants(world.idp)), 2)

    def test_refreshed_tokens_are_in_the_new_session(self) -> None:
        world = self.logged_in()
        before = self.get_success(world.session())
        world.clock.advance(61)
        self.get_success(world.get("/oauth2/auth"))
        after = self.get_success(world.session())
        assert before is not None and after is not None
        self.assertNotEqual(after.access_token, before.access_token)
        self.assertEqual(after.created_at, EPOCH + 61)
        self.assertEqual(after.email, "alice@example.com")

    def test_the_old_cookie_does_not_refresh_twice(self) -> None:
        world = self.logged_in()
        old = world.browser.cookie(SESSION)
        world.clock.advance(61)
        first = self.get_success(world.get("/oauth2/auth"))
        new = world.browser.cookie(SESSION)
        world.clock.advance(29)
        second = self.get_success(
            world.get(
                "/oauth2/auth", browser=world.new_browser(), headers={"Cookie": f"{SESSION}={old}"}
            )
        )
        self.assertEqual((first.status, second.status), (202, 202))
        self.assertEqual(grants(world.idp), ["authorization_code", "refresh_token"])
        # The late request gets the refreshed cookie too.
        self.assertEqual(set_cookies(second)[SESSION].split(";")[0], f"{SESSION}={new}")

    def test_concurrent_requests_with_the_old_cookie_refresh_once(self) -> None:
        """The second request waits for the first one's refresh instead of starting its own."""
        world = self.logged_in()
        old = world.browser.cookie(SESSION)
        world.hosts.add_host("idp.test", Delayed(world.idp.resource(), world.clock, 1.0))
        world.clock.advance(61)
        headers = {"Cookie": f"{SESSION}={old}"}
        a = Deferred.fromCoroutine(
            world.get("/oauth2/auth", browser=world.new_browser(), headers=headers)
        )
        b = Deferred.fromCoroutine(
            world.get("/oauth2/auth", browser=world.new_browser(), headers=headers)
        )
        self.assertNoResult(a)
        self.assertNoResult(b)
        world.clock.advance(1)
        world.flush()
        first, second = self.successResultOf(a), self.successResultOf(b)
        self.assertEqual((first.status, second.status), (202, 202))
        self.assertEqual(grants(world.idp), ["authorization_code", "refresh_token"])
        self.assertEqual(set_cookies(first)[SESSION], set_cookies(second)[SESSION])

    def test_after_the_grace_period_the_old_cookies_spent_refresh_token_ends_it(self) -> None:
        world = self.logged_in()
        old = world.browser.cookie(SESSION)
        world.clock.advance(61)
        self.get_success(world.get("/oauth2/auth"))
        world.clock.advance(31)
        late = self.get_success(
            world.get(
                "/oauth2/auth", browser=world.new_browser(), headers={"Cookie": f"{SESSION}={old}"}
            )
        )
        self.assertEqual(late.status, 401)
        self.assertEqual(
            grants(world.idp), ["authorization_code", "refresh_token", "refresh_token"]
        )
        # The browser that refreshed keeps its session.
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 202)

    def test_invalid_grant_on_refresh_ends_the_session(self) -> None:
        world = self.logged_in()
        world.idp.fail_refresh = "invalid_grant"
        world.clock.advance(61)
        answer = self.get_success(world.get("/oauth2/auth"))
        self.assertEqual(answer.status, 401)
        self.assertEqual(attributes(set_cookies(answer)[SESSION])["max-age"], "0")
        self.assertIsNone(world.browser.cookie(SESSION))

    def test_an_unavailable_idp_keeps_a_session_whose_token_is_still_valid(self) -> None:
        world = self.logged_in()
        world.idp.fail_refresh = 503
        world.clock.advance(61)
        answer = self.get_success(world.get("/oauth2/auth"))
        self.assertEqual(answer.status, 202)
        self.assertEqual(self.get_success(world.get("/page")).status, 200)

    def test_an_access_token_still_valid_is_not_refreshed_without_cookie_refresh(self) -> None:
        world = self.logged_in(cookie_refresh=0.0)
        world.clock.advance(3599)
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 202)
        self.assertEqual(grants(world.idp), ["authorization_code"])

    def test_an_expired_access_token_is_refreshed_even_without_cookie_refresh(self) -> None:
        world = self.logged_in(cookie_refresh=0.0)
        world.clock.advance(3601)
        answer = self.get_success(world.get("/oauth2/auth"))
        self.assertEqual(answer.status, 202)
        self.assertEqual(grants(world.idp), ["authorization_code", "refresh_token"])
        self.assertIn(SESSION, set_cookies(answer))

    def test_an_expired_access_token_whose_refresh_fails_now_is_401_but_keeps_the_cookie(
        self,
    ) -> None:
        """A blip at the IdP does not log anyone out: this request is refused, the next
        one tries again and succeeds once the IdP is back."""
        world = self.logged_in(cookie_refresh=0.0)
        world.idp.fail_refresh = 503
        world.clock.advance(3601)
        answer = self.get_success(world.get("/oauth2/auth"))
        self.assertEqual(answer.status, 401)
        self.assertIsNotNone(world.browser.cookie(SESSION))
        world.idp.fail_refresh = None
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 202)
        self.assertEqual(
            grants(world.idp), ["authorization_code", "refresh_token", "refresh_token"]
        )

    def test_a_session_without_refresh_token_lives_until_the_cookie_expires(self) -> None:
        """As in oauth2-proxy: with nothing to refresh with, the access token's expiry
        does not end the session (a --session-cookie-minimal session, say)."""
        world = self.logged_in(cookie_refresh=0.0, session_cookie_minimal=True)
        world.clock.advance(3601)
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 202)
        world.clock.advance(7 * 24 * 3600)
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 401)
        self.assertEqual(grants(world.idp), ["authorization_code"])

    def test_a_client_that_leaves_does_not_cancel_the_refresh(self) -> None:
        """With rotating refresh tokens, a refresh cut off half-way would lose the new
        token and end the session at the next refresh."""
        world = self.logged_in()
        world.hosts.add_host("idp.test", Delayed(world.idp.resource(), world.clock, 1.0))
        world.clock.advance(61)
        leaving = Deferred.fromCoroutine(world.get("/oauth2/auth"))
        self.assertNoResult(leaving)
        leaving.cancel()
        self.failureResultOf(leaving)
        world.clock.advance(1)
        world.flush()
        self.assertEqual(grants(world.idp), ["authorization_code", "refresh_token"])
        # The next request with the same old cookie uses the refresh that completed.
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 202)
        self.assertEqual(len(grants(world.idp)), 2)


# -- upstream failures --------------------------------------------------------------------


class UpstreamFailureTests(GateTestCase):
    def test_an_unreachable_upstream_gives_a_502_page(self) -> None:
        world = make_world(upstream_agent=RefusingAgent())
        landed = self.get_success(world.login("/page"))
        self.assertEqual(landed.status, 502)
        self.assertIn("could not be reached", landed.text)

    def test_a_silent_upstream_gives_504_after_upstream_timeout(self) -> None:
        world = make_world(upstream_agent=SilentAgent(), upstream_timeout=30.0)
        landed = Deferred.fromCoroutine(world.login("/page"))
        world.clock.advance(29)
        world.flush()
        self.assertNoResult(landed)
        world.clock.advance(1)
        world.flush()
        page = self.successResultOf(landed)
        self.assertEqual(page.status, 504)
        self.assertIn("did not answer in time", page.text)


# -- probes -------------------------------------------------------------------------------


class ProbeTests(GateTestCase):
    def test_ping_answers_ok_without_session(self) -> None:
        answer = self.get_success(make_world().get("/ping"))
        self.assertEqual((answer.status, answer.body), (200, b"OK"))

    def test_ready_answers_ok(self) -> None:
        answer = self.get_success(make_world().get("/ready"))
        self.assertEqual((answer.status, answer.body), (200, b"OK"))

    def test_robots_txt_disallows_everything(self) -> None:
        answer = self.get_success(make_world().get("/robots.txt"))
        self.assertEqual(answer.status, 200)
        self.assertIn("Disallow: /", answer.text)

    def test_an_unknown_oauth2_endpoint_is_a_404_page(self) -> None:
        answer = self.get_success(make_world().get("/oauth2/nonexistent"))
        self.assertEqual(answer.status, 404)
        self.assertIn("text/html", answer.header("content-type") or "")


# -- logging ------------------------------------------------------------------------------


def _event_texts(events: Sequence[LogEvent]) -> list[str]:
    """Each event formatted and as JSON, plus every value it carries (but the emitting objects)."""
    texts = []
    for event in events:
        texts.append(formatEvent(event))
        texts.append(eventAsJSON(dict(event)))
        for key, value in event.items():
            if key not in ("log_logger", "log_source"):
                texts.append(repr(value))
                texts.append(str(value))
    return texts


class LoggingTests(GateTestCase):
    def test_login_and_refresh_log_no_secrets_and_log_the_success(self) -> None:
        with capturedLogs() as events:
            world = make_world(cookie_refresh=60.0)
            start = self.get_success(world.get("/oauth2/start?rd=/", follow=False))
            csrf = world.browser.cookie(CSRF)
            authorize = start.header("location")
            assert authorize is not None
            callback = self.get_success(world.callback_url(authorize))
            code = parse_qs(urlsplit(callback).query)["code"][0]
            self.get_success(world.get(callback))
            first_cookie = world.browser.cookie(SESSION)
            first = self.get_success(world.session())
            world.clock.advance(61)
            self.assertEqual(self.get_success(world.get("/page")).status, 200)
            second = self.get_success(world.session())
        assert first is not None and second is not None and csrf and first_cookie
        self.assertEqual(grants(world.idp), ["authorization_code", "refresh_token"])
        secrets = {
            "client secret": CLIENT_SECRET,
            "cookie secret": COOKIE_SECRET,
            "code": code,
            "csrf cookie": csrf,
            "first cookie": first_cookie,
            "second cookie": world.browser.cookie(SESSION) or "?",
        }
        for n, s in enumerate((first, second)):
            secrets[f"access token {n}"] = s.access_token
            secrets[f"id token {n}"] = s.id_token
            secrets[f"refresh token {n}"] = s.refresh_token
        texts = _event_texts(events)
        for name, secret in secrets.items():
            leaks = [t for t in texts if secret in t]
            self.assertEqual(leaks, [], f"the {name} was logged")
        successes = [
            e
            for e in events
            if e.get("status") == "AuthSuccess" and e.get("user") == "alice@example.com"
        ]
        self.assertEqual(len(successes), 1, [formatEvent(e) for e in events])
        self.assertEqual(successes[0].get("log_category"), "auth")

    def test_refused_logins_and_sessions_log_no_secrets(self) -> None:
        """Failure paths log reasons; never the code, tokens or cookies they handled."""
        seen: dict[str, str] = {"client secret": CLIENT_SECRET}
        with capturedLogs() as events:
            world = make_world(cookie_refresh=60.0)
            for switch in ("wrong_audience", "bad_signature", "expired_tokens"):
                setattr(world.idp, switch, True)
                callback = self.get_success(
                    world.callback_url(self.get_success(world.begin_login()))
                )
                seen[f"code ({switch})"] = parse_qs(urlsplit(callback).query)["code"][0]
                seen[f"csrf ({switch})"] = world.browser.cookie(CSRF) or "?"
                self.assertEqual(self.get_success(world.get(callback)).status, 403)
                setattr(world.idp, switch, False)
            world.idp.fail_token_endpoint = 503
            self.assertEqual(self.get_success(world.login()).status, 502)
            world.idp.fail_token_endpoint = None
            self.get_success(world.login())
            session = self.get_success(world.session())
            assert session is not None
            cookie = world.browser.cookie(SESSION) or "?"
            seen.update(cookie=cookie, access=session.access_token, refresh=session.refresh_token)
            seen["id token"] = session.id_token
            tampered = cookie[:-6] + ("A" if cookie[-6] != "A" else "B") + cookie[-5:]
            seen["tampered cookie"] = tampered
            stranger = world.new_browser()
            self.get_success(
                world.get(
                    "/oauth2/auth", browser=stranger, headers={"Cookie": f"{SESSION}={tampered}"}
                )
            )
            world.idp.fail_refresh = "invalid_grant"
            world.clock.advance(61)
            self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 401)
        texts = _event_texts(events)
        for name, secret in seen.items():
            self.assertEqual([t for t in texts if secret in t], [], f"the {name} was logged")
        failures = [e for e in events if e.get("status") == "AuthFailure"]
        self.assertEqual(len(failures), 3, [formatEvent(e) for e in events])


# -- the resource: running the handler ----------------------------------------------------


class _StubGate:
    """What GateResource needs of a gate, with ``handler`` as the request's way."""

    def __init__(self, handler: Any) -> None:
        self.clock = Clock()
        self.metrics = NO_METRICS
        self._handler = handler

    async def handle(self, request: Request) -> None:
        await self._handler(request)

    def render_error(self, request: Request, error: AuthError) -> None:
        request.setResponseCode(error.status)
        request.finish()


def _answer(request: Request, code: int) -> None:
    request.setResponseCode(code)
    request.finish()


class GateResourceTests(GateTestCase):
    """Handlers run at once up to their first wait; Twisted drives the rest."""

    def render(self, handler: Any) -> Request:
        request = Request(DummyChannel())
        request.method = request.path = b"/x"
        resource = GateResource(_StubGate(handler))  # type: ignore[arg-type]
        self.assertEqual(resource.render(request), NOT_DONE_YET)
        return request

    def test_a_request_answered_at_once_is_finished_when_render_returns(self) -> None:
        async def handler(request: Request) -> None:
            _answer(request, 202)

        request = self.render(handler)
        self.assertTrue(request.finished)
        self.assertEqual(request.code, 202)

    def test_an_error_raised_at_once_gets_its_page(self) -> None:
        async def handler(request: Request) -> None:
            raise AuthError(404, "not_found", "There is nothing here.")

        with capturedLogs():
            request = self.render(handler)
        self.assertTrue(request.finished)
        self.assertEqual(request.code, 404)

    def test_a_waiting_handler_is_resumed_with_each_result(self) -> None:
        first: Deferred[int] = Deferred()
        second: Deferred[int] = Deferred()

        async def handler(request: Request) -> None:
            _answer(request, await first + await second)

        request = self.render(handler)
        self.assertFalse(request.finished)
        first.callback(200)
        self.assertFalse(request.finished)
        second.callback(4)
        self.assertTrue(request.finished)
        self.assertEqual(request.code, 204)

    def test_a_waiting_handler_gets_the_failure_it_waits_for(self) -> None:
        waited: Deferred[int] = Deferred()

        async def handler(request: Request) -> None:
            try:
                await waited
            except ValueError as e:
                _answer(request, int(str(e)))

        request = self.render(handler)
        waited.errback(ValueError("503"))
        self.assertEqual(request.code, 503)

    def test_a_failure_after_a_wait_gets_its_page(self) -> None:
        waited: Deferred[None] = Deferred()

        async def handler(request: Request) -> None:
            await waited
            raise AuthError(403, "denied", "No.")

        request = self.render(handler)
        with capturedLogs():
            waited.callback(None)
        self.assertEqual(request.code, 403)

    def test_a_waiting_handler_is_cancelled_when_the_client_goes_away(self) -> None:
        waited: Deferred[None] = Deferred()
        seen: list[str] = []

        async def handler(request: Request) -> None:
            try:
                await waited
            except CancelledError:
                seen.append("cancelled")
                raise

        request = self.render(handler)
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(seen, ["cancelled"])


class AdoptedSessionTests(GateTestCase):
    def test_a_session_from_before_provider_ids_gets_the_id_every_time(self) -> None:
        world = make_world()
        gate = world.gate
        only = gate.providers[0].id
        old = Session(user="1001", email="alice@example.com", created_at=EPOCH)
        first = gate._recognised(old)
        self.assertEqual(first, attrs.evolve(old, provider=only))
        self.assertEqual(gate._recognised(attrs.evolve(old)), first)
        self.assertEqual(gate._recognised(old), first)
        self.assertIsNone(gate._recognised(attrs.evolve(old, provider="removed")))

"""A conformance suite for identity providers: what every ``IProvider`` must do.

Mix :class:`ProviderConformance` into a trial ``SynchronousTestCase`` and write
``make_subject``: build your provider over a fake of its HTTP API on the memory client
(on the ``clock`` you are given) and describe how to log in to it. You inherit one test
per contract; each is named for the contract it checks::

    from twisted.internet.task import Clock
    from twisted.trial.unittest import SynchronousTestCase

    from oauthgate.testing import ByHost, memory_http_client
    from oauthgate.testing.conformance import ProviderConformance, ProviderSubject, provider_config

    from acme_provider import factory
    from acme_provider.tests.fake import FakeAcmeAPI


    class AcmeConformanceTests(ProviderConformance, SynchronousTestCase):
        def make_subject(self, clock: Clock) -> ProviderSubject:
            api = FakeAcmeAPI(clock)  # a twisted.web Resource answering like the real API
            http = memory_http_client(ByHost({"acme.test": api}), clock=clock)
            config = provider_config(provider="acme", client_id="app", client_secret="s")
            return ProviderSubject(
                provider=factory.build(config, http, clock),
                http=http,
                code=api.issue_code("alice"),
                redirect_uri="https://app.test/oauth2/callback",
                email="alice@example.com",
                break_api=api.answer_503,  # from now on every API call fails
                refreshes=True,
            )

The suite logs in as the gate does: ``redeem(code, code_verifier, redirect_uri, nonce)``
with the subject's ``code_verifier`` (None unless set) and ``nonce`` (:data:`NONCE`
unless set; an OpenID Connect fake must issue the code for it), then ``enrich`` once.
Every test gets a fresh subject, so a single-use code is fine. The clock reads
:data:`START` when ``make_subject`` is called, and tests advance it. Requests are counted
through ``http.request``, so the provider must send them through ``subject.http``.

For an OpenID Connect provider, :class:`oauthgate.testing.FakeIdP` is the fake:
``code=idp.issue_code("alice", client_id=..., redirect_uri=..., nonce=NONCE)`` and
``break_api`` setting ``idp.fail_token_endpoint = 503``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from oauthgate.config.options import Config
from oauthgate.errors import ProviderError
from oauthgate.interfaces import IProvider
from oauthgate.session import Session
from oauthgate.testing.harness import MemoryHTTPClient

__all__ = [
    "CODE_CHALLENGE",
    "NONCE",
    "START",
    "STATE",
    "ProviderConformance",
    "ProviderSubject",
    "provider_config",
]

T = TypeVar("T")

START = 1_700_000_000.0
"""What the clock reads (POSIX seconds) when ``make_subject`` is called."""
STATE = "conformance-state-9c1d"
"""The ``state`` the suite asks login URLs for."""
NONCE = "conformance-nonce-4b7a"
"""The ``nonce`` the suite redeems codes with, unless the subject says otherwise."""
CODE_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
"""An S256 code challenge (RFC 7636's example) the suite asks login URLs for."""

_SETTLE_SECONDS = 60  # how long (on the clock) a call may wait for its fake API to answer


def provider_config(**options: Any) -> Config:
    """A configuration as oauthgate passes it to ``IProviderFactory.build``.

    ``options`` are oauth2-proxy's cfg keys (``client_id``, ``login_url``, ...); every
    other option keeps its default. Raises TypeError for a key that is not an option.
    """
    return attrs.evolve(Config(), **options)


@attrs.frozen
class ProviderSubject:
    """A provider under test and what the suite needs to log in to it.

    ``code`` is a code the fake API redeems for the user whose address is ``email``,
    bound to ``redirect_uri`` (and to ``code_verifier`` and ``nonce`` when the provider
    uses them). ``break_api`` makes every later API call fail (answer 503, say).
    ``refreshes`` says whether this provider refreshes sessions that have a refresh token.
    """

    provider: IProvider
    http: MemoryHTTPClient
    code: str = attrs.field(repr=False)
    redirect_uri: str
    email: str
    break_api: Callable[[], None]
    refreshes: bool = False
    nonce: str = NONCE
    code_verifier: str | None = attrs.field(default=None, repr=False)


@attrs.define
class _Run:
    """One test's subject, its clock, and the requests its provider sent."""

    subject: ProviderSubject
    clock: Clock
    requests: list[tuple[str, str]] = attrs.Factory(list)


if TYPE_CHECKING:

    class _Base(SynchronousTestCase):
        """What the mixin uses of its TestCase, typed (trial's assertions are not)."""

        def assertEqual(self, first: object, second: object, msg: object = None) -> None: ...
        def assertIn(self, needle: object, haystack: object, msg: object = None) -> None: ...
        def assertNotIn(self, needle: object, haystack: object, msg: object = None) -> None: ...
        def assertTrue(self, condition: object, msg: object = None) -> None: ...
        def assertIsInstance(
            self, instance: object, classOrTuple: Any, msg: object = None
        ) -> None: ...
        def patch(self, obj: object, attribute: str, value: object) -> None: ...

else:
    _Base = object


class ProviderConformance(_Base):
    """Mixin for ``SynchronousTestCase``: the contracts of ``IProvider``, as tests.

    Subclasses implement :meth:`make_subject`.
    """

    def make_subject(self, clock: Clock) -> ProviderSubject:
        """The provider under test, built on ``clock`` over a fake of its API."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_subject")

    # --- the contracts -------------------------------------------------------------------

    def test_provider_provides_IProvider(self) -> None:
        run = self._start()
        self.assertTrue(verifyObject(IProvider, run.subject.provider))
        self.assertIsInstance(run.subject.provider.id, str)
        self.assertIsInstance(run.subject.provider.display_name, str)

    def test_authorize_url_carries_client_id_redirect_uri_response_type_and_state(self) -> None:
        run = self._start()
        url, params = self._authorize_url(run)
        self.assertIn(urlsplit(url).scheme, ("http", "https"), url)
        self.assertTrue(urlsplit(url).netloc, url)
        self.assertEqual(len(params.get("client_id", [])), 1, url)
        self.assertTrue(params["client_id"][0], url)
        self.assertEqual(params.get("redirect_uri"), [run.subject.redirect_uri], url)
        self.assertEqual(params.get("response_type"), ["code"], url)
        self.assertEqual(params.get("state"), [STATE], url)

    def test_authorize_url_carries_the_pkce_code_challenge_and_method(self) -> None:
        run = self._start()
        url, params = self._authorize_url(run, code_challenge=CODE_CHALLENGE, method="S256")
        self.assertEqual(params.get("code_challenge"), [CODE_CHALLENGE], url)
        self.assertEqual(params.get("code_challenge_method"), ["S256"], url)

    def test_extra_params_cannot_replace_state_or_redirect_uri(self) -> None:
        run = self._start()
        url, params = self._authorize_url(
            run,
            extra=[("state", "attacker-state"), ("redirect_uri", "https://evil.test/callback")],
        )
        self.assertEqual(params.get("state"), [STATE], url)
        self.assertEqual(params.get("redirect_uri"), [run.subject.redirect_uri], url)

    def test_redeem_then_enrich_gives_a_session_for_the_user_from_this_provider(self) -> None:
        run = self._start()
        run.clock.advance(7)
        session = self._login(run)
        self.assertIsInstance(session, Session)
        self.assertEqual(session.email, run.subject.email)
        self.assertEqual(session.provider, run.subject.provider.id)
        self.assertEqual(session.created_at, run.clock.seconds())

    def test_enrich_is_idempotent_and_asks_the_api_nothing_more(self) -> None:
        run = self._start()
        session = self._login(run)
        sent = len(run.requests)
        again = self._complete(run, run.subject.provider.enrich(session))
        self.assertEqual(again, session)
        self.assertEqual(run.requests[sent:], [], "a second enrich sent requests")

    def test_refresh_without_a_refresh_token_is_none(self) -> None:
        run = self._start()
        session = attrs.evolve(self._login(run), refresh_token="")
        self.assertIsNone(self._complete(run, run.subject.provider.refresh(session)))

    def test_refresh_gives_a_new_session_only_when_the_provider_refreshes(self) -> None:
        run = self._start()
        session = self._login(run)
        run.clock.advance(60)
        refreshed = self._complete(run, run.subject.provider.refresh(session))
        if not run.subject.refreshes:
            self.assertIsNone(refreshed)
            return
        if refreshed is None:
            self.fail("refresh gave None for a session with a refresh token")
        self.assertEqual(refreshed.email, run.subject.email)
        self.assertEqual(refreshed.provider, run.subject.provider.id)
        self.assertEqual(refreshed.created_at, run.clock.seconds())

    def test_authorize_answers_a_bool(self) -> None:
        run = self._start()
        session = self._login(run)
        self.assertIsInstance(self._complete(run, run.subject.provider.authorize(session)), bool)

    def test_a_broken_api_makes_the_login_fail_with_a_provider_error_only(self) -> None:
        run = self._start()
        run.subject.break_api()
        with capturedLogs() as events:
            failure = self._fail(run, self._login_flow(run))
        self.assertIsInstance(
            failure.value,
            ProviderError,
            f"expected a ProviderError, got {failure.getTraceback()}",
        )
        self.assertNotIn(run.subject.code, str(failure.value))
        self._assert_not_logged(events, [run.subject.code])

    def test_logs_never_contain_the_code_or_tokens(self) -> None:
        run = self._start()
        provider = run.subject.provider
        secrets = [run.subject.code]
        if run.subject.code_verifier:
            secrets.append(run.subject.code_verifier)
        with capturedLogs() as events:
            self._authorize_url(run, code_challenge=CODE_CHALLENGE, method="S256")
            session = self._login(run)
            self._complete(run, provider.enrich(session))
            self._complete(run, provider.authorize(session))
            self._complete(run, provider.logout_url(session, "https://app.test/"))
            refreshed = self._complete(run, provider.refresh(session))
        for each in (session, refreshed):
            if each is not None:
                secrets.extend(t for t in _tokens(each) if t)
        self._assert_not_logged(events, secrets)

    # --- helpers -------------------------------------------------------------------------

    def _start(self) -> _Run:
        clock = Clock()
        clock.advance(START)
        subject = self.make_subject(clock)
        run = _Run(subject, clock)
        original = subject.http.request

        def counting(method: str, url: Any, **kwargs: Any) -> Deferred[Any]:
            run.requests.append((method, str(url)))
            return original(method, url, **kwargs)

        self.patch(subject.http, "request", counting)
        return run

    def _authorize_url(
        self,
        run: _Run,
        *,
        code_challenge: str | None = None,
        method: str | None = None,
        extra: Iterable[tuple[str, str]] = (),
    ) -> tuple[str, dict[str, list[str]]]:
        url = self._complete(
            run,
            run.subject.provider.authorize_url(
                STATE,
                run.subject.nonce,
                code_challenge,
                method,
                run.subject.redirect_uri,
                list(extra),
            ),
        )
        self.assertIsInstance(url, str)
        return url, parse_qs(urlsplit(url).query, keep_blank_values=True)

    async def _login_flow(self, run: _Run) -> Session:
        subject = run.subject
        session = await subject.provider.redeem(
            subject.code, subject.code_verifier, subject.redirect_uri, subject.nonce
        )
        return await subject.provider.enrich(session)

    def _login(self, run: _Run) -> Session:
        return self._complete(run, self._login_flow(run))

    def _settle(self, run: _Run, awaitable: Awaitable[T]) -> Deferred[T]:
        """Run ``awaitable``; give it up to a minute of the clock (request timeouts)."""

        async def wait() -> T:
            return await awaitable

        d = Deferred.fromCoroutine(wait())
        for _ in range(_SETTLE_SECONDS):
            if d.called:
                return d
            run.clock.advance(1)
            run.subject.http.flush()
        if not d.called:
            d.cancel()
            d.addErrback(lambda _: None)
            self.fail(f"{awaitable!r} did not complete within {_SETTLE_SECONDS} s of the clock")
        return d

    def _complete(self, run: _Run, awaitable: Awaitable[T]) -> T:
        return self.successResultOf(self._settle(run, awaitable))

    def _fail(self, run: _Run, awaitable: Awaitable[Any]) -> Failure:
        outcome: list[Any] = []
        self._settle(run, awaitable).addBoth(outcome.append)
        if not isinstance(outcome[0], Failure):
            self.fail(f"expected a failure, got {outcome[0]!r}")
        failure: Failure = outcome[0]
        return failure

    def _assert_not_logged(self, events: Sequence[Mapping[str, Any]], secrets: list[str]) -> None:
        for event in events:
            text = _event_text(event)
            for secret in secrets:
                if secret and secret in text:
                    self.fail(f"a log event contains a code or token: {event.get('log_format')!r}")


def _tokens(session: Session) -> tuple[str, str, str]:
    return session.access_token, session.refresh_token, session.id_token


def _event_text(event: Mapping[str, Any]) -> str:
    """Everything an observer could write for ``event``: its text and every field."""
    parts = [formatEvent(dict(event))]
    for key, value in event.items():
        if key in ("log_logger", "log_source", "log_failure"):
            continue
        parts.append(str(value))
        parts.append(repr(value))
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        parts.append(failure.getTraceback())
    return "\n".join(parts)

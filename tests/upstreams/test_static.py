"""Tests for oauthgate.upstreams.static."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from oauthgate.interfaces import IUpstream
from oauthgate.upstreams.spec import UpstreamSpec
from oauthgate.upstreams.static import StaticUpstream


class StaticUpstreamTests(SynchronousTestCase):
    def test_answers_its_code_with_an_empty_body(self) -> None:
        upstream = StaticUpstream.from_spec(
            UpstreamSpec(id="ok", path="/health", static=True, static_code=202)
        )
        self.assertTrue(verifyObject(IUpstream, upstream))
        request = DummyRequest([b"health"])
        request.method = b"POST"
        self.successResultOf(Deferred.fromCoroutine(upstream.forward(request, ())))  # type: ignore[arg-type]
        self.assertEqual(request.responseCode, 202)
        self.assertEqual(request.written, [])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [b"0"])
        self.assertEqual(request.finished, 1)

    def test_matches_like_any_route(self) -> None:
        self.assertTrue(StaticUpstream("s", "/").matches("/any/thing"))
        self.assertFalse(StaticUpstream("s", "/ok").matches("/ok/x"))
        self.assertTrue(StaticUpstream("s", "^/o+k$", regex=True).matches("/oook"))

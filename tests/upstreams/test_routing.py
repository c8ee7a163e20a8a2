"""Tests for oauthgate.upstreams.routing: which upstream serves a request, and what it is sent."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from oauthgate.interfaces import IUpstream
from oauthgate.upstreams.routing import (
    BoundUpstream,
    Redirect,
    Route,
    RoutingTable,
    expand_target,
    remove_dot_segments,
    route,
    spec_problems,
)
from oauthgate.upstreams.spec import UpstreamSpec


class Recorder:
    """A routable upstream that records what it was asked to forward."""

    def __init__(self, spec: UpstreamSpec) -> None:
        self.id = spec.id
        self.path = spec.path
        self.targets: list[bytes | None] = []

    def matches(self, path: str) -> bool:
        return path.startswith(self.path)

    async def forward(
        self, request: Any, inject: Sequence[tuple[bytes, bytes]], *, target: bytes | None = None
    ) -> None:
        self.targets.append(target)


@attrs.define
class Req:
    uri: bytes

    @property
    def path(self) -> bytes:
        return self.uri.partition(b"?")[0]


def table(*specs: UpstreamSpec, raw: bool = False) -> RoutingTable:
    return RoutingTable([Route.of(s, Recorder(s)) for s in specs], proxy_raw_path=raw)


def prefix(path: str) -> UpstreamSpec:
    return UpstreamSpec(id=path, path=path, uri="http://u" + path)


def chosen(routes: RoutingTable, uri: bytes) -> tuple[str, bytes | None]:
    """(id of the upstream chosen for ``uri``, the target it is sent); ("301", location)."""
    selected = routes.select(Req(uri))  # type: ignore[arg-type]
    if selected is None:
        return ("none", None)
    if isinstance(selected, Redirect):
        return ("301", selected.location)
    assert isinstance(selected, BoundUpstream)
    return (selected.id, selected.target)


class SelectTests(SynchronousTestCase):
    def test_the_longest_matching_prefix_wins_and_the_uri_is_sent_unchanged(self) -> None:
        routes = table(prefix("/"), prefix("/api/"), prefix("/api/v2/"))
        self.assertEqual(chosen(routes, b"/api/v2/x?q=1"), ("/api/v2/", None))
        self.assertEqual(chosen(routes, b"/api/v1"), ("/api/", None))
        self.assertEqual(chosen(routes, b"/apiary"), ("/", None))
        self.assertEqual([u.id for u in routes], ["/api/v2/", "/api/", "/"])

    def test_a_path_without_trailing_slash_serves_only_itself(self) -> None:
        routes = table(prefix("/health"))
        self.assertEqual(chosen(routes, b"/health"), ("/health", None))
        self.assertEqual(chosen(routes, b"/health/x"), ("none", None))

    def test_a_missing_trailing_slash_is_redirected_when_nothing_else_matches(self) -> None:
        routes = table(prefix("/app/"))
        self.assertEqual(chosen(routes, b"/app?x=1"), ("301", b"/app/?x=1"))
        self.assertEqual(chosen(routes, b"/ap"), ("none", None))
        with_root = table(prefix("/"), prefix("/app/"))
        self.assertEqual(chosen(with_root, b"/app"), ("/", None))

    def test_rewrite_routes_are_tried_first_and_rewrite_the_path(self) -> None:
        rewrite = UpstreamSpec(id="v1", path="^/api/(.*)$", rewrite_target="/v1/$1", uri="http://u")
        routes = table(prefix("/api/"), rewrite)
        self.assertEqual(chosen(routes, b"/api/users/7?full=1"), ("v1", b"/v1/users/7?full=1"))
        self.assertEqual([u.id for u in routes], ["v1", "/api/"])

    def test_a_pattern_without_rewrite_keeps_the_uri(self) -> None:
        routes = table(UpstreamSpec(id="p", path="^/(a|b)/", uri="http://u"), prefix("/"))
        self.assertEqual(chosen(routes, b"/b/x?y"), ("p", None))
        self.assertEqual(chosen(routes, b"/c/x"), ("/", None))

    def test_rewritten_paths_are_encoded_again(self) -> None:
        rewrite = UpstreamSpec(id="r", path="^/f/(.*)", rewrite_target="/files/$1", uri="http://u")
        self.assertEqual(chosen(table(rewrite), b"/f/a%20b%25c%2Fd"), ("r", b"/files/a%20b%25c/d"))
        self.assertEqual(
            chosen(table(rewrite, raw=True), b"/f/a%20b%25c%2Fd"), ("r", b"/files/a%20b%25c%2Fd")
        )

    def test_paths_are_matched_decoded_unless_the_raw_path_is_proxied(self) -> None:
        specs = (prefix("/"), prefix("/a/b/"))
        self.assertEqual(chosen(table(*specs), b"/a%2Fb/x"), ("/a/b/", None))
        self.assertEqual(chosen(table(*specs, raw=True), b"/a%2Fb/x"), ("/", None))

    def test_dot_segments_are_redirected_to_the_clean_path(self) -> None:
        routes = table(prefix("/"))
        self.assertEqual(chosen(routes, b"/a/../b?x=1"), ("301", b"/b?x=1"))
        self.assertEqual(chosen(routes, b"/a/%2e%2E/b"), ("301", b"/b"))
        self.assertEqual(chosen(routes, b"/a%2F..%2Fb"), ("301", b"/b"))
        self.assertEqual(chosen(routes, b"/a/./b/."), ("301", b"/a/b/"))
        # with the raw path, only literal dot segments count
        raw = table(prefix("/"), raw=True)
        self.assertEqual(chosen(raw, b"/a/%2e%2e/b"), ("/", None))
        self.assertEqual(chosen(raw, b"/a/../b"), ("301", b"/b"))

    def test_a_redirect_never_leaves_the_site(self) -> None:
        routes = table(prefix("/"))
        self.assertEqual(chosen(routes, b"/..//evil.example/x"), ("301", b"/evil.example/x"))
        self.assertEqual(chosen(routes, b"/x/../\\evil.example"), ("301", b"/%5Cevil.example"))

    def test_absolute_form_requests_are_routed_by_their_path(self) -> None:
        self.assertEqual(chosen(table(prefix("/a/")), b"http://h/a/x?y"), ("/a/", None))

    def test_the_bound_upstream_forwards_with_the_target(self) -> None:
        rewrite = UpstreamSpec(id="r", path="^/x(.*)", rewrite_target="/y$1", uri="http://u")
        routes = table(rewrite)
        selected = routes.select(Req(b"/x1"))  # type: ignore[arg-type]
        assert selected is not None
        self.assertTrue(verifyObject(IUpstream, selected))
        self.successResultOf(_run(selected.forward(Req(b"/x1"), ())))  # type: ignore[arg-type]
        recorder = routes.routes[0].upstream
        assert isinstance(recorder, Recorder)
        self.assertEqual(recorder.targets, [b"/y1"])

    def test_a_redirect_answers_301_with_an_empty_body(self) -> None:
        redirect = Redirect(b"/app/")
        self.assertTrue(verifyObject(IUpstream, redirect))
        request = DummyRequest([b""])
        self.successResultOf(_run(redirect.forward(request, ())))  # type: ignore[arg-type]
        self.assertEqual(request.responseCode, 301)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"location"), [b"/app/"])
        self.assertEqual(request.finished, 1)

    def test_a_plain_sequence_of_upstreams_is_tried_in_order(self) -> None:
        first, second = Recorder(prefix("/a/")), Recorder(prefix("/"))
        request = Req(b"/a/x")
        self.assertIs(route([first, second], request), first)  # type: ignore[arg-type, list-item]


async def _wait(awaitable: Any) -> None:
    await awaitable


def _run(awaitable: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(_wait(awaitable))


class ExpandTests(SynchronousTestCase):
    """Go's Regexp.ReplaceAllString, which oauth2-proxy's rewriteTarget uses."""

    def expand(self, pattern: str, path: str, template: str) -> str:
        return expand_target(re.compile(pattern), path, template)

    def test_numbered_and_named_groups(self) -> None:
        self.assertEqual(self.expand(r"^/a/(\d+)/(\w+)", "/a/7/x", "/b/$2/$1"), "/b/x/7")
        self.assertEqual(self.expand(r"^/a/(?P<id>\d+)", "/a/7", "/b/${id}/"), "/b/7/")
        self.assertEqual(self.expand(r"^/a/(\d+)", "/a/7", "/b/${1}x"), "/b/7x")

    def test_a_name_runs_as_far_as_it_can_as_in_go(self) -> None:
        self.assertEqual(self.expand(r"^/a/(\d+)", "/a/7", "/b/$1x"), "/b/")

    def test_unknown_groups_are_empty_and_dollar_dollar_is_a_dollar(self) -> None:
        self.assertEqual(self.expand(r"^/(a)", "/a", "/$9/$nope/$$/$"), "///$/$")

    def test_every_match_is_replaced_and_the_rest_kept(self) -> None:
        self.assertEqual(self.expand("o", "/foo/bot", "0"), "/f00/b0t")
        self.assertEqual(self.expand(".*", "/abc", "x"), "x")

    def test_go_style_named_groups_compile(self) -> None:
        routes = table(
            UpstreamSpec(id="g", path="^/u/(?<user>[a-z]+)", rewrite_target="/users/${user}")
        )
        self.assertEqual(chosen(routes, b"/u/bob"), ("g", b"/users/bob"))


class DotSegmentTests(SynchronousTestCase):
    def test_rfc_3986_examples(self) -> None:
        cases = {
            "/a/b/c/./../../g": "/a/g",
            "/mid/content=5/../6": "/mid/6",
            "/../x": "/x",
            "/a/..": "/",
            "/a//b": "/a//b",
            "/plain": "/plain",
        }
        for given, expected in cases.items():
            self.assertEqual(remove_dot_segments(given), expected, given)


class SpecProblemTests(SynchronousTestCase):
    def test_good_specs_have_no_problems(self) -> None:
        specs = [
            prefix("/"),
            UpstreamSpec(id="docs", path="/docs/", uri="file:///srv/docs"),
            UpstreamSpec(id="ok", path="/ok", static=True, static_code=202),
            UpstreamSpec(id="sock", path="/s/", uri="unix:///run/a.sock"),
            UpstreamSpec(id="re", path="^/r/(.*)", rewrite_target="/$1", uri="https://h"),
        ]
        self.assertEqual(spec_problems(specs), [])

    def test_each_problem_is_one_line_naming_the_upstream(self) -> None:
        specs = [
            prefix("/"),
            UpstreamSpec(id="/", path="/", uri="http://other"),
            UpstreamSpec(id="dup", path="/a/", uri="http://h"),
            UpstreamSpec(id="dup", path="/b/", uri="http://h"),
            UpstreamSpec(id="re", path="^/(", rewrite_target="/x", uri="http://h"),
            UpstreamSpec(id="rel", path="app/", uri="http://h"),
            UpstreamSpec(id="st", path="/st", static=True, static_code=42),
            UpstreamSpec(id="ftp", path="/f/", uri="ftp://h/"),
            UpstreamSpec(id="nohost", path="/n/", uri="http:///x"),
            UpstreamSpec(id="sock", path="/s/", uri="unix://relative"),
        ]
        problems = spec_problems(specs)
        self.assertEqual(len(problems), 8, problems)
        self.assertIn(
            "upstreams: '/': two upstreams serve the path '/'; paths must be unique", problems
        )
        self.assertIn("upstreams: 'dup': two upstreams have this id; ids must be unique", problems)
        self.assertTrue(
            any(p.startswith("upstreams: 're': path '^/(' is not a valid") for p in problems)
        )
        self.assertIn(
            "upstreams: 'rel': path 'app/' must start with '/' (or '^' for a pattern)", problems
        )
        self.assertIn("upstreams: 'st': static code 42 must be an HTTP status 200-599", problems)

    def test_passwords_in_uris_are_not_shown(self) -> None:
        problems = spec_problems([UpstreamSpec(id="x", path="/", uri="gopher://u:secret@h/")])
        self.assertNotIn("secret", problems[0])

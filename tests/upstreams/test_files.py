"""Tests for oauthgate.upstreams.files: a directory's files, and nothing outside it."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from oauthgate.errors import AuthError
from oauthgate.interfaces import IUpstream
from oauthgate.upstreams.files import FileUpstream
from oauthgate.upstreams.spec import UpstreamSpec


class FileUpstreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        top = Path(self.mktemp()).resolve()
        self.docs = top / "docs"
        (self.docs / "sub").mkdir(parents=True)
        (self.docs / "empty").mkdir()
        (self.docs / "index.html").write_text("home")
        (self.docs / "notes.md").write_text("# notes")
        (self.docs / "sub" / "index.html").write_text("sub home")
        (top / "secret.txt").write_text("secret")
        (self.docs / "out").symlink_to(top / "secret.txt")
        self.upstream = FileUpstream.from_spec(
            UpstreamSpec(id="docs", path="/docs/", uri=f"file://{self.docs}")
        )

    def get(self, uri: bytes, method: bytes = b"GET", target: bytes | None = None) -> DummyRequest:
        request = DummyRequest([])
        request.uri = uri
        request.method = method
        forwarding = self.upstream.forward(request, (), target=target)  # type: ignore[arg-type]
        self.successResultOf(Deferred.fromCoroutine(forwarding))
        return request

    def refused(self, uri: bytes) -> int:
        request = DummyRequest([])
        request.uri = uri
        forwarding = self.upstream.forward(request, ())  # type: ignore[arg-type]
        failure = self.failureResultOf(Deferred.fromCoroutine(forwarding), AuthError)
        error: AuthError = failure.value
        return error.status

    def test_provides_iupstream(self) -> None:
        self.assertTrue(verifyObject(IUpstream, self.upstream))

    def test_a_file_under_the_mount_is_served_with_its_type(self) -> None:
        request = self.get(b"/docs/notes.md?x=1")
        self.assertEqual(b"".join(request.written), b"# notes")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"text/markdown"])
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"x-content-type-options"), [b"nosniff"]
        )

    def test_a_directory_serves_its_index(self) -> None:
        self.assertEqual(b"".join(self.get(b"/docs/").written), b"home")
        self.assertEqual(b"".join(self.get(b"/docs/sub/").written), b"sub home")

    def test_a_directory_without_its_slash_is_redirected(self) -> None:
        request = self.get(b"/docs/sub?a=b")
        self.assertEqual(request.responseCode, 301)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"location"), [b"/docs/sub/?a=b"])

    def test_missing_files_and_directories_without_index_are_404(self) -> None:
        self.assertEqual(self.refused(b"/docs/nope.txt"), 404)
        self.assertEqual(self.refused(b"/docs/empty/"), 404)

    def test_nothing_outside_the_directory_is_reachable(self) -> None:
        for uri in (
            b"/docs/../secret.txt",
            b"/docs/%2e%2e/secret.txt",
            b"/docs/sub/..%2f..%2fsecret.txt",
            b"/docs/out",
            b"/docs/%00",
        ):
            self.assertEqual(self.refused(uri), 404, uri)

    def test_only_get_and_head(self) -> None:
        request = self.get(b"/docs/notes.md", method=b"DELETE")
        self.assertEqual(request.responseCode, 405)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"allow"), [b"GET, HEAD"])

    def test_a_rewritten_target_names_the_file(self) -> None:
        request = self.get(b"/n", target=b"/docs/notes.md")
        self.assertEqual(b"".join(request.written), b"# notes")

    def test_a_pattern_route_maps_the_whole_path(self) -> None:
        upstream = FileUpstream("f", "^/s", str(self.docs), regex=True)
        request = DummyRequest([])
        request.uri = b"/sub/index.html"
        self.successResultOf(
            Deferred.fromCoroutine(upstream.forward(request, ()))  # type: ignore[arg-type]
        )
        self.assertEqual(b"".join(request.written), b"sub home")

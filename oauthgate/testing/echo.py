"""The demo upstream: a page that shows the request oauthgate forwarded to it.

Secrets stay hidden even here: the ``Authorization`` header shows only its
scheme and length, tokens and cookie values only their length.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.web.resource import Resource
from twisted.web.server import Request

from oauthgate.web.identity import IDENTITY_HEADERS

__all__ = ["SHOWN_FIRST", "EchoResource"]

SHOWN_FIRST = (*(h for h in IDENTITY_HEADERS if not h.startswith("GAP-")), "Authorization")
"""The headers oauthgate may inject, shown first on the echo page."""

_TOKEN_HEADERS = frozenset({"x-forwarded-access-token", "x-auth-request-access-token"})

_STYLE = """
body { font-family: system-ui, sans-serif; background: #f4f5f7; color: #222; margin: 0; }
main { max-width: 56rem; margin: 2rem auto; padding: 0 1rem; }
header { display: flex; align-items: baseline; justify-content: space-between; }
h1 { font-size: 1.4rem; }
h2 { font-size: 1.05rem; margin-top: 2rem; color: #445; }
.banner { padding: 1rem 1.2rem; border-radius: 8px; margin: 1rem 0; }
.ok { background: #e7f6ec; border: 1px solid #9fd3b1; }
.none { background: #fff4e0; border: 1px solid #f0c987; }
table { border-collapse: collapse; width: 100%; background: #fff; border-radius: 8px;
        box-shadow: 0 1px 3px rgba(0,0,0,.08); }
th, td { text-align: left; padding: .45rem .8rem; border-bottom: 1px solid #eee;
         vertical-align: top; font-size: .92rem; }
th { width: 30%; font-weight: 600; white-space: nowrap; }
td { font-family: ui-monospace, monospace; word-break: break-all; }
tr.identity th { color: #1a5d2e; }
.absent { color: #999; font-style: italic; font-family: system-ui, sans-serif; }
a.button { padding: .4rem .9rem; border-radius: 6px; background: #445; color: #fff;
           text-decoration: none; font-size: .9rem; }
"""


def _masked(name: str, value: str) -> str:
    """What may be shown of a header: secrets are reduced to scheme and length."""
    lowered = name.lower()
    if lowered == "authorization":
        scheme, space, credentials = value.strip().partition(" ")
        if not space:
            return f"[{len(value)} chars hidden]"
        return f"{scheme} [{len(credentials.strip())} chars hidden]"
    if lowered in _TOKEN_HEADERS:
        return f"[{len(value)} chars hidden]"
    if lowered == "cookie":
        parts = []
        for item in value.split(";"):
            cookie_name, sep, cookie_value = item.strip().partition("=")
            if sep:
                parts.append(f"{cookie_name}=[{len(cookie_value)} chars]")
        return "; ".join(parts)
    return value


class EchoResource(Resource):
    """Answers every method and path with the request it received.

    HTML by default; JSON (``{"method", "path", "query", "headers", "body_length"}``,
    where ``headers`` maps each name to its list of values, as received) when the
    client accepts ``application/json`` or asks ``?format=json``.
    ``sign_out_url`` adds a sign-out link to the page (None for none).
    """

    isLeaf = True

    def __init__(self, *, sign_out_url: str | None = "/oauth2/sign_out") -> None:
        Resource.__init__(self)
        self._sign_out_url = sign_out_url

    def render(self, request: Request) -> bytes:
        info = self.describe(request)
        request.setHeader(b"Cache-Control", b"no-store")
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        if "application/json" in accept or info["query"].get("format") == ["json"]:
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(info, indent=2).encode("utf-8")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self._html(info).encode("utf-8")

    @staticmethod
    def describe(request: Request) -> dict[str, Any]:
        """The JSON view of ``request`` (secrets masked)."""
        headers: dict[str, list[str]] = {}
        for raw_name, raw_values in request.requestHeaders.getAllRawHeaders():
            name = raw_name.decode("latin-1")
            headers[name] = [_masked(name, v.decode("latin-1")) for v in raw_values]
        uri = (request.uri or b"/").decode("latin-1")
        content = request.content
        body_length = len(content.read()) if content is not None else 0
        if content is not None:
            content.seek(0)
        return {
            "method": (request.method or b"").decode("latin-1"),
            "path": urlsplit(uri).path,
            "query": parse_qs(urlsplit(uri).query, keep_blank_values=True),
            "headers": headers,
            "body_length": body_length,
        }

    def _html(self, info: dict[str, Any]) -> str:
        headers = {name: ", ".join(values) for name, values in info["headers"].items()}
        by_lower = {k.lower(): (k, v) for k, v in headers.items()}
        user = by_lower.get("x-forwarded-user") or by_lower.get("x-auth-request-user")
        email = by_lower.get("x-forwarded-email") or by_lower.get("x-auth-request-email")
        if user or email:
            who = html.escape(user[1] if user else "")
            if email:
                who += f" &lt;{html.escape(email[1])}&gt;"
            banner = (
                f'<div class="banner ok">Signed in as <strong>{who}</strong>. '
                "This is what oauthgate forwarded to the upstream application.</div>"
            )
        else:
            banner = (
                '<div class="banner none">No identity headers: this request did not '
                "come through an authenticated oauthgate route.</div>"
            )

        identity_rows = []
        shown = set()
        names = list(SHOWN_FIRST) + sorted(
            k for k in headers if k.lower().startswith("x-auth-request-")
        )
        for name in names:
            key = name.lower()
            if key in shown:
                continue
            shown.add(key)
            if key in by_lower:
                cell = html.escape(by_lower[key][1])
            else:
                cell = '<span class="absent">absent</span>'
            identity_rows.append(
                f'<tr class="identity"><th>{html.escape(name)}</th><td>{cell}</td></tr>'
            )

        request_rows = [
            f"<tr><th>Method</th><td>{html.escape(info['method'])}</td></tr>",
            f"<tr><th>Path</th><td>{html.escape(info['path'])}</td></tr>",
        ]
        for key, values in info["query"].items():
            request_rows.append(
                f"<tr><th>?{html.escape(key)}</th><td>{html.escape(', '.join(values))}</td></tr>"
            )
        request_rows.append(f"<tr><th>Body</th><td>{info['body_length']} bytes</td></tr>")
        header_rows = [
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in sorted(headers.items())
        ]
        sign_out = (
            f'<a class="button" href="{html.escape(self._sign_out_url)}">Sign out</a>'
            if self._sign_out_url
            else ""
        )
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            "<title>oauthgate demo upstream</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{_STYLE}</style></head><body><main>"
            f"<header><h1>oauthgate demo upstream</h1>{sign_out}</header>{banner}"
            f"<h2>Identity headers</h2><table>{''.join(identity_rows)}</table>"
            f"<h2>Request</h2><table>{''.join(request_rows)}</table>"
            f"<h2>All request headers</h2><table>{''.join(header_rows)}</table>"
            "</main></body></html>"
        )

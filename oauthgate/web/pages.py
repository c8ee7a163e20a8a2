"""The sign-in and error pages, rendered from templates read once at start-up.

Templates use ``$name`` placeholders (Python's ``string.Template``). Every value that
comes from a request or an identity provider is HTML-escaped before substitution; only
the operator's own ``--banner`` and ``--footer`` may contain HTML, as in oauth2-proxy.
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Sequence
from html import escape
from importlib import resources
from pathlib import Path
from string import Template

import attrs

from oauthgate._version import __version__
from oauthgate.config.options import Config
from oauthgate.errors import ConfigError

__all__ = ["Pages"]


def _builtin(name: str) -> str:
    return resources.files("oauthgate.web").joinpath("templates", name).read_text("utf-8")


def _logo_html(setting: str) -> str:
    if setting in ("", "-"):
        return ""
    if setting.startswith(("http://", "https://", "data:")):
        src = setting
    else:
        # A local file is embedded once at start-up so serving the page reads no disk.
        path = Path(setting)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(
                [f"custom_sign_in_logo: cannot read {setting}: {e.strerror}"]
            ) from None
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        src = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<div class="logo"><img src="{escape(src)}" alt="logo"></div>'


@attrs.frozen
class Pages:
    """Renders pages; built once from the configuration."""

    sign_in: Template
    error: Template
    style: str
    logo: str
    banner: str
    footer: str
    provider_name: str
    prefix: str
    htpasswd_form: bool = False
    providers: tuple[tuple[str, str], ...] = ()
    """(id, display name) of each identity provider, in button order; empty: one provider
    named ``provider_name``."""

    @classmethod
    def from_config(
        cls,
        config: Config,
        provider_name: str,
        *,
        providers: Sequence[tuple[str, str]] = (),
    ) -> Pages:
        """The pages for ``config``. ``provider_name`` is the (first) provider's display name;
        ``providers`` lists (id, display name) of every provider when there are several."""
        templates = {"sign_in.html": _builtin("sign_in.html"), "error.html": _builtin("error.html")}
        if config.custom_templates_dir:
            folder = Path(config.custom_templates_dir)
            if not folder.is_dir():
                raise ConfigError([f"custom_templates_dir: {folder} is not a directory"])
            for name in templates:
                candidate = folder / name
                if candidate.is_file():
                    templates[name] = candidate.read_text("utf-8")
        if config.banner == "-":
            banner = ""
        elif config.banner:
            banner = f'<p class="banner">{config.banner}</p>'
        else:
            banner = f'<p class="banner">{escape(_default_banner(config))}</p>'
        if config.footer == "-":
            footer = ""
        elif config.footer:
            footer = config.footer
        else:
            footer = f"Secured with oauthgate {escape(__version__)}"
        return cls(
            sign_in=Template(templates["sign_in.html"]),
            error=Template(templates["error.html"]),
            style=_builtin("style.css"),
            logo=_logo_html(config.custom_sign_in_logo),
            banner=banner,
            footer=footer,
            provider_name=config.provider_display_name or provider_name,
            prefix=config.proxy_prefix,
            htpasswd_form=bool(config.htpasswd_file) and config.display_htpasswd_form,
            providers=tuple(providers) if len(providers) > 1 else (),
        )

    def render_sign_in(self, redirect: str, *, message: str = "") -> bytes:
        form = ""
        if self.htpasswd_form:
            form = (
                f'<form class="local" method="POST" action="{escape(self.prefix + "/sign_in")}">'
                f'<input type="hidden" name="rd" value="{escape(redirect)}">'
                '<label for="username">Username</label>'
                '<input id="username" name="username" autocomplete="username" required>'
                '<label for="password">Password</label>'
                '<input id="password" name="password" type="password" '
                'autocomplete="current-password" required>'
                '<button type="submit" class="primary">Sign in</button></form>'
            )
        return self.sign_in.safe_substitute(
            message=f'<p class="error">{escape(message)}</p>' if message else "",
            provider_buttons=self._buttons(redirect),
            htpasswd_form=form,
            style=self.style,
            logo=self.logo,
            banner=self.banner,
            footer=self.footer,
            start_url=escape(self.prefix + "/start"),
            redirect=escape(redirect),
            provider_name=escape(self.provider_name),
        ).encode("utf-8")

    def _buttons(self, redirect: str) -> str:
        """One "Sign in with X" button per provider, each a GET form to
        ``<prefix>/start?provider=ID&rd=...`` (no ``provider`` with one provider)."""
        start = escape(self.prefix + "/start")
        rd = f'<input type="hidden" name="rd" value="{escape(redirect)}">'
        if not self.providers:
            return (
                f'<form method="GET" action="{start}">{rd}'
                f'<button type="submit" class="primary">Sign in with '
                f"{escape(self.provider_name)}</button></form>"
            )
        return "".join(
            f'<form method="GET" action="{start}" class="provider">'
            f'<input type="hidden" name="provider" value="{escape(provider_id)}">{rd}'
            f'<button type="submit" class="primary">Sign in with {escape(name)}</button></form>'
            for provider_id, name in self.providers
        )

    def render_error(
        self, status: int, title: str, message: str, *, redirect: str = "/", request_id: str = ""
    ) -> bytes:
        rid = f'<p class="request-id">Request id: {escape(request_id)}</p>' if request_id else ""
        return self.error.safe_substitute(
            style=self.style,
            status=status,
            title=escape(title),
            message=escape(message),
            sign_in_url=escape(f"{self.prefix}/sign_in?rd={_quote(redirect)}"),
            redirect=escape(redirect),
            request_id=rid,
            footer=self.footer,
        ).encode("utf-8")


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="/")


def _default_banner(config: Config) -> str:
    domains = [d for d in config.email_domains if d]
    if not domains or "*" in domains:
        return "Sign in to continue."
    return "Authenticate using " + ", ".join(domains)

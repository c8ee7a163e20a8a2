"""``--upstream`` values as :class:`UpstreamSpec` s, converted the way oauth2-proxy does.

- ``http(s)://host[:port]/path``: route and id are the URL's path ("/" if none).
- ``file:///dir#/mount/``: route and id are the fragment (the URL's path without one);
  the fragment is not part of the URI.
- ``static://202`` (or ``static://202/path``): a static answer with that status, on the
  URL's path ("/" if none).
- ``unix:///run/app.sock``: route and id "/".

Every spec gets the global ``--pass-host-header``, ``--proxy-websockets``,
``--flush-interval``, ``--upstream-timeout``, ``--ssl-upstream-insecure-skip-verify`` and
``--disable-keep-alives``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from oauthgate.upstreams.spec import UpstreamSpec

if TYPE_CHECKING:
    from oauthgate.config.options import Config

__all__ = ["spec_from_flag", "specs_from_config", "specs_from_flags"]


def specs_from_config(config: Config) -> tuple[UpstreamSpec, ...]:
    """The alpha ``upstreamConfig`` when one was loaded, else the ``--upstream`` flags."""
    alpha: tuple[UpstreamSpec, ...] = getattr(config, "upstream_specs", ())
    if alpha:
        return tuple(alpha)
    return specs_from_flags(config)


def specs_from_flags(config: Config) -> tuple[UpstreamSpec, ...]:
    """One spec per ``--upstream`` value, in order."""
    return tuple(spec_from_flag(url, config) for url in config.upstreams)


def spec_from_flag(url: str, config: Config) -> UpstreamSpec:
    """The spec for one ``--upstream`` value (not checked: see ``routing.spec_problems``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = urlsplit("")
    scheme = parts.scheme.lower()
    path = parts.path or "/"
    uri = url
    static = False
    code = 200
    if scheme == "file":
        if parts.fragment:
            path = parts.fragment
            uri = url.partition("#")[0]
    elif scheme == "static":
        static = True
        try:
            code = int(parts.netloc)
        except ValueError:
            code = 0  # refused by validation: static://<status code> needs a number
    elif scheme == "unix":
        path = "/"
    return UpstreamSpec(
        id=path,
        path=path,
        uri=uri,
        static=static,
        static_code=code,
        flush_interval=config.flush_interval,
        pass_host_header=config.pass_host_header,
        proxy_websockets=config.proxy_websockets,
        timeout=config.upstream_timeout,
        insecure_skip_tls_verify=config.ssl_upstream_insecure_skip_verify,
        disable_keep_alives=config.disable_keep_alives,
    )

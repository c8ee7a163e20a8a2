"""Upstream specs -> upstream objects -> the routing table (called by the service)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from oauthgate.errors import ConfigError
from oauthgate.upstreams.files import FileUpstream
from oauthgate.upstreams.http import HTTPUpstream
from oauthgate.upstreams.legacy import specs_from_config
from oauthgate.upstreams.routing import Routable, Route, RoutingTable, spec_problems
from oauthgate.upstreams.spec import UpstreamSpec
from oauthgate.upstreams.static import StaticUpstream

if TYPE_CHECKING:
    from oauthgate.config.options import Config
    from oauthgate.interfaces import IUpstream

__all__ = ["build_upstream", "routing_table"]


def build_upstream(spec: UpstreamSpec, reactor: Any, *, ca_files: Sequence[str] = ()) -> Routable:
    """The upstream ``spec`` describes: static, file, or HTTP(S)/UNIX socket."""
    if spec.static:
        return StaticUpstream.from_spec(spec)
    if urlsplit(spec.uri).scheme.lower() == "file":
        return FileUpstream.from_spec(spec)
    return HTTPUpstream.from_spec(spec, reactor, ca_files=ca_files)


def routing_table(
    config: Config,
    reactor: Any,
    *,
    factory: Callable[[str], IUpstream] | None = None,
) -> RoutingTable:
    """The routing table for ``config``: the alpha ``upstreamConfig`` if loaded, else the
    ``--upstream`` flags.

    ``factory`` (tests) builds the upstream for each http(s)/unix URI instead of
    :meth:`HTTPUpstream.from_spec`; what it returns must accept ``forward(...,
    target=...)`` if rewrites are used. Raises ConfigError when the specs are invalid.
    """
    specs = specs_from_config(config)
    problems = spec_problems(specs)
    if problems:
        raise ConfigError(problems)
    routes = []
    for spec in specs:
        scheme = urlsplit(spec.uri).scheme.lower()
        if factory is not None and not spec.static and scheme in ("http", "https", "unix"):
            upstream = cast(Routable, factory(spec.uri))
        else:
            upstream = build_upstream(spec, reactor, ca_files=config.upstream_ca_files)
        try:
            routes.append(Route.of(spec, upstream))
        except re.error as e:  # checked above; kept for callers passing odd specs
            raise ConfigError([f"upstreams: {spec.id!r}: {e}"]) from None
    return RoutingTable(routes, proxy_raw_path=getattr(config, "proxy_raw_path", False))

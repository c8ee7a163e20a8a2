"""Where allowed requests go: the implementations of :class:`oauthgate.interfaces.IUpstream`
and the routing table that chooses one (see docs/upstreams.md)."""

from oauthgate.upstreams.files import FileUpstream
from oauthgate.upstreams.http import HTTPUpstream
from oauthgate.upstreams.routing import Route, RoutingTable
from oauthgate.upstreams.spec import UpstreamSpec
from oauthgate.upstreams.static import StaticUpstream

__all__ = [
    "FileUpstream",
    "HTTPUpstream",
    "Route",
    "RoutingTable",
    "StaticUpstream",
    "UpstreamSpec",
]

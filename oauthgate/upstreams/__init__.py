"""Where allowed requests go: the implementations of :class:`oauthgate.interfaces.IUpstream`."""

from oauthgate.upstreams.http import HTTPUpstream

__all__ = ["HTTPUpstream"]

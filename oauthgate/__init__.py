"""oauthgate: an authenticating reverse proxy on Twisted, a work-alike of oauth2-proxy."""

from oauthgate._version import __version__

__all__ = ["__version__"]

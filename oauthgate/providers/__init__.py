"""Identity providers shipped with oauthgate; each is found through its entry point."""

from oauthgate.providers.oidc import OIDCProvider, OIDCProviderFactory

__all__ = ["OIDCProvider", "OIDCProviderFactory"]

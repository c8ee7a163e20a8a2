"""oauthgate.providers."""

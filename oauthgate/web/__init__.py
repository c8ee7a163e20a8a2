"""oauthgate.web."""

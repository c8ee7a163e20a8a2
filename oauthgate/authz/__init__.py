"""oauthgate.authz."""

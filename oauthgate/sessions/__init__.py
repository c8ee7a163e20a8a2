"""oauthgate.sessions."""

"""oauthgate.testing."""

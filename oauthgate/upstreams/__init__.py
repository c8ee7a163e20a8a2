"""oauthgate.upstreams."""

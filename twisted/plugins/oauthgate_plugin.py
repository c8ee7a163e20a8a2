"""The twistd dropin: ``twistd -n oauthgate --help``. Imports nothing until used."""

from twisted.application.service import ServiceMaker

oauthgate = ServiceMaker(
    "oauthgate",
    "oauthgate.tap",
    "An authenticating reverse proxy: OAuth2 / OpenID Connect login in front of any web app",
    "oauthgate",
)

"""Client authentication at the token endpoint: private_key_jwt assertions
(oauthgate.providers.client_auth), the OIDC provider's client_auth_method, the FakeIdP's
checks of assertions, and public PKCE clients, down to a login through the gate."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError
from oauthgate.providers.client_auth import (
    JWT_BEARER,
    client_assertion,
    load_signing_key,
    signing_key_from_config,
)
from oauthgate.providers.oidc import OIDCProvider, OIDCProviderFactory
from oauthgate.session import Session
from oauthgate.testing import FakeIdP, GateTestCase, MemoryHTTPClient, memory_http_client
from tests.web.test_multi_provider import IDP_A, make_world

EPOCH = 1_800_000_000
ISSUER = "https://idp.test"
TOKEN_URL = ISSUER + "/token"
REDIRECT_URI = "https://app.test/oauth2/callback"


def pem(key: Any) -> bytes:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PEM = pem(RSA_KEY)
EC_PEM = pem(EC_KEY)


def counter() -> Callable[[int], bytes]:
    """Randomness that differs on every call, deterministically."""
    calls = [0]

    def random(n: int) -> bytes:
        calls[0] += 1
        return calls[0].to_bytes(n, "big")

    return random


def epoch_clock() -> Clock:
    clock = Clock()
    clock.advance(EPOCH)
    return clock


class ClientAssertionTests(GateTestCase):
    def decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.public_key(),
            algorithms=[algorithm],
            audience=TOKEN_URL,
            options={"verify_exp": False, "verify_iat": False},
        )
        return claims

    def test_an_rsa_key_signs_rs256_for_the_client_and_the_token_endpoint(self) -> None:
        token = client_assertion(RSA_PEM, "app", TOKEN_URL, epoch_clock(), counter())
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "RS256")
        claims = self.decode(token, RSA_KEY, "RS256")
        self.assertEqual((claims["iss"], claims["sub"], claims["aud"]), ("app", "app", TOKEN_URL))

    def test_an_ec_key_signs_es256(self) -> None:
        token = client_assertion(EC_PEM, "app", TOKEN_URL, epoch_clock(), counter())
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "ES256")
        self.assertEqual(self.decode(token, EC_KEY, "ES256")["sub"], "app")

    def test_an_assertion_lives_five_minutes_on_the_injected_clock(self) -> None:
        claims = self.decode(
            client_assertion(RSA_PEM, "app", TOKEN_URL, epoch_clock(), counter()),
            RSA_KEY,
            "RS256",
        )
        self.assertEqual((claims["iat"], claims["exp"]), (EPOCH, EPOCH + 300))

    def test_each_assertion_has_its_own_jti(self) -> None:
        key = load_signing_key(EC_PEM)
        random = counter()
        first = jwt.decode(
            key.assertion("app", TOKEN_URL, epoch_clock(), random),
            options={"verify_signature": False},
        )
        second = jwt.decode(
            key.assertion("app", TOKEN_URL, epoch_clock(), random),
            options={"verify_signature": False},
        )
        self.assertNotEqual(first["jti"], second["jti"])

    def test_the_key_stays_out_of_repr(self) -> None:
        self.assertNotIn("PRIVATE", repr(load_signing_key(RSA_PEM)))
        self.assertEqual(load_signing_key(RSA_PEM).algorithm, "RS256")

    def test_unusable_keys_are_refused_saying_why(self) -> None:
        encrypted = RSA_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
        small = pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
        cases = {
            b"not a key": "not a PEM private key",
            encrypted: "encrypted",
            small: "1024 bits; use at least 2048",
            pem(ec.generate_private_key(ec.SECP256K1())): "curve secp256k1",
            pem(ed25519.Ed25519PrivateKey.generate()): "use an RSA or EC private key",
        }
        for data, reason in cases.items():
            with self.assertRaises(ValueError) as raised:
                load_signing_key(data)
            self.assertIn(reason, str(raised.exception))
            self.assertNotIn("MII", str(raised.exception))  # no key material


class SigningKeyFromConfigTests(GateTestCase):
    def key_file(self, data: bytes) -> str:
        path = Path(self.mktemp())
        path.write_bytes(data)
        return str(path)

    def test_no_key_is_none(self) -> None:
        self.assertIsNone(signing_key_from_config(Config()))

    def test_the_key_comes_from_the_option_or_the_file(self) -> None:
        from_text = signing_key_from_config(Config(jwt_key=EC_PEM.decode()))
        from_file = signing_key_from_config(Config(jwt_key_file=self.key_file(RSA_PEM)))
        assert from_text is not None and from_file is not None
        self.assertEqual((from_text.algorithm, from_file.algorithm), ("ES256", "RS256"))

    def test_problems_are_config_errors_naming_the_option(self) -> None:
        missing = self.mktemp()
        cases = {
            Config(jwt_key="x", jwt_key_file="y"): "jwt_key: both jwt_key and jwt_key_file",
            Config(jwt_key_file=missing): f"jwt_key_file: cannot read {missing}",
            Config(jwt_key_file=self.key_file(b"junk")): "jwt_key_file: not a PEM private key",
            Config(jwt_key="junk"): "jwt_key: not a PEM private key",
        }
        for config, problem in cases.items():
            with self.assertRaises(ConfigError) as raised:
                signing_key_from_config(config)
            self.assertIn(problem, raised.exception.problems[0])


@attrs.define
class IdPWorld:
    clock: Clock
    idp: FakeIdP
    http: MemoryHTTPClient

    def provider(self, **changes: Any) -> OIDCProvider:
        options: dict[str, Any] = {
            "provider": "oidc",
            "oidc_issuer_url": ISSUER,
            "client_id": "app",
            **changes,
        }
        return OIDCProviderFactory().build(attrs.evolve(Config(), **options), self.http, self.clock)

    def code(self) -> str:
        return self.idp.issue_code("alice", client_id="app", redirect_uri=REDIRECT_URI, nonce="n")


def idp_world(
    clients: dict[str, str] | None = None, client_keys: dict[str, Any] | None = None
) -> IdPWorld:
    clock = epoch_clock()
    idp = FakeIdP(ISSUER, clock, clients=clients or {}, client_keys=client_keys)
    return IdPWorld(clock, idp, memory_http_client(idp.resource(), clock=clock))


class PrivateKeyJWTTests(GateTestCase):
    def redeem(self, world: IdPWorld, provider: OIDCProvider) -> Session:
        return self.get_success(provider.redeem(world.code(), None, REDIRECT_URI, "n"))

    def test_a_code_is_redeemed_with_a_signed_assertion_and_no_secret(self) -> None:
        world = idp_world(client_keys={"app": RSA_KEY.public_key()})
        provider = world.provider(client_auth_method="private_key_jwt", jwt_key=RSA_PEM.decode())
        session = self.redeem(world, provider)
        self.assertEqual(session.email, "alice@example.com")
        request = world.idp.token_requests[-1]
        self.assertEqual((request.auth_method, request.client_id), ("private_key_jwt", "app"))
        self.assertEqual(request.form["client_assertion_type"], JWT_BEARER)
        self.assertEqual(request.form["client_id"], "app")
        self.assertNotIn("client_secret", request.form)

    def test_the_refresh_grant_is_authenticated_with_a_fresh_assertion(self) -> None:
        world = idp_world(client_keys={"app": EC_KEY.public_key()})
        provider = world.provider(client_auth_method="private_key_jwt", jwt_key=EC_PEM.decode())
        session = self.redeem(world, provider)
        refreshed = self.get_success(provider.refresh(session))
        assert refreshed is not None
        self.assertNotEqual(refreshed.access_token, session.access_token)
        self.assertEqual(world.idp.token_requests[-1].auth_method, "private_key_jwt")

    def test_an_assertion_signed_by_another_key_is_refused(self) -> None:
        world = idp_world(client_keys={"app": EC_KEY.public_key()})
        provider = world.provider(client_auth_method="private_key_jwt", jwt_key=RSA_PEM.decode())
        failure = self.get_failure(
            provider.redeem(world.code(), None, REDIRECT_URI, "n"), ProviderError
        )
        self.assertIn("invalid_client", str(failure))

    def test_a_replayed_assertion_is_refused(self) -> None:
        """The provider remembers each jti; with randomness that repeats, the second
        assertion is a replay."""
        world = idp_world(client_keys={"app": EC_KEY.public_key()})
        provider = OIDCProvider(
            attrs.evolve(
                Config(),
                provider="oidc",
                oidc_issuer_url=ISSUER,
                client_id="app",
                client_auth_method="private_key_jwt",
                jwt_key=EC_PEM.decode(),
            ),
            cast(Any, world.http),
            world.clock,
            random=lambda n: b"\x01" * n,
        )
        self.redeem(world, provider)
        failure = self.get_failure(
            provider.redeem(world.code(), None, REDIRECT_URI, "n"), ProviderError
        )
        self.assertIn("invalid_client", str(failure))

    def test_an_expired_assertion_is_refused(self) -> None:
        world = idp_world(client_keys={"app": EC_KEY.public_key()})
        old = Clock()
        old.advance(EPOCH - 301)
        assertion = client_assertion(EC_PEM, "app", TOKEN_URL, old, counter())
        form = {
            "grant_type": "authorization_code",
            "code": world.code(),
            "redirect_uri": REDIRECT_URI,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        }

        async def post() -> tuple[int, Any]:
            response = await world.http.post(TOKEN_URL, data=list(form.items()))
            return response.code, json.loads(await response.content())

        status, body = self.successResultOf(Deferred.fromCoroutine(post()))
        self.assertEqual((status, body), (401, {"error": "invalid_client"}))

    def test_a_key_client_cannot_use_a_secret_instead(self) -> None:
        world = idp_world(client_keys={"app": EC_KEY.public_key()})
        provider = world.provider(client_secret="guess")
        self.get_failure(provider.redeem(world.code(), None, REDIRECT_URI, "n"), ProviderError)

    def test_discovery_advertises_private_key_jwt_when_clients_use_it(self) -> None:
        with_keys = idp_world(client_keys={"app": EC_KEY.public_key()}).idp.discovery()
        self.assertIn("private_key_jwt", with_keys["token_endpoint_auth_methods_supported"])
        plain = idp_world(clients={"app": "s"}).idp.discovery()
        self.assertNotIn("private_key_jwt", plain["token_endpoint_auth_methods_supported"])

    def test_private_key_jwt_needs_a_usable_key(self) -> None:
        base = attrs.evolve(Config(), provider="oidc", oidc_issuer_url=ISSUER, client_id="app")
        self.assertIn(
            "jwt_key: required (or jwt_key_file) with client_auth_method private_key_jwt",
            OIDCProvider.check_config(attrs.evolve(base, client_auth_method="private_key_jwt")),
        )
        self.assertIn(
            "jwt_key: not a PEM private key (-----BEGIN PRIVATE KEY-----)",
            OIDCProvider.check_config(
                attrs.evolve(base, client_auth_method="private_key_jwt", jwt_key="junk")
            ),
        )
        self.assertIn(
            "client_auth_method: must be client_secret_basic, client_secret_post, "
            "private_key_jwt, got 'tls'",
            OIDCProvider.check_config(attrs.evolve(base, client_auth_method="tls")),
        )
        with self.assertRaises(ConfigError):
            OIDCProviderFactory().build(
                attrs.evolve(base, client_auth_method="private_key_jwt"), None, Clock()
            )


class ClientSecretTests(GateTestCase):
    def test_client_secret_post_puts_the_secret_in_the_form(self) -> None:
        world = idp_world(clients={"app": "s3cret"})
        provider = world.provider(client_secret="s3cret", client_auth_method="client_secret_post")
        self.get_success(provider.redeem(world.code(), None, REDIRECT_URI, "n"))
        self.assertEqual(world.idp.token_requests[-1].auth_method, "client_secret_post")

    def test_client_secret_basic_is_the_default(self) -> None:
        world = idp_world(clients={"app": "s3cret"})
        provider = world.provider(client_secret="s3cret")
        self.get_success(provider.redeem(world.code(), None, REDIRECT_URI, "n"))
        self.assertEqual(world.idp.token_requests[-1].auth_method, "client_secret_basic")


UPSTREAM_ONLY = 'upstreamConfig:\n  upstreams: [{id: app, path: /, uri: "http://upstream.test/"}]\n'


class ThroughTheGateTests(GateTestCase):
    """The flat options, as an operator gives them on the command line."""

    FLAGS: dict[str, Any] = {
        "provider": "oidc",
        "oidc_issuer_url": IDP_A,
        "client_id": "app-a",
        "code_challenge_method": "S256",
    }

    def test_a_public_client_logs_in_with_pkce_and_no_secret(self) -> None:
        world = make_world(UPSTREAM_ONLY, idp_a_clients={"app-a": ""}, **self.FLAGS)
        landed = self.get_success(world.get("/oauth2/start?rd=%2Fx"))
        self.assertEqual(landed.status, 200, landed.text)
        request = world.idp_a.token_requests[-1]
        self.assertIsNone(request.auth_method)
        self.assertIn("code_verifier", request.form)
        self.assertEqual(world.idp_a.authorize_requests[-1]["code_challenge_method"], "S256")

    def test_a_public_client_without_pkce_is_a_config_error(self) -> None:
        flags = {**self.FLAGS, "code_challenge_method": ""}
        with self.assertRaises(ConfigError) as raised:
            make_world(UPSTREAM_ONLY, idp_a_clients={"app-a": ""}, **flags)
        self.assertIn("client_secret: required", str(raised.exception))

    def test_a_private_key_jwt_client_logs_in(self) -> None:
        world = make_world(
            UPSTREAM_ONLY,
            idp_a_clients={},
            idp_a_keys={"app-a": RSA_KEY.public_key()},
            client_auth_method="private_key_jwt",
            jwt_key=RSA_PEM.decode(),
            **self.FLAGS,
        )
        landed = self.get_success(world.get("/oauth2/start?rd=%2Fx"))
        self.assertEqual(landed.status, 200, landed.text)
        self.assertEqual(world.idp_a.token_requests[-1].auth_method, "private_key_jwt")

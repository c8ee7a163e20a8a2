"""Client authentication with a signed JWT: ``private_key_jwt`` (OIDC Core §9, RFC 7523).

Instead of a client secret, the client proves who it is with a short-lived assertion
signed by its private key; the provider holds only the public key. RSA keys sign with
RS256, EC keys with ES256 (P-256), ES384 (P-384) or ES512 (P-521).

Security: the private key is never logged nor shown in ``repr``. Each assertion is bound
to one token endpoint (``aud``), lives five minutes on the injected clock and carries a
random ``jti``, so a provider that remembers them refuses a replay.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

import attrs
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet.interfaces import IReactorTime

from oauthgate.errors import ConfigError

__all__ = [
    "ASSERTION_LIFETIME",
    "JWT_BEARER",
    "SigningKey",
    "client_assertion",
    "load_signing_key",
    "signing_key_from_config",
]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
"""The ``client_assertion_type`` of a JWT client assertion."""

ASSERTION_LIFETIME = 300.0
"""Seconds an assertion is valid (``exp - iat``)."""

_MIN_RSA_BITS = 2048
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


@attrs.frozen
class SigningKey:
    """A private key ready to sign client assertions, with the algorithm its type calls for."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    algorithm: str

    def assertion(
        self,
        client_id: str,
        audience: str,
        clock: IReactorTime,
        random: Callable[[int], bytes] = os.urandom,
    ) -> str:
        """A signed assertion: ``iss`` = ``sub`` = ``client_id``, ``aud`` = ``audience``
        (the token endpoint URL), a random ``jti``, ``iat`` now and ``exp`` five minutes on."""
        now = int(clock.seconds())
        claims: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": base64.urlsafe_b64encode(random(18)).rstrip(b"=").decode("ascii"),
            "iat": now,
            "exp": now + int(ASSERTION_LIFETIME),
        }
        return jwt.encode(claims, self.key, algorithm=self.algorithm)


def load_signing_key(key_pem: bytes) -> SigningKey:
    """The signing key in ``key_pem`` (an unencrypted PEM private key, PKCS#8 or traditional).

    Raises:
        ValueError: not a PEM private key, encrypted, an RSA key under 2048 bits, or a key
            type or curve without a JWS algorithm here. The message never quotes the key.
    """
    try:
        key = load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ValueError("the private key is encrypted; give it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"the RSA key has {key.key_size} bits; use at least {_MIN_RSA_BITS}")
        return SigningKey(key, "RS256")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(f"the EC key is on curve {key.curve.name}; use P-256, P-384 or P-521")
        return SigningKey(key, algorithm)
    raise ValueError("use an RSA or EC private key")


def client_assertion(
    key_pem: bytes,
    client_id: str,
    audience: str,
    clock: IReactorTime,
    random: Callable[[int], bytes] = os.urandom,
) -> str:
    """A signed client assertion for ``audience`` (the token endpoint), RS256 or ES256 by key
    type. Parses the key each call: keep a :class:`SigningKey` to sign many.

    Raises:
        ValueError: as :func:`load_signing_key`.
    """
    return load_signing_key(key_pem).assertion(client_id, audience, clock, random)


def signing_key_from_config(config: Any) -> SigningKey | None:
    """The key of ``jwt_key`` (PEM text) or ``jwt_key_file`` (a file holding it); None if
    neither is set. Read once, at start-up.

    Raises:
        ConfigError: both are set, the file cannot be read, or the key is unusable.
    """
    text: str = config.jwt_key
    path: str = config.jwt_key_file
    if text and path:
        raise ConfigError(["jwt_key: both jwt_key and jwt_key_file are set; give only one"])
    if path:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError([f"jwt_key_file: cannot read {path}: {e.strerror or e}"]) from None
        where = "jwt_key_file"
    elif text:
        data = text.encode("utf-8")
        where = "jwt_key"
    else:
        return None
    try:
        return load_signing_key(data)
    except ValueError as e:
        raise ConfigError([f"{where}: {e}"]) from None

"""tidings' token issuer: signing keys, the JWT of a delivery, discovery and JWKS documents.

Every webhook request carries `Authorization: Bearer <JWT>`, signed RS256 by a
key of tidings' own, with `kid` (the key's RFC 7638 thumbprint). A receiver
verifies it through OIDC discovery: `<issuer>/.well-known/openid-configuration`
names the JWKS, which lists the public halves of the published keys. The private
halves live only in the database (PKCS#8 PEM, Fernet-encrypted when the operator
gives `TIDINGS_KEY_ENCRYPTION_KEY`) and are never logged or served.

Rotation. A key is *published* (in the JWKS) from `created_ns` until
`retires_ns`, and *signs* from `signs_from_ns`; the signer is the newest key
that signs now. Receivers cache the JWKS (we say `max-age=300`), so a new key
must be published for longer than that before it signs a token: `rotate(delay)`
adds a key that is published at once and signs only `delay` seconds later
(default 900 s, more than the cache time plus our own reload interval). The
keys it replaces keep being published until every token they signed has
expired: they retire at `new.signs_from + token lifetime + 60 s` of leeway for
clock skew. Keys retired already are deleted at each rotation. A receiver
holding any JWKS younger than its cache time therefore knows the kid of every
unexpired token, and one that refetches on an unknown kid never needs to.

Several processes may share the database (an API, workers, the `tidings keys`
command): each re-reads the keys at most every few seconds, so a rotation made
anywhere reaches every process long before the new key signs.

Tokens. The claims (`iss`, `sub = webhook:<group>`, `aud = customer`, `iat`,
`exp`, `jti`) do not depend on the event, and an RS256 signature costs about
0.25 ms of CPU, so a token is reused for every request to the same group for
`token_reuse_s` (60 s of its 300 s lifetime). `jti` names a token, not a
delivery: receivers must not treat it as a nonce (deduplicate by `Ce-Id`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
import structlog
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tidings.errors import TidingsError
from tidings.model import SigningKey
from tidings.storage.base import Storage

__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "DEFAULT_ROTATION_DELAY_S",
    "DISCOVERY_PATH",
    "ISSUER_URL_SETTING",
    "JWKS_MAX_AGE_S",
    "JWKS_PATH",
    "RELOAD_INTERVAL_S",
    "RETIRE_LEEWAY_S",
    "SAFE_ROTATION_DELAY_S",
    "Issuer",
    "IssuerError",
    "default_issuer_url",
    "jwk_thumbprint",
    "resolve_issuer_url",
    "stored_issuer_url",
]

log = structlog.get_logger("tidings.issuer")

NS = 1_000_000_000
ALGORITHM = "RS256"
AUDIENCE = "customer"
KEY_SIZE = 2048
ISSUER_URL_SETTING = "issuer_url"
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks.json"
JWKS_MAX_AGE_S = 300  # what the JWKS route tells caches; receivers may hold it this long
RELOAD_INTERVAL_S = 5  # how stale a process's view of the keys may be
RETIRE_LEEWAY_S = 60  # clock skew between tidings processes and receivers
SAFE_ROTATION_DELAY_S = JWKS_MAX_AGE_S + RELOAD_INTERVAL_S
DEFAULT_ROTATION_DELAY_S = 900
CLAIMS = ("iss", "sub", "aud", "iat", "exp", "jti")
_PUBLIC_FIELDS = ("kty", "n", "e")
_PEM_PREFIX = b"-----BEGIN "


class IssuerError(TidingsError):
    """The token issuer cannot work as configured."""

    code = "issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 thumbprint of an RSA JWK: base64url SHA-256 of its required members."""
    canonical = json.dumps(
        {name: jwk[name] for name in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _public_jwk(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    jwk: dict[str, Any] = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    return {"kid": jwk_thumbprint(jwk), **jwk, "alg": ALGORITHM, "use": "sig"}


def _normalize_url(url: str) -> str:
    """An issuer URL without a trailing slash; refuse what OIDC discovery cannot use."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise IssuerError(
            f"the issuer must be an http(s) URL without query or fragment, got {url!r}"
        )
    return url


def default_issuer_url(host: str, port: int) -> str:
    """The base URL of a server listening on `host:port` (a wildcard address becomes loopback)."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 (naming the wildcard, not binding it)
        host = "127.0.0.1"
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"http://{host}:{port}"


async def _resolve(storage: Storage, configured: str | None, default: str | None) -> str:
    stored = await storage.setting(ISSUER_URL_SETTING)
    if configured:
        url = _normalize_url(configured)
        if url != stored:
            if stored is not None:
                log.warning(
                    "issuer URL changed: receivers that pinned the old one will reject tokens",
                    old=stored,
                    new=url,
                )
            await storage.put_setting(ISSUER_URL_SETTING, url)
        return url
    if stored is not None:
        return stored
    if default is None:
        raise IssuerError(
            "no issuer URL: set TIDINGS_ISSUER, or start `tidings serve` on this database once"
        )
    # setting() with a default stores it only if no other process did first.
    first = await storage.setting(ISSUER_URL_SETTING, _normalize_url(default))
    assert first is not None
    return first


async def resolve_issuer_url(storage: Storage, configured: str | None, default: str) -> str:
    """The issuer URL, fixed the first time the database is served.

    `configured` (TIDINGS_ISSUER) wins and is stored; otherwise the stored URL;
    otherwise `default` (the server's own base URL) is stored and returned.
    """
    return await _resolve(storage, configured, default)


async def stored_issuer_url(storage: Storage, configured: str | None) -> str:
    """The issuer URL for a process that serves no HTTP (a worker): configured or stored, or fail."""
    return await _resolve(storage, configured, None)


@dataclass(frozen=True, slots=True)
class _CachedToken:
    token: str
    reuse_until_ns: int


class Issuer:
    """Signs delivery tokens and serves the documents that verify them."""

    def __init__(
        self,
        storage: Storage,
        issuer_url: str,
        clock: Callable[[], int],
        encryption_key: bytes | None,
        token_lifetime_s: int = 300,
        token_reuse_s: int = 60,
        reload_interval_s: int = RELOAD_INTERVAL_S,
    ):
        if not 0 <= token_reuse_s < token_lifetime_s:
            raise ValueError("token_reuse_s must be at least 0 and less than token_lifetime_s")
        self.storage = storage
        self.issuer_url = issuer_url.rstrip("/")
        self.clock = clock
        self.token_lifetime_s = token_lifetime_s
        self.token_reuse_s = token_reuse_s
        self.reload_interval_s = reload_interval_s
        self._fernet = _fernet(encryption_key)
        self._keys: list[SigningKey] = []
        self._loaded_ns: int | None = None
        self._reload_lock = asyncio.Lock()
        self._private: dict[str, rsa.RSAPrivateKey] = {}
        self._tokens: dict[tuple[str, str], _CachedToken] = {}

    def __repr__(self) -> str:
        return f"Issuer({self.issuer_url!r}, keys={[k.kid for k in self._keys]})"

    @property
    def keys(self) -> list[SigningKey]:
        """The keys as last read from storage, oldest first (see `_age`)."""
        return list(self._keys)

    async def reload(self) -> None:
        """Re-read the keys from storage now (another process may have rotated)."""
        now = self.clock()
        self._keys = sorted(await self.storage.signing_keys(), key=_age)
        self._loaded_ns = now
        kids = {key.kid for key in self._keys}
        self._private = {kid: key for kid, key in self._private.items() if kid in kids}
        self._tokens = {
            ident: cached for ident, cached in self._tokens.items() if now < cached.reuse_until_ns
        }

    async def refresh(self) -> None:
        """Reload the keys if the last read is older than the reload interval."""
        if self._stale():
            async with self._reload_lock:
                if self._stale():
                    await self.reload()

    def _stale(self) -> bool:
        return (
            self._loaded_ns is None or self.clock() - self._loaded_ns >= self.reload_interval_s * NS
        )

    async def ensure_key(self) -> None:
        """Make a first key, signing at once, if no key signs now; check it can be decrypted."""
        await self.reload()
        if self.signer(self.clock()) is None:
            now = self.clock()
            key = await self._new_key(now, now)
            await self.storage.add_signing_key(key, None)
            log.info("created the first signing key", kid=key.kid)
            await self.reload()
        signer = self.signer(self.clock())
        assert signer is not None
        self._private_key(signer)
        if self._fernet is not None and any(
            key.private_key.startswith(_PEM_PREFIX) for key in self._keys
        ):
            log.warning("some signing keys are stored unencrypted; rotate to replace them")

    async def rotate(self, delay_s: int) -> SigningKey:
        """Add a key published now that signs from now + `delay_s`; retire the keys it replaces.

        Earlier keys not yet scheduled retire once the last token they can sign
        has expired. Keys retired already are deleted. With no published key
        (a database never served), the new key signs at once. A delay shorter
        than `SAFE_ROTATION_DELAY_S` is allowed (an emergency), and the caller
        should warn: until it passes, receivers holding an older JWKS reject
        the new key's tokens.
        """
        if delay_s < 0:
            raise ValueError("the rotation delay cannot be negative")
        await self.reload()
        now = self.clock()
        signer = self.signer(now)
        if signer is not None:
            self._private_key(signer)  # refuse to mix keys encrypted under different secrets
        if not self._published(now):
            delay_s = 0
        key = await self._new_key(now, now + delay_s * NS)
        await self.storage.add_signing_key(key, self.retirement_ns(key))
        await self.storage.remove_retired_keys(now)
        await self.reload()
        return key

    def retirement_ns(self, key: SigningKey) -> int:
        """When the keys `key` replaces retire: once the last token they sign has expired."""
        return key.signs_from_ns + (self.token_lifetime_s + RETIRE_LEEWAY_S) * NS

    def signer(self, now_ns: int) -> SigningKey | None:
        """The key that signs at `now_ns`: the newest whose signing has begun and is not retired."""
        for key in reversed(self._keys):
            if key.signs_from_ns <= now_ns and (key.retires_ns is None or now_ns < key.retires_ns):
                return key
        return None

    def _published(self, now_ns: int) -> list[SigningKey]:
        return [
            key
            for key in self._keys
            if key.created_ns <= now_ns and (key.retires_ns is None or now_ns < key.retires_ns)
        ]

    def jwks(self, now_ns: int) -> dict[str, Any]:
        """The JWKS of the keys published at `now_ns`: public members only."""
        return {
            "keys": [
                {
                    "kid": key.kid,
                    **{name: key.public_jwk[name] for name in _PUBLIC_FIELDS},
                    "alg": ALGORITHM,
                    "use": "sig",
                }
                for key in self._published(now_ns)
            ]
        }

    def discovery(self) -> dict[str, Any]:
        """The OpenID Provider configuration document."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.issuer_url + JWKS_PATH,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "claims_supported": list(CLAIMS),
        }

    async def token_for(self, group: str) -> str:
        """The bearer token for a delivery to a subscription of `group` (reused for a while)."""
        await self.refresh()
        now = self.clock()
        key = self.signer(now)
        if key is None:
            raise IssuerError("no signing key signs now; the issuer was not started")
        cached = self._tokens.get((key.kid, group))
        if cached is not None and now < cached.reuse_until_ns:
            return cached.token
        iat = now // NS
        claims = {
            "iss": self.issuer_url,
            "sub": f"webhook:{group}",
            "aud": AUDIENCE,
            "iat": iat,
            "exp": iat + self.token_lifetime_s,
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(
            claims, self._private_key(key), algorithm=ALGORITHM, headers={"kid": key.kid}
        )
        self._tokens[(key.kid, group)] = _CachedToken(token, (iat + self.token_reuse_s) * NS)
        return token

    async def _new_key(self, created_ns: int, signs_from_ns: int) -> SigningKey:
        # Generating takes ~0.1 s of CPU: off the event loop.
        private = await asyncio.to_thread(
            rsa.generate_private_key, public_exponent=65537, key_size=KEY_SIZE
        )
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        jwk = _public_jwk(private)
        self._private[jwk["kid"]] = private
        return SigningKey(
            kid=jwk["kid"],
            private_key=pem if self._fernet is None else self._fernet.encrypt(pem),
            public_jwk=jwk,
            created_ns=created_ns,
            signs_from_ns=signs_from_ns,
        )

    def _private_key(self, key: SigningKey) -> rsa.RSAPrivateKey:
        """The private key of `key`, decrypted once and kept in memory."""
        private = self._private.get(key.kid)
        if private is None:
            private = _load_private(key, self._fernet)
            self._private[key.kid] = private
        return private


def _age(key: SigningKey) -> tuple[bool, int, int, str]:
    """Oldest first. A rotation schedules every earlier key, so an unscheduled key is newer
    than any scheduled one even when created in the same nanosecond."""
    return (key.retires_ns is None, key.created_ns, key.signs_from_ns, key.kid)


def _fernet(encryption_key: bytes | None) -> Fernet | None:
    if encryption_key is None:
        return None
    try:
        return Fernet(encryption_key)
    except (ValueError, TypeError) as exc:
        raise IssuerError(
            "TIDINGS_KEY_ENCRYPTION_KEY is not a Fernet key (32 url-safe base64-encoded bytes)"
        ) from exc


def _load_private(key: SigningKey, fernet: Fernet | None) -> rsa.RSAPrivateKey:
    stored = key.private_key
    if stored.startswith(_PEM_PREFIX):
        pem = stored  # stored before the operator gave an encryption key
    elif fernet is None:
        raise IssuerError(
            f"signing key {key.kid} is encrypted: set TIDINGS_KEY_ENCRYPTION_KEY to its key"
        )
    else:
        try:
            pem = fernet.decrypt(stored)
        except InvalidToken as exc:
            raise IssuerError(
                f"TIDINGS_KEY_ENCRYPTION_KEY does not decrypt signing key {key.kid}"
            ) from exc
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise IssuerError(f"signing key {key.kid} is not an RSA key")
    return private

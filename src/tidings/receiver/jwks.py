"""The issuer's public keys: found through OIDC discovery, cached, refetched sparingly.

`KeySet` fetches `<issuer>/.well-known/openid-configuration`, checks that it names
the issuer exactly, fetches the JWKS its `jwks_uri` names, and keeps the keys for
`max_age_s` (300 s, what tidings' issuer allows caches). A token whose `kid` is not
in the cached set triggers a refetch, at most once every `min_refresh_interval_s`
(60 s) whatever the traffic: a flood of tokens with invented `kid`s costs at most
one JWKS fetch a minute. tidings publishes a new key 900 s before it signs with it,
so a receiver never has to wait for that minute; an issuer that rotates abruptly
is seen within it.

A failed fetch keeps the keys fetched before (they verify the tokens they verified),
and is retried no sooner than a successful one would be.

Fetching is a plain function `fetch(url) -> bytes` (stdlib `urllib` by default), and
time a function `clock() -> seconds`: tests inject both to count fetches and move time.
The async path (`aget`) runs a needed fetch in a worker thread, so an event loop
never blocks on the network.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from .errors import KeysUnavailable, UnknownKey

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MIN_REFRESH_INTERVAL_S",
    "DISCOVERY_PATH",
    "Clock",
    "Fetch",
    "KeySet",
    "PublicKey",
    "urllib_fetch",
]

DISCOVERY_PATH = "/.well-known/openid-configuration"
DEFAULT_MAX_AGE_S = 300.0
DEFAULT_MIN_REFRESH_INTERVAL_S = 60.0
MAX_DOCUMENT_BYTES = 1 << 20
MIN_RSA_BITS = 2048
_CURVES = {"P-256", "P-384", "P-521"}
_OKP_CURVES = {"Ed25519", "Ed448"}

Fetch = Callable[[str], bytes]
Clock = Callable[[], float]


def urllib_fetch(url: str, timeout_s: float = 5.0, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
    """GET `url` with the standard library; the body of a 200, at most `max_bytes`."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"refusing to fetch a non-HTTP URL: {url!r}")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, headers={"Accept": "application/json", "User-Agent": "tidings-receiver"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
        if response.status != 200:
            raise ValueError(f"GET {url} answered {response.status}")
        body: bytes = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise ValueError(f"GET {url} answered more than {max_bytes} bytes")
    return body


@dataclass(frozen=True, slots=True)
class PublicKey:
    """One verification key of the issuer: its JWK members that matter, and the key itself."""

    kid: str
    kty: str
    alg: str | None
    crv: str | None
    key: Any  # a cryptography public key object


def _public_key(jwk: Mapping[str, Any]) -> PublicKey | None:
    """A usable signing key from a JWK, or None (wrong use, unknown type, too weak, broken)."""
    kid, kty, alg = jwk.get("kid"), jwk.get("kty"), jwk.get("alg")
    if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
        return None
    if alg is not None and not isinstance(alg, str):
        return None
    crv = jwk.get("crv")
    try:
        if kty == "RSA":
            key: Any = RSAAlgorithm.from_jwk({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]})
            if key.key_size < MIN_RSA_BITS:
                return None
        elif kty == "EC" and crv in _CURVES:
            key = ECAlgorithm.from_jwk({"kty": "EC", "crv": crv, "x": jwk["x"], "y": jwk["y"]})
        elif kty == "OKP" and crv in _OKP_CURVES:
            key = OKPAlgorithm.from_jwk({"kty": "OKP", "crv": crv, "x": jwk["x"]})
        else:
            return None
    except (KeyError, TypeError, ValueError, InvalidKeyError):
        return None
    return PublicKey(kid=kid, kty=kty, alg=alg, crv=crv if isinstance(crv, str) else None, key=key)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested past the stack
        raise KeysUnavailable(f"the {what} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise KeysUnavailable(f"the {what} is not a JSON object")
    return document


class KeySet:
    """The issuer's verification keys, cached; thread-safe, usable from sync and async code."""

    def __init__(
        self,
        issuer: str,
        *,
        fetch: Fetch | None = None,
        clock: Clock = time.time,
        jwks_uri: str | None = None,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        min_refresh_interval_s: float = DEFAULT_MIN_REFRESH_INTERVAL_S,
    ) -> None:
        if max_age_s < min_refresh_interval_s:
            raise ValueError("max_age_s must be at least min_refresh_interval_s")
        self.issuer = issuer
        self.discovery_url = issuer.rstrip("/") + DISCOVERY_PATH
        self._fetch = fetch or urllib_fetch
        self._clock = clock
        self._pinned_jwks_uri = jwks_uri
        self.max_age_s = max_age_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.jwks_fetches = 0  # attempts, successful or not
        self.discovery_fetches = 0
        self._jwks_uri: str | None = jwks_uri
        self._discovered_at: float | None = None
        self._keys: dict[str, PublicKey] | None = None
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_error: KeysUnavailable | None = None
        self._in_flight = False
        self._state = threading.Lock()
        self._fetching = threading.Lock()

    def __repr__(self) -> str:
        kids = None if self._keys is None else sorted(self._keys)
        return f"KeySet({self.issuer!r}, kids={kids})"

    @property
    def kids(self) -> list[str]:
        """The kids cached now (empty before the first fetch)."""
        with self._state:
            return sorted(self._keys or {})

    def get(self, kid: str) -> PublicKey:
        """The key named `kid`, fetching the JWKS if needed and allowed; blocks while fetching."""
        found = self._cached(kid)
        if found is not None:
            return found
        with self._fetching:  # one fetch at a time; those waiting then see its result
            with self._state:
                now = self._clock()
                key = None if self._keys is None else self._keys.get(kid)
                if key is not None and self._fresh(now):
                    return key
                if not self._may_fetch(now):  # fetched while we waited
                    return self._settle(kid)
            self._refresh_in_flight(now)
            with self._state:
                return self._settle(kid)

    def _refresh_in_flight(self, now: float) -> None:
        """Refresh, marked as in flight while it runs; the caller holds `_fetching`."""
        with self._state:
            self._attempted_at, self._in_flight = now, True
        try:
            self._refresh(now)
        finally:
            with self._state:
                self._in_flight = False

    async def aget(self, kid: str) -> PublicKey:
        """`get`, with any fetch run in a worker thread so that the event loop never blocks."""
        found = self._cached(kid)
        if found is not None:
            return found
        return await asyncio.to_thread(self.get, kid)

    def refresh(self) -> None:
        """Fetch the JWKS (and discovery if stale) now, whatever the rate limit; raise on failure."""
        with self._fetching:
            with self._state:
                now = self._clock()
            self._refresh_in_flight(now)
            with self._state:
                if self._last_error is not None:
                    raise self._unavailable()

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self.max_age_s

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.min_refresh_interval_s

    def _cached(self, kid: str) -> PublicKey | None:
        """The key if no fetch is due for it; None to take the fetching path; raise if refused."""
        with self._state:
            now = self._clock()
            key = None if self._keys is None else self._keys.get(kid)
            may_fetch = self._may_fetch(now)
            # A known key is used while stale if no fetch is allowed, or another is under way.
            if key is not None and (self._fresh(now) or not may_fetch or self._in_flight):
                return key
            if may_fetch or self._in_flight:
                return None
            return self._refuse(kid)

    def _settle(self, kid: str) -> PublicKey:
        """With no fetch allowed: the cached key, or why there is none. Caller holds _state."""
        key = None if self._keys is None else self._keys.get(kid)
        if key is not None:
            return key
        return self._refuse(kid)

    def _refuse(self, kid: str) -> PublicKey:
        if self._keys is None or self._last_error is not None:
            raise self._unavailable()
        age = 0.0 if self._fetched_at is None else self._clock() - self._fetched_at
        raise UnknownKey(
            f"kid {kid!r} is not in the issuer's key set (fetched {age:.0f} s ago; refetched at "
            f"most every {self.min_refresh_interval_s:.0f} s)",
            kid=kid,
        )

    def _unavailable(self) -> KeysUnavailable:
        """A fresh error for each caller, saying why the last fetch failed."""
        last = self._last_error
        if last is None:
            return KeysUnavailable("the issuer's keys were never fetched")
        return KeysUnavailable(last.message, **last.details)

    def _refresh(self, now: float) -> None:
        """Fetch and record the result; the caller holds _fetching and set _attempted_at."""
        try:
            keys = self._load(now)
        except KeysUnavailable as exc:
            with self._state:
                self._last_error = exc
            return
        with self._state:
            self._keys, self._fetched_at, self._last_error = keys, now, None

    def _load(self, now: float) -> dict[str, PublicKey]:
        jwks_uri = self._discover(now)
        self.jwks_fetches += 1
        document = _json_object(self._get(jwks_uri, "JWKS"), "JWKS")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise KeysUnavailable(f"the JWKS at {jwks_uri} has no 'keys' list")
        keys: dict[str, PublicKey] = {}
        duplicated: set[str] = set()
        for entry in entries:
            key = _public_key(entry) if isinstance(entry, dict) else None
            if key is None:
                continue
            if key.kid in keys:
                duplicated.add(key.kid)  # ambiguous: trust neither
            keys[key.kid] = key
        return {kid: key for kid, key in keys.items() if kid not in duplicated}

    def _discover(self, now: float) -> str:
        """The JWKS URL: pinned, or from a discovery document younger than max_age_s."""
        if self._pinned_jwks_uri is not None:
            return self._pinned_jwks_uri
        if (
            self._jwks_uri is not None
            and self._discovered_at is not None
            and now - self._discovered_at < self.max_age_s
        ):
            return self._jwks_uri
        self.discovery_fetches += 1
        try:
            document = _json_object(
                self._get(self.discovery_url, "discovery document"), "discovery document"
            )
        except KeysUnavailable:
            if self._jwks_uri is not None:
                return self._jwks_uri  # keep using the last one we were told
            raise
        if document.get("issuer") != self.issuer:
            raise KeysUnavailable(
                f"the discovery document at {self.discovery_url} names issuer "
                f"{document.get('issuer')!r}, not {self.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        scheme = urlsplit(jwks_uri).scheme if isinstance(jwks_uri, str) else ""
        allowed = ("https",) if urlsplit(self.issuer).scheme == "https" else ("https", "http")
        if not isinstance(jwks_uri, str) or scheme not in allowed:
            raise KeysUnavailable(f"the discovery document names no usable jwks_uri: {jwks_uri!r}")
        self._jwks_uri, self._discovered_at = jwks_uri, now
        return jwks_uri

    def _get(self, url: str, what: str) -> bytes:
        try:
            return self._fetch(url)
        except Exception as exc:  # any failure to fetch means the same thing here
            raise KeysUnavailable(f"cannot fetch the {what} at {url}: {exc}", url=url) from exc

"""`Verifier`: everything a receiver must check before it trusts a delivery.

In this order, each failure its own exception (see `tidings.receiver.errors`):

1. a single `Authorization: Bearer <JWT>` header, three base64url parts of JSON;
2. on the *unverified* claims, as the Chainguard documents advise: `iss` is exactly
   the configured issuer and `sub` is `webhook:` + an expected group. Traffic from
   elsewhere is refused here, before any key is fetched;
3. the header: `alg` in an allow-list of asymmetric algorithms (never `none` or
   `HS*`), no `jwk`/`jku`/`x5u`/`x5c` (a token does not choose its own key), no
   `crit`/`b64`, and a `kid`;
4. the key: `kid` in the issuer's JWKS, found through discovery and cached (see
   `tidings.receiver.jwks`); `alg` must fit its type, curve and declared `alg`;
5. the signature;
6. the claims: `aud`, `exp`, `nbf`, `iat` (at most 60 s of leeway), and a lifetime
   `exp - iat` no longer than `max_lifetime_s`;
7. with a `signing_secret`, the Standard Webhooks signature over the body;
8. the `Ce-*` headers and the body form a valid CloudEvent whose `Ce-Group` lies
   inside the token's group.

The token does not cover the body or the `Ce-*` headers: it proves the request
came from the issuer for that group within the token's lifetime, and a token is
reused for a minute of deliveries. Only a Standard Webhooks signature binds the body.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms

from .errors import (
    AlgorithmKeyMismatch,
    BadSignature,
    BodyTooLarge,
    DisallowedAlgorithm,
    DisallowedHeader,
    Expired,
    ForbiddenGroup,
    LifetimeTooLong,
    MalformedToken,
    MissingClaim,
    MissingToken,
    NotYetValid,
    UnknownKey,
    UntrustedIssuer,
    WrongAudience,
)
from .event import (
    Event,
    HeadersLike,
    TokenClaims,
    is_group,
    lower_headers,
    parse_event,
)
from .jwks import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MIN_REFRESH_INTERVAL_S,
    Clock,
    Fetch,
    KeySet,
    PublicKey,
)
from .standard_webhooks import DEFAULT_TOLERANCE_S, secret_key, verify_signature

__all__ = [
    "ALLOWED_ALGORITHMS",
    "DEFAULT_AUDIENCE",
    "DEFAULT_MAX_LIFETIME_S",
    "MAX_LEEWAY_S",
    "SUBJECT_PREFIX",
    "Verifier",
]

DEFAULT_AUDIENCE = "customer"
SUBJECT_PREFIX = "webhook:"
MAX_LEEWAY_S = 60
DEFAULT_MAX_LIFETIME_S = 600  # tidings' tokens live 300 s
DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_TOKEN_BYTES = 16 * 1024
ALLOWED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_KEY_TYPE = {alg: "RSA" for alg in ALLOWED_ALGORITHMS if alg[:2] in ("RS", "PS")} | {
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
# Headers that would let a token name its own key, or change how it is to be read.
_FORBIDDEN_HEADERS = ("jwk", "jku", "x5u", "x5c", "crit", "b64")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64decode(segment: str, what: str) -> bytes:
    if _B64URL.fullmatch(segment) is None or len(segment) % 4 == 1:
        raise MalformedToken(f"the token's {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedToken(f"the token's {what} is not base64url") from exc


def _json_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment, what))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested past the stack
        raise MalformedToken(f"the token's {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedToken(f"the token's {what} is not a JSON object")
    return value


def _number(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise MissingClaim(f"the token has no {name} claim", claim=name)
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedToken(f"the {name} claim must be a number, got {value!r}")
    if (isinstance(value, int) and abs(value) >= 2**63) or not math.isfinite(value):
        raise MalformedToken(f"the {name} claim is not a time in seconds, got {value!r}")
    return float(value)


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        raise MissingClaim(f"the token has no {name} claim", claim=name)
    if not isinstance(value, str):
        raise MalformedToken(f"the {name} claim must be a string, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class _Token:
    """A token split and decoded, not yet trusted."""

    signing_input: bytes
    signature: bytes
    header: dict[str, Any]
    claims: dict[str, Any]
    group: str
    kid: str
    alg: str


class Verifier:
    """Verifies deliveries from one issuer to one or more groups.

    `Verifier("https://tidings.example.com", "0475f6baca584a8964a6bce6b74dbe78dd8805b6")`
    then `verifier.verify(headers, body)` (or `await verifier.averify(...)`) returns the
    `Event` or raises a `VerificationError` whose `status` is the HTTP answer.
    """

    def __init__(
        self,
        issuer: str,
        groups: str | Iterable[str],
        *,
        audience: str = DEFAULT_AUDIENCE,
        algorithms: Sequence[str] = ALLOWED_ALGORITHMS,
        leeway_s: float = MAX_LEEWAY_S,
        max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S,
        signing_secret: str | Sequence[str] | None = None,
        webhook_tolerance_s: float = DEFAULT_TOLERANCE_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        fetch: Fetch | None = None,
        clock: Clock = time.time,
        jwks_uri: str | None = None,
        jwks_max_age_s: float = DEFAULT_MAX_AGE_S,
        min_refresh_interval_s: float = DEFAULT_MIN_REFRESH_INTERVAL_S,
        keys: KeySet | None = None,
    ) -> None:
        if not issuer:
            raise ValueError("the issuer URL is required")
        self.issuer = issuer
        self.groups = frozenset([groups] if isinstance(groups, str) else groups)
        if not self.groups:
            raise ValueError("at least one expected group is required")
        bad = sorted(group for group in self.groups if not is_group(group))
        if bad:
            raise ValueError(f"not group paths: {bad}")
        unsafe = sorted(set(algorithms) - set(ALLOWED_ALGORITHMS))
        if unsafe or not algorithms:
            raise ValueError(
                f"only asymmetric algorithms may be allowed ({', '.join(ALLOWED_ALGORITHMS)}); "
                f"got {unsafe or 'none'}"
            )
        if not 0 <= leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"leeway_s must be between 0 and {MAX_LEEWAY_S}")
        if not (max_lifetime_s > 0 and math.isfinite(max_lifetime_s)):  # NaN passes `<= 0`
            raise ValueError("max_lifetime_s must be a positive number")
        self.audience = audience
        self.algorithms = tuple(algorithms)
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        secrets = [signing_secret] if isinstance(signing_secret, str) else signing_secret
        self.signing_secrets = tuple(secrets or ())
        for secret in self.signing_secrets:
            secret_key(secret)  # fail now, not on the first delivery
        self.webhook_tolerance_s = webhook_tolerance_s
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.keys = keys or KeySet(
            issuer,
            fetch=fetch,
            clock=clock,
            jwks_uri=jwks_uri,
            max_age_s=jwks_max_age_s,
            min_refresh_interval_s=min_refresh_interval_s,
        )
        defaults = get_default_algorithms()
        self._algorithms: dict[str, Algorithm] = {name: defaults[name] for name in self.algorithms}

    def __repr__(self) -> str:
        return (
            f"Verifier({self.issuer!r}, groups={sorted(self.groups)}, audience={self.audience!r})"
        )

    def verify(self, headers: HeadersLike, body: bytes) -> Event:
        """The verified event of a delivery; raises a VerificationError saying what failed.

        May fetch the issuer's discovery document and JWKS (blocking); see `averify`.
        """
        lowered = lower_headers(headers)
        token = self._precheck(lowered, body)
        return self._finish(token, self.keys.get(token.kid), lowered, body)

    async def averify(self, headers: HeadersLike, body: bytes) -> Event:
        """`verify` for async code: a key fetch runs in a worker thread, not on the event loop."""
        lowered = lower_headers(headers)
        token = self._precheck(lowered, body)
        return self._finish(token, await self.keys.aget(token.kid), lowered, body)

    # --- the steps ------------------------------------------------------------------------------

    def _precheck(self, headers: Mapping[str, list[str]], body: bytes) -> _Token:
        """Everything that needs no key: the token's form, iss, sub and header."""
        if len(body) > self.max_body_bytes:
            raise BodyTooLarge(f"the body is larger than {self.max_body_bytes} bytes")
        raw = self._bearer(headers)
        parts = raw.split(".")
        if len(parts) != 3:
            raise MalformedToken(f"a JWT has 3 dot-separated parts; this one has {len(parts)}")
        header = _json_segment(parts[0], "header")
        claims = _json_segment(parts[1], "payload")
        signature = _b64decode(parts[2], "signature")
        # iss and sub first, unverified: refuse traffic not meant for us before any fetch.
        iss = _string(claims, "iss")
        if iss != self.issuer:
            raise UntrustedIssuer(
                f"iss is {iss!r}, not {self.issuer!r}", iss=iss, sub=claims.get("sub")
            )
        sub = _string(claims, "sub")
        group = sub.removeprefix(SUBJECT_PREFIX)
        if not sub.startswith(SUBJECT_PREFIX) or group not in self.groups:
            raise ForbiddenGroup(
                f"sub is {sub!r}; this receiver takes "
                + ", ".join(f"{SUBJECT_PREFIX}{g}" for g in sorted(self.groups)),
                iss=iss,
                sub=sub,
            )
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise DisallowedAlgorithm(
                f"alg {alg!r} is not allowed (allowed: {', '.join(self.algorithms)})", alg=alg
            )
        present = [name for name in _FORBIDDEN_HEADERS if name in header]
        if present:
            raise DisallowedHeader(
                f"the token carries {', '.join(present)}: keys come only from the issuer's JWKS",
                headers=present,
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise UnknownKey("the token names no key (kid)")
        return _Token(
            signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
            signature=signature,
            header=header,
            claims=claims,
            group=group,
            kid=kid,
            alg=alg,
        )

    @staticmethod
    def _bearer(headers: Mapping[str, list[str]]) -> str:
        values = headers.get("authorization") or []
        if not values:
            raise MissingToken("no Authorization header")
        if len(values) > 1:
            raise MalformedToken("more than one Authorization header")
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise MissingToken("the Authorization header holds no Bearer token")
        if len(token) > MAX_TOKEN_BYTES:
            raise MalformedToken(f"the token is longer than {MAX_TOKEN_BYTES} characters")
        return token

    def _finish(
        self, token: _Token, key: PublicKey, headers: Mapping[str, list[str]], body: bytes
    ) -> Event:
        self._check_signature(token, key)
        claims = self._check_claims(token)
        webhook_id = None
        if self.signing_secrets:
            webhook_id = verify_signature(
                self.signing_secrets, headers, body, self.clock(), self.webhook_tolerance_s
            )
        return parse_event(headers, body, claims, webhook_id)

    def _check_signature(self, token: _Token, key: PublicKey) -> None:
        if _KEY_TYPE[token.alg] != key.kty or (key.alg is not None and key.alg != token.alg):
            raise AlgorithmKeyMismatch(
                f"alg {token.alg} does not fit key {key.kid} ({key.kty}, alg {key.alg})",
                alg=token.alg,
                kid=key.kid,
            )
        if token.alg in _CURVE and key.crv != _CURVE[token.alg]:
            raise AlgorithmKeyMismatch(f"alg {token.alg} needs curve {_CURVE[token.alg]}")
        if not self._algorithms[token.alg].verify(token.signing_input, key.key, token.signature):
            raise BadSignature(f"the signature does not verify with key {key.kid}", kid=key.kid)

    def _check_claims(self, token: _Token) -> TokenClaims:
        claims, now, leeway = token.claims, self.clock(), self.leeway_s
        audience = claims.get("aud")
        if audience is None:
            raise MissingClaim("the token has no aud claim", claim="aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not audiences or not all(isinstance(a, str) for a in audiences):
            raise MalformedToken(f"the aud claim must be a string or strings, got {audience!r}")
        if self.audience not in audiences:
            raise WrongAudience(f"aud is {audience!r}, not {self.audience!r}", aud=audience)
        exp = _number(claims, "exp", required=True)
        iat = _number(claims, "iat", required=True)
        nbf = _number(claims, "nbf", required=False)
        assert exp is not None
        assert iat is not None
        if now >= exp + leeway:
            raise Expired(f"the token expired {now - exp:.0f} s ago", exp=exp)
        if nbf is not None and nbf > now + leeway:
            raise NotYetValid(f"nbf is {nbf - now:.0f} s in the future", nbf=nbf)
        if iat > now + leeway:
            raise NotYetValid(f"iat is {iat - now:.0f} s in the future", iat=iat)
        if exp <= iat:
            raise MalformedToken("exp is not after iat")
        if exp - iat > self.max_lifetime_s:
            raise LifetimeTooLong(
                f"the token lives {exp - iat:.0f} s; at most {self.max_lifetime_s:.0f} s is allowed"
            )
        jti = claims.get("jti")
        return TokenClaims(
            issuer=self.issuer,
            subject=SUBJECT_PREFIX + token.group,
            group=token.group,
            audience=audience,
            issued_at=int(iat),
            expires_at=int(exp),
            jti=jti if isinstance(jti, str) else None,
            kid=token.kid,
            algorithm=token.alg,
            raw=claims,
        )

"""The receiver library: every forged or broken delivery is refused with its own error.

Tokens are minted by a real `tidings.issuer.Issuer` on a real SQLite database, or
forged with PyJWT and cryptography. The verifier fetches the issuer's real discovery
and JWKS documents through an injected fetch function that counts what it fetches,
and shares the issuer's fake clock.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import math
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from standardwebhooks.webhooks import Webhook

from tests.receivers import Received
from tests.servers import TIDINGS, tidings_env
from tidings import wire
from tidings.delivery.request import webhook_request
from tidings.issuer import DISCOVERY_PATH, JWKS_PATH, Issuer
from tidings.model import StoredEvent
from tidings.receiver import (
    AlgorithmKeyMismatch,
    BadSignature,
    BadWebhookSignature,
    DisallowedAlgorithm,
    DisallowedHeader,
    EventOutsideGroup,
    Expired,
    ForbiddenGroup,
    InvalidEvent,
    KeysUnavailable,
    LifetimeTooLong,
    MalformedToken,
    MissingClaim,
    MissingToken,
    NotYetValid,
    UnknownKey,
    UntrustedIssuer,
    VerificationError,
    Verifier,
    WrongAudience,
)
from tidings.storage.sqlite import SQLiteStorage

NS = 1_000_000_000
ISSUER = "https://tidings.example"
ROOT = "0475f6baca584a8964a6bce6b74dbe78dd8805b6"
TEAM = f"{ROOT}/b74ce966caf448d1"
SIBLING = f"{ROOT}/dda9aab2d2d90f9e"
POLICY = "dev.chainguard.policy.validation.changed.v1"


class FakeClock:
    """Nanoseconds that move only when told; `seconds` is the verifier's view of it."""

    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def __call__(self) -> int:
        return self.now

    def seconds(self) -> float:
        """The time in seconds."""
        return self.now / NS

    def advance(self, seconds: float) -> None:
        """Move forward."""
        self.now += int(seconds * NS)


class Documents:
    """Serves an issuer's discovery document and JWKS to the verifier, counting fetches."""

    def __init__(self, issuer: Issuer, clock: FakeClock, fail: bool = False) -> None:
        self.issuer, self.clock, self.fail = issuer, clock, fail
        self.fetched: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.fetched.append(url)
        if self.fail:
            raise OSError("connection refused")
        if url == self.issuer.issuer_url + DISCOVERY_PATH:
            return json.dumps(self.issuer.discovery()).encode()
        if url == self.issuer.issuer_url + JWKS_PATH:
            return json.dumps(self.issuer.jwks(self.clock())).encode()
        raise OSError(f"404 {url}")

    @property
    def jwks_fetches(self) -> int:
        """How many times the JWKS was fetched."""
        return sum(url.endswith(JWKS_PATH) for url in self.fetched)


def stored_event(group: str, **fields: Any) -> StoredEvent:
    """An event as tidings stores it, ready for `webhook_request`."""
    event_id = fields.pop("id", str(uuid.uuid4()))
    data = fields.pop(
        "data", {"actor": {"subject": "user-1"}, "body": {"cluster_id": "c1", "image_id": "i1"}}
    )
    attributes = {
        "specversion": "1.0",
        "id": event_id,
        "source": "k8s://cluster-id",
        "type": POLICY,
        "subject": f"{group}/1a4b29ca6df80013",
        "time": "2026-11-01T12:00:00.123456789Z",
        "datacontenttype": "application/json",
        "group": group,
        "audience": "customer",
        **fields,
    }
    return StoredEvent(
        position=1,
        id=event_id,
        source=attributes["source"],
        type=attributes["type"],
        group=group,
        attributes=json.dumps(attributes),
        data=wire.dumps(data),
    )


def delivery(
    token: str,
    group: str = TEAM,
    secret: str | None = None,
    now_s: int | None = None,
    **fields: Any,
) -> tuple[dict[str, str], bytes]:
    """The headers and body tidings sends for an event of `group` with `token`."""
    now = int(time.time()) if now_s is None else now_s
    return webhook_request(stored_event(group, **fields), token, "msg_1", secret, now)


def b64(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A token's header, claims and signature segment."""
    head, body, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(head))),
        json.loads(base64.urlsafe_b64decode(pad(body))),
        signature,
    )


def assemble(header: dict[str, Any], claims: dict[str, Any], signature: str) -> str:
    """A compact token from parts, as written (no re-signing)."""
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), signature])


@functools.cache
def attacker_rsa() -> rsa.RSAPrivateKey:
    """An RSA key that is not the issuer's (made once)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at the real time (tidings' `tidings keys rotate` stamps real time)."""
    return FakeClock(time.time_ns())


@pytest.fixture(scope="session")
def template_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database holding one signing key, made once and copied for each test."""
    path = tmp_path_factory.mktemp("template") / "tidings.db"

    async def make() -> None:
        store = SQLiteStorage(str(path))
        await store.open()
        try:
            await Issuer(store, ISSUER, time.time_ns, None).ensure_key()
        finally:
            await store.close()

    asyncio.run(make())
    return path


@pytest.fixture
async def storage(tmp_path: Path, template_database: Path) -> AsyncIterator[SQLiteStorage]:
    """A real SQLite database (a copy of the template), opened."""
    shutil.copyfile(template_database, tmp_path / "tidings.db")
    store = SQLiteStorage(str(tmp_path / "tidings.db"))
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def issuer(storage: SQLiteStorage, clock: FakeClock) -> Issuer:
    """A real issuer on the fake clock, with its first key."""
    made = Issuer(storage, ISSUER, clock, None)
    await made.reload()  # the template's key; its private half is loaded when it first signs
    return made


@pytest.fixture
def documents(issuer: Issuer, clock: FakeClock) -> Documents:
    """The issuer's documents, as fetched by the verifier."""
    return Documents(issuer, clock)


@pytest.fixture
def verifier(documents: Documents, clock: FakeClock) -> Verifier:
    """A verifier for deliveries to TEAM from the issuer."""
    return Verifier(ISSUER, TEAM, fetch=documents, clock=clock.seconds)


@pytest.fixture
async def signing_key(storage: SQLiteStorage, issuer: Issuer) -> tuple[str, rsa.RSAPrivateKey]:
    """The issuer's kid and private key, read from its database (to forge with the real key)."""
    (key,) = await storage.signing_keys()
    private = serialization.load_pem_private_key(
        key.private_key, password=None, unsafe_skip_rsa_key_validation=True
    )
    assert isinstance(private, rsa.RSAPrivateKey)
    return key.kid, private


def claims_now(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    """Claims like the issuer's, for TEAM, issued now; `overrides` replace (None removes)."""
    now = clock() // NS
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": f"webhook:{TEAM}",
        "aud": "customer",
        "iat": now,
        "exp": now + 300,
        "jti": "j1",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def expect(verifier: Verifier, error: type[VerificationError], status: int, token: str) -> None:
    """Verifying a delivery carrying `token` raises exactly `error` with `status`."""
    headers, body = delivery(token)
    with pytest.raises(VerificationError) as caught:
        verifier.verify(headers, body)
    assert type(caught.value) is error, caught.value
    assert caught.value.status == status


# --- what is accepted --------------------------------------------------------------------------


async def test_a_real_delivery_verifies_into_a_typed_event(
    issuer: Issuer, verifier: Verifier
) -> None:
    """A delivery in tidings' wire format gives its attributes, actor, body and token claims."""
    headers, body = delivery(await issuer.token_for(TEAM), id="e-1", requestid="r%1")
    event = verifier.verify(headers, body)
    assert (event.id, event.type, event.source) == ("e-1", POLICY, "k8s://cluster-id")
    assert event.group == TEAM
    assert event.subject == f"{TEAM}/1a4b29ca6df80013"
    assert event.time == "2026-11-01T12:00:00.123456789Z"
    assert event.timestamp is not None
    assert event.timestamp.microsecond == 123456
    assert event.actor.subject == "user-1"
    assert event.body == {"cluster_id": "c1", "image_id": "i1"}
    assert event.extensions == {"requestid": "r%1"}
    assert event.claims.group == TEAM
    assert event.claims.kid == issuer.keys[0].kid
    assert event.raw_body == body


async def test_headers_are_matched_whatever_their_case(issuer: Issuer, verifier: Verifier) -> None:
    """Lowercased header names (as HTTP/2 and most frameworks give them) verify the same."""
    headers, body = delivery(await issuer.token_for(TEAM), id="e-2")
    assert verifier.verify({k.lower(): v for k, v in headers.items()}, body).id == "e-2"


async def test_an_event_of_a_group_below_the_tokens_is_accepted(
    issuer: Issuer, documents: Documents, clock: FakeClock
) -> None:
    """A subscription of ROOT receives its subgroups' events: Ce-Group below the token's group."""
    verifier = Verifier(ISSUER, ROOT, fetch=documents, clock=clock.seconds)
    headers, body = delivery(await issuer.token_for(ROOT), group=TEAM)
    assert verifier.verify(headers, body).group == TEAM


async def test_exp_within_the_leeway_is_accepted(
    verifier: Verifier, clock: FakeClock, signing_key: tuple[str, rsa.RSAPrivateKey]
) -> None:
    """A token that expired 59 s ago still verifies (60 s of leeway for clock skew)."""
    kid, key = signing_key
    now = clock() // NS
    token = jwt.encode(
        claims_now(clock, iat=now - 300, exp=now - 59), key, "RS256", headers={"kid": kid}
    )
    headers, body = delivery(token)
    assert verifier.verify(headers, body).claims.expires_at == now - 59


async def test_averify_verifies_like_verify(issuer: Issuer, verifier: Verifier) -> None:
    """The async path gives the same event."""
    headers, body = delivery(await issuer.token_for(TEAM), id="e-3")
    assert (await verifier.averify(headers, body)).id == "e-3"


# --- what is refused: the token ----------------------------------------------------------------


async def test_no_token_is_refused(issuer: Issuer, verifier: Verifier) -> None:
    """Without an Authorization header: MissingToken, 401."""
    headers, body = delivery(await issuer.token_for(TEAM))
    del headers["Authorization"]
    with pytest.raises(MissingToken) as caught:
        verifier.verify(headers, body)
    assert caught.value.status == 401


async def test_a_basic_credential_is_not_a_bearer_token(issuer: Issuer, verifier: Verifier) -> None:
    """`Authorization: Basic ...`: MissingToken."""
    headers, body = delivery(await issuer.token_for(TEAM))
    headers["Authorization"] = "Basic dXNlcjpwYXNz"
    with pytest.raises(MissingToken):
        verifier.verify(headers, body)


_NESTED = base64.urlsafe_b64encode(b"[" * 12_000).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d.e",
        "!!.??.xx",
        "e30.bm90IGpzb24.AA",
        f"{_NESTED}.e30.AA",  # nested past Python's stack: was a 500
        f"e30.{_NESTED}.AA",
    ],
    ids=["one", "two", "five", "not-base64", "not-json", "nested-header", "nested-claims"],
)
def test_malformed_tokens_are_refused(verifier: Verifier, token: str) -> None:
    """Not three base64url parts of JSON objects: MalformedToken, 401."""
    expect(verifier, MalformedToken, 401, token)


async def test_two_authorization_headers_are_refused(issuer: Issuer, verifier: Verifier) -> None:
    """A request with two Authorization headers is ambiguous: MalformedToken."""
    headers, body = delivery(await issuer.token_for(TEAM))
    pairs = [*headers.items(), ("authorization", headers["Authorization"])]
    with pytest.raises(MalformedToken):
        verifier.verify(pairs, body)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused_in_any_case(verifier: Verifier, clock: FakeClock, alg: str) -> None:
    """An unsigned token (`alg: none`, any spelling): DisallowedAlgorithm, 401."""
    token = assemble({"alg": alg, "typ": "JWT"}, claims_now(clock), "")
    expect(verifier, DisallowedAlgorithm, 401, token)


def test_hs256_keyed_with_the_issuers_public_key_is_refused(
    verifier: Verifier,
    documents: Documents,
    clock: FakeClock,
    signing_key: tuple[str, rsa.RSAPrivateKey],
) -> None:
    """The key-confusion attack (HS256 with the public key PEM as secret): DisallowedAlgorithm."""
    kid, key = signing_key
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    payload = b64(json.dumps(claims_now(clock)).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    expect(verifier, DisallowedAlgorithm, 401, f"{header}.{payload}.{b64(mac)}")
    assert documents.fetched == []


async def test_a_stripped_signature_is_refused(issuer: Issuer, verifier: Verifier) -> None:
    """The issuer's token with its signature removed: BadSignature, 401."""
    header, claims, _ = segments(await issuer.token_for(TEAM))
    expect(verifier, BadSignature, 401, assemble(header, claims, ""))


async def test_a_payload_edited_under_the_original_signature_is_refused(
    issuer: Issuer, verifier: Verifier
) -> None:
    """A sibling's genuine token with `sub` rewritten to ours: BadSignature, 401."""
    header, claims, signature = segments(await issuer.token_for(SIBLING))
    claims["sub"] = f"webhook:{TEAM}"
    expect(verifier, BadSignature, 401, assemble(header, claims, signature))


async def test_an_extended_expiry_under_the_original_signature_is_refused(
    issuer: Issuer, verifier: Verifier
) -> None:
    """The issuer's token with `exp` pushed an hour later: BadSignature."""
    header, claims, signature = segments(await issuer.token_for(TEAM))
    claims["exp"] += 3600
    expect(verifier, BadSignature, 401, assemble(header, claims, signature))


def test_a_kid_not_in_the_jwks_is_refused(
    verifier: Verifier, clock: FakeClock, signing_key: tuple[str, rsa.RSAPrivateKey]
) -> None:
    """A token signed by the real key but naming an unknown kid: UnknownKey, 401."""
    _, key = signing_key
    token = jwt.encode(claims_now(clock), key, "RS256", headers={"kid": "not-a-published-kid"})
    expect(verifier, UnknownKey, 401, token)


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c"])
def test_a_token_that_names_its_own_key_is_refused(
    verifier: Verifier,
    documents: Documents,
    clock: FakeClock,
    signing_key: tuple[str, rsa.RSAPrivateKey],
    name: str,
) -> None:
    """A `jwk`, `jku`, `x5u` or `x5c` header pointing elsewhere: DisallowedHeader, no fetch."""
    kid, _ = signing_key
    attacker = attacker_rsa()
    value: Any = {
        "jwk": json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key())),
        "jku": "https://evil.example/jwks.json",
        "x5u": "https://evil.example/cert.pem",
        "x5c": ["MIIB"],
    }[name]
    token = jwt.encode(claims_now(clock), attacker, "RS256", headers={"kid": kid, name: value})
    expect(verifier, DisallowedHeader, 401, token)
    assert documents.fetched == []


async def test_an_algorithm_that_does_not_fit_the_key_is_refused(
    verifier: Verifier, clock: FakeClock, signing_key: tuple[str, rsa.RSAPrivateKey]
) -> None:
    """PS256 by the real RSA key whose JWK says RS256: AlgorithmKeyMismatch, 401."""
    kid, key = signing_key
    token = jwt.encode(claims_now(clock), key, "PS256", headers={"kid": kid})
    expect(verifier, AlgorithmKeyMismatch, 401, token)


def test_an_ec_algorithm_naming_an_rsa_key_is_refused(
    verifier: Verifier, clock: FakeClock, signing_key: tuple[str, rsa.RSAPrivateKey]
) -> None:
    """ES256 naming the issuer's RSA kid: AlgorithmKeyMismatch."""
    kid, _ = signing_key
    token = jwt.encode(
        claims_now(clock), ec.generate_private_key(ec.SECP256R1()), "ES256", headers={"kid": kid}
    )
    expect(verifier, AlgorithmKeyMismatch, 401, token)


@pytest.mark.parametrize(
    "iss", [f"{ISSUER}/", "https://evil.example", "http://tidings.example", ISSUER.upper()]
)
def test_another_issuer_is_refused_before_any_fetch(
    verifier: Verifier,
    documents: Documents,
    clock: FakeClock,
    signing_key: tuple[str, rsa.RSAPrivateKey],
    iss: str,
) -> None:
    """`iss` with a trailing slash or another host or scheme: UntrustedIssuer, and nothing fetched."""
    kid, key = signing_key
    token = jwt.encode(claims_now(clock, iss=iss), key, "RS256", headers={"kid": kid})
    expect(verifier, UntrustedIssuer, 401, token)
    assert documents.fetched == []


async def test_a_sibling_groups_token_is_forbidden_before_any_fetch(
    issuer: Issuer, verifier: Verifier, documents: Documents
) -> None:
    """A genuine token for a sibling group: ForbiddenGroup, 403, and nothing fetched."""
    expect(verifier, ForbiddenGroup, 403, await issuer.token_for(SIBLING))
    assert documents.fetched == []


async def test_the_parent_groups_token_is_forbidden(issuer: Issuer, verifier: Verifier) -> None:
    """`sub` must name an expected group exactly: the parent's token is ForbiddenGroup too."""
    expect(verifier, ForbiddenGroup, 403, await issuer.token_for(ROOT))


def test_a_subject_that_is_not_a_webhook_is_forbidden(
    verifier: Verifier, clock: FakeClock, signing_key: tuple[str, rsa.RSAPrivateKey]
) -> None:
    """A token of the same issuer for something else (`sub: <group>` alone): ForbiddenGroup."""
    kid, key = signing_key
    token = jwt.encode(claims_now(clock, sub=TEAM), key, "RS256", headers={"kid": kid})
    expect(verifier, ForbiddenGroup, 403, token)


async def test_another_issuers_key_is_refused(
    tmp_path: Path, verifier: Verifier, clock: FakeClock, signing_key: tuple[str, rsa.RSAPrivateKey]
) -> None:
    """An impostor tidings claiming our issuer URL: its kid is unknown, or ours with BadSignature."""
    other_storage = SQLiteStorage(str(tmp_path / "impostor.db"))
    await other_storage.open()
    try:
        impostor = Issuer(other_storage, ISSUER, clock, None)
        await impostor.ensure_key()
        token = await impostor.token_for(TEAM)
    finally:
        await other_storage.close()
    expect(verifier, UnknownKey, 401, token)
    header, claims, signature = segments(token)
    expect(
        verifier, BadSignature, 401, assemble({**header, "kid": signing_key[0]}, claims, signature)
    )


# --- what is refused: the claims ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"aud": None}, MissingClaim),
        ({"aud": "internal"}, WrongAudience),
        ({"aud": ["internal", "other"]}, WrongAudience),
        ({"exp": None}, MissingClaim),
        ({"iat": None}, MissingClaim),
        ({"exp": "soon"}, MalformedToken),
        ({"exp": float("nan")}, MalformedToken),  # each was a 500
        ({"exp": 10**400}, MalformedToken),
        ({"iat": float("inf")}, MalformedToken),
    ],
)
def test_a_missing_or_wrong_claim_is_refused(
    verifier: Verifier,
    clock: FakeClock,
    signing_key: tuple[str, rsa.RSAPrivateKey],
    overrides: dict[str, Any],
    error: type[VerificationError],
) -> None:
    """Signed by the real key, but `aud` missing or another audience, `exp` or `iat` missing."""
    kid, key = signing_key
    token = jwt.encode(claims_now(clock, **overrides), key, "RS256", headers={"kid": kid})
    expect(verifier, error, 401, token)


def test_an_audience_list_naming_customer_is_accepted(
    verifier: Verifier, clock: FakeClock, signing_key: tuple[str, rsa.RSAPrivateKey]
) -> None:
    """`aud` may be a list; it must contain the configured audience."""
    kid, key = signing_key
    token = jwt.encode(
        claims_now(clock, aud=["other", "customer"]), key, "RS256", headers={"kid": kid}
    )
    headers, body = delivery(token)
    assert verifier.verify(headers, body).claims.audience == ["other", "customer"]


@pytest.mark.parametrize(
    ("times", "error"),
    [
        ({"iat": -361, "exp": -61}, Expired),
        ({"nbf": 61}, NotYetValid),
        ({"iat": 61, "exp": 361}, NotYetValid),
        ({"iat": 0, "exp": 601}, LifetimeTooLong),
        ({"iat": -3600, "exp": 3600}, LifetimeTooLong),
    ],
)
def test_a_token_used_outside_its_time_is_refused(
    verifier: Verifier,
    clock: FakeClock,
    signing_key: tuple[str, rsa.RSAPrivateKey],
    times: dict[str, int],
    error: type[VerificationError],
) -> None:
    """`exp` past the leeway, `nbf`/`iat` in the future, or a lifetime over 600 s: refused."""
    kid, key = signing_key
    now = clock() // NS
    claims = claims_now(clock, **{name: now + offset for name, offset in times.items()})
    expect(verifier, error, 401, jwt.encode(claims, key, "RS256", headers={"kid": kid}))


async def test_an_issuers_token_expires_with_the_fake_clock(
    issuer: Issuer, verifier: Verifier, clock: FakeClock
) -> None:
    """The issuer's own token verifies until exp + 60 s, then is Expired."""
    headers, body = delivery(await issuer.token_for(TEAM))
    clock.advance(300 + 59)
    verifier.verify(headers, body)
    clock.advance(1)
    with pytest.raises(Expired):
        verifier.verify(headers, body)


# --- what is refused: the event ----------------------------------------------------------------


async def test_an_event_outside_the_tokens_group_is_forbidden(
    issuer: Issuer, verifier: Verifier
) -> None:
    """A genuine TEAM token carrying an event whose Ce-Group is a sibling: EventOutsideGroup, 403."""
    headers, body = delivery(await issuer.token_for(TEAM), group=SIBLING)
    with pytest.raises(EventOutsideGroup) as caught:
        verifier.verify(headers, body)
    assert caught.value.status == 403


@pytest.mark.parametrize(
    "breakage",
    [
        lambda h, b: ({k: v for k, v in h.items() if k != "Ce-Type"}, b),
        lambda h, b: ({**h, "Ce-Specversion": "0.3"}, b),
        lambda h, b: ({**h, "Content-Type": "text/plain"}, b),
        lambda h, b: ({**h, "Ce-Time": "yesterday"}, b),
        lambda h, b: ({**h, "Ce-Time": "2024-13-45T25:61:61Z"}, b),  # had failed only later
        lambda h, b: ({**h, "Ce-Group": "Not A Group"}, b),
        lambda h, b: (h, b"not json"),
        lambda h, b: (h, b'{"actor": {}, "body": {}}'),
        lambda h, b: (h, b'{"actor": {"subject": "u"}, "body": []}'),
        lambda h, b: (h, b"[" * 12_000),  # nested past Python's stack: was a 500
    ],
    ids=[
        "no-type",
        "specversion",
        "content-type",
        "time",
        "no-such-time",
        "group",
        "json",
        "actor",
        "body",
        "nested",
    ],
)
async def test_a_genuine_token_with_a_malformed_event_is_invalid(
    issuer: Issuer,
    verifier: Verifier,
    breakage: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]],
) -> None:
    """Headers and body that are not a valid CloudEvent: InvalidEvent, 400."""
    headers, body = breakage(*delivery(await issuer.token_for(TEAM)))
    with pytest.raises(InvalidEvent) as caught:
        verifier.verify(headers, body)
    assert caught.value.status == 400


async def test_the_token_does_not_cover_the_body(issuer: Issuer, verifier: Verifier) -> None:
    """Without a signing secret, an edited body still verifies: only Standard Webhooks binds it."""
    headers, _ = delivery(await issuer.token_for(TEAM))
    forged = b'{"actor":{"subject":"mallory"},"body":{"cluster_id":"x"}}'
    assert verifier.verify(headers, forged).actor.subject == "mallory"


# --- Standard Webhooks -------------------------------------------------------------------------


def whsec() -> str:
    """A fresh Standard Webhooks secret."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


async def test_a_standard_webhooks_signature_is_verified_too(
    issuer: Issuer, documents: Documents, clock: FakeClock
) -> None:
    """With the subscription's secret, a signed delivery verifies and carries its webhook-id."""
    secret = whsec()
    verifier = Verifier(ISSUER, TEAM, signing_secret=secret, fetch=documents, clock=clock.seconds)
    headers, body = delivery(await issuer.token_for(TEAM), secret=secret, now_s=clock() // NS)
    assert verifier.verify(headers, body).webhook_id == "msg_1"


async def test_an_edited_body_fails_the_standard_webhooks_signature(
    issuer: Issuer, documents: Documents, clock: FakeClock
) -> None:
    """With a secret, a body edited under a genuine token: BadWebhookSignature, 401."""
    secret = whsec()
    verifier = Verifier(ISSUER, TEAM, signing_secret=secret, fetch=documents, clock=clock.seconds)
    headers, body = delivery(await issuer.token_for(TEAM), secret=secret, now_s=clock() // NS)
    with pytest.raises(BadWebhookSignature) as caught:
        verifier.verify(headers, body.replace(b"user-1", b"user-2"))
    assert caught.value.status == 401


@pytest.mark.parametrize(
    "problem", ["unsigned", "stale", "other-secret", "superscript-digit", "400-digits"]
)
async def test_missing_stale_or_foreign_webhook_signatures_are_refused(
    issuer: Issuer, documents: Documents, clock: FakeClock, problem: str
) -> None:
    """No webhook-* headers, a timestamp 6 minutes old, another secret, or a timestamp that
    is no Unix seconds ('²' passes str.isdigit(); each was a 500): BadWebhookSignature."""
    secret = whsec()
    verifier = Verifier(ISSUER, TEAM, signing_secret=secret, fetch=documents, clock=clock.seconds)
    now = clock() // NS
    signer = {"unsigned": None, "stale": secret, "other-secret": whsec()}.get(problem, secret)
    stamp = now - 360 if problem == "stale" else now
    headers, body = delivery(await issuer.token_for(TEAM), secret=signer, now_s=stamp)
    if problem == "superscript-digit":
        headers["webhook-timestamp"] = "²"
    elif problem == "400-digits":
        headers["webhook-timestamp"] = "9" * 400
    with pytest.raises(BadWebhookSignature):
        verifier.verify(headers, body)


async def test_signatures_agree_with_the_standardwebhooks_package(
    issuer: Issuer, documents: Documents, clock: FakeClock
) -> None:
    """A signature made by the reference `standardwebhooks` library verifies here."""
    secret = whsec()
    verifier = Verifier(ISSUER, TEAM, signing_secret=secret, fetch=documents, clock=clock.seconds)
    headers, body = delivery(await issuer.token_for(TEAM))
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(clock() // NS, tz=UTC)
    headers["webhook-id"] = "msg_ref"
    headers["webhook-timestamp"] = str(clock() // NS)
    headers["webhook-signature"] = Webhook(secret).sign("msg_ref", when, body.decode())
    assert verifier.verify(headers, body).webhook_id == "msg_ref"


# --- keys: discovery, caching, flood, rotation -------------------------------------------------


def test_only_asymmetric_algorithms_can_be_allowed() -> None:
    """A verifier cannot be configured with HS256 or none, nor with more than 60 s of leeway."""
    with pytest.raises(ValueError):
        Verifier(ISSUER, TEAM, algorithms=["RS256", "HS256"])
    with pytest.raises(ValueError):
        Verifier(ISSUER, TEAM, algorithms=["none"])
    with pytest.raises(ValueError):
        Verifier(ISSUER, TEAM, leeway_s=61)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_lifetime_s": math.nan}, "max_lifetime_s"),  # NaN had turned the check off
        ({"leeway_s": math.nan}, "leeway_s"),
        ({"signing_secret": "nope"}, "24 to 64 bytes"),  # base64 of 3 bytes
        ({"signing_secret": "whsec_" + base64.b64encode(b"k" * 65).decode()}, "24 to 64 bytes"),
    ],
)
def test_a_setting_that_would_weaken_or_break_verification_is_refused(
    setting: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Verifier(ISSUER, TEAM, **setting)


async def test_discovery_naming_another_issuer_makes_keys_unavailable(
    storage: SQLiteStorage, clock: FakeClock, signing_key: tuple[str, rsa.RSAPrivateKey]
) -> None:
    """A discovery document whose `issuer` differs from the configured one: KeysUnavailable, 503."""
    liar = Issuer(storage, "https://other.example", clock, None)
    await liar.reload()

    def fetch(url: str) -> bytes:
        return json.dumps(liar.discovery()).encode()

    verifier = Verifier(ISSUER, TEAM, fetch=fetch, clock=clock.seconds)
    kid, key = signing_key
    token = jwt.encode(claims_now(clock), key, "RS256", headers={"kid": kid})
    with pytest.raises(KeysUnavailable) as caught:
        verifier.verify(*delivery(token))
    assert caught.value.status == 503
    assert "other.example" in caught.value.message


async def test_an_unreachable_issuer_makes_keys_unavailable(
    issuer: Issuer, clock: FakeClock
) -> None:
    """When discovery cannot be fetched: KeysUnavailable, 503 (the sender will retry)."""
    verifier = Verifier(
        ISSUER, TEAM, fetch=Documents(issuer, clock, fail=True), clock=clock.seconds
    )
    with pytest.raises(KeysUnavailable) as caught:
        verifier.verify(*delivery(await issuer.token_for(TEAM)))
    assert caught.value.status == 503


async def test_cached_keys_outlive_a_failed_refetch(
    issuer: Issuer, documents: Documents, verifier: Verifier, clock: FakeClock
) -> None:
    """Once the JWKS is cached, an issuer outage does not stop known keys from verifying."""
    verifier.verify(*delivery(await issuer.token_for(TEAM)))
    documents.fail = True
    clock.advance(400)  # past the cache's max age: a refetch is due, and fails
    verifier.verify(*delivery(await issuer.token_for(TEAM)))
    assert documents.jwks_fetches == 2


async def test_the_jwks_is_cached_for_its_max_age(
    issuer: Issuer, documents: Documents, verifier: Verifier, clock: FakeClock
) -> None:
    """One JWKS fetch serves every delivery for 300 s; the next one after that refetches."""
    for _ in range(100):
        verifier.verify(*delivery(await issuer.token_for(TEAM)))
        clock.advance(2.99)
    assert documents.jwks_fetches == 1
    clock.advance(1)
    verifier.verify(*delivery(await issuer.token_for(TEAM)))
    assert documents.jwks_fetches == 2


def flood_token(clock: FakeClock, attacker: ec.EllipticCurvePrivateKey) -> str:
    """A token with our iss and sub but an invented kid, as a flood would send."""
    return jwt.encode(claims_now(clock), attacker, "ES256", headers={"kid": uuid.uuid4().hex})


async def test_a_flood_of_unknown_kids_costs_one_jwks_fetch_a_minute(
    issuer: Issuer, documents: Documents, verifier: Verifier, clock: FakeClock
) -> None:
    """1,000 requests with invented kids over 10 minutes: UnknownKey each, at most 11 JWKS fetches."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    start = clock()
    for _ in range(1000):
        with pytest.raises(UnknownKey):
            verifier.verify(*delivery(flood_token(clock, attacker)))
        clock.advance(0.6)
    minutes = (clock() - start) / NS / 60
    assert documents.jwks_fetches <= math.ceil(minutes) + 1
    assert documents.jwks_fetches >= 2  # it does refetch: an unknown kid can be a new key
    verifier.verify(*delivery(await issuer.token_for(TEAM)))  # genuine traffic still passes


async def test_a_concurrent_flood_of_unknown_kids_costs_one_fetch(
    issuer: Issuer, documents: Documents, verifier: Verifier, clock: FakeClock
) -> None:
    """1,000 concurrent averify calls with invented kids, at one instant: one JWKS fetch."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    requests = [delivery(flood_token(clock, attacker)) for _ in range(1000)]
    results = await asyncio.gather(
        *(verifier.averify(h, b) for h, b in requests), return_exceptions=True
    )
    assert all(isinstance(result, UnknownKey) for result in results)
    assert documents.jwks_fetches == 1
    assert (await verifier.averify(*delivery(await issuer.token_for(TEAM)))).group == TEAM


def rotate_with_the_cli(database: Path, clock: FakeClock) -> None:
    """Run the real `tidings keys rotate`, with the default 900 s delay counted in fake time.

    The command stamps real time; the fake clock runs ahead of it, so the offset is added.
    """
    offset = math.ceil((clock() - time.time_ns()) / NS)
    done = subprocess.run(
        [TIDINGS, "keys", "rotate", "--delay", str(900 + offset)],
        env=tidings_env(database),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


async def test_a_thousand_deliveries_across_key_rotations_all_verify(
    tmp_path: Path, issuer: Issuer, clock: FakeClock
) -> None:
    """1,000 deliveries 3 s apart across two `tidings keys rotate`: every one verifies.

    Two receivers: one refetching the JWKS every 300 s, one caching it for a day that
    learns each new key only by refetching on its unknown kid (3 fetches in all).
    """
    fresh_documents, lazy_documents = Documents(issuer, clock), Documents(issuer, clock)
    fresh = Verifier(ISSUER, TEAM, fetch=fresh_documents, clock=clock.seconds)
    lazy = Verifier(ISSUER, TEAM, fetch=lazy_documents, clock=clock.seconds, jwks_max_age_s=86_400)
    kids: set[str] = set()
    for step in range(1000):
        if step in (100, 600):
            rotate_with_the_cli(tmp_path / "tidings.db", clock)
        headers, body = delivery(await issuer.token_for(TEAM), id=f"e-{step}")
        assert fresh.verify(headers, body).id == f"e-{step}"
        kids.add(lazy.verify(headers, body).claims.kid)
        clock.advance(3)
    assert len(kids) == 3
    assert lazy_documents.jwks_fetches == 3
    assert fresh_documents.jwks_fetches <= 3000 // 300 + 1


async def test_the_default_fetcher_uses_real_http(
    storage: SQLiteStorage, clock: FakeClock, receivers: Any
) -> None:
    """With no fetch function, discovery and JWKS come over HTTP with urllib."""
    holder: dict[str, Issuer] = {}

    def answer(request: Received) -> web.StreamResponse:
        found = holder["issuer"]
        if request.path == DISCOVERY_PATH:
            return web.json_response(found.discovery())
        return web.json_response(found.jwks(clock()))

    server = receivers(answer)
    holder["issuer"] = served = Issuer(storage, server.url, clock, None)
    await served.ensure_key()
    verifier = Verifier(server.url, TEAM, clock=clock.seconds)
    headers, body = delivery(await served.token_for(TEAM), id="over-http")
    assert (await verifier.averify(headers, body)).id == "over-http"
    assert [r.path for r in server.received()] == [DISCOVERY_PATH, JWKS_PATH]

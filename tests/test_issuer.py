"""The token issuer: JWTs receivers verify through discovery, key rotation, keys at rest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jwt
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from typer.testing import CliRunner

from tests import databases
from tests.servers import database_url
from tidings.api import errors, wellknown
from tidings.issuer import (
    DEFAULT_ROTATION_DELAY_S,
    ISSUER_URL_SETTING,
    JWKS_MAX_AGE_S,
    RELOAD_INTERVAL_S,
    RETIRE_LEEWAY_S,
    SAFE_ROTATION_DELAY_S,
    Issuer,
    IssuerError,
    default_issuer_url,
    jwk_thumbprint,
    resolve_issuer_url,
    stored_issuer_url,
)
from tidings.keys_cli import keys_app
from tidings.storage.sqlite import SQLiteStorage

NS = 1_000_000_000
ISSUER = "https://tidings.example"
GROUP = "0475f6baca584a8964a6bce6b74dbe78dd8805b6"
T0 = 1_800_000_000 * NS
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
REQUIRED = ["iss", "sub", "aud", "iat", "exp", "jti"]


class FakeClock:
    """A clock in nanoseconds that moves only when told."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += int(seconds * NS)


storage = databases.sqlite_storage  # the fixture, under the name these tests use


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at a fixed instant."""
    return FakeClock(T0)


@pytest.fixture
async def issuer(storage: SQLiteStorage, clock: FakeClock) -> Issuer:
    """An issuer on the fake clock, with its first key."""
    made = Issuer(storage, ISSUER, clock, None)
    await made.ensure_key()
    return made


def well_known_app(issuer: Issuer | None) -> FastAPI:
    """A small app serving only the issuer's documents."""
    app = FastAPI()
    errors.install(app)
    app.include_router(wellknown.router)
    app.state.tidings = SimpleNamespace(issuer=issuer)
    return app


def http(issuer: Issuer | None) -> httpx.AsyncClient:
    """An HTTP client of the issuer's documents (over ASGI)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=well_known_app(issuer)))


class Receiver:
    """A webhook receiver: discovers the JWKS, caches it up to `max_age_s`, and never refetches early."""

    def __init__(self, client: httpx.AsyncClient, clock: FakeClock, phase_s: int = 0) -> None:
        self.client, self.clock, self.phase_s = client, clock, phase_s
        self.epoch: int | None = None
        self.keys: jwt.PyJWKSet | None = None
        self.fetches = 0

    async def _refresh(self) -> None:
        epoch = (self.clock() - T0 - self.phase_s * NS) // (JWKS_MAX_AGE_S * NS)
        if epoch != self.epoch:
            config = (await self.client.get(f"{ISSUER}/.well-known/openid-configuration")).json()
            jwks = (await self.client.get(config["jwks_uri"])).json()
            self.keys, self.epoch = jwt.PyJWKSet.from_dict(jwks), epoch
            self.fetches += 1

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token at the fake time; raises if it does not verify."""
        await self._refresh()
        assert self.keys is not None
        key = self.keys[jwt.get_unverified_header(token)["kid"]]
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience="customer",
            issuer=ISSUER,
            options={"verify_exp": False, "verify_iat": False, "require": REQUIRED},
        )
        now_s = self.clock() // NS
        if not claims["iat"] <= now_s < claims["exp"]:
            raise jwt.ExpiredSignatureError(f"not valid at {now_s}")
        return claims


def kids(jwks: dict[str, Any]) -> list[str]:
    """The kids of a JWKS document."""
    return [key["kid"] for key in jwks["keys"]]


def kid_of(token: str) -> str:
    """The kid in a token's header."""
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


# --- tokens ------------------------------------------------------------------------------------


async def test_token_verifies_through_discovery_and_jwks(storage: SQLiteStorage) -> None:
    """A token verifies with PyJWT from the discovery document and the JWKS served over HTTP."""
    issuer = Issuer(storage, ISSUER, FakeClock(time.time_ns()), None)
    await issuer.ensure_key()
    token = await issuer.token_for(GROUP)
    async with http(issuer) as client:
        config = (await client.get(f"{ISSUER}/.well-known/openid-configuration")).json()
        jwks = jwt.PyJWKSet.from_dict((await client.get(config["jwks_uri"])).json())
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(
        token,
        jwks[header["kid"]],
        algorithms=config["id_token_signing_alg_values_supported"],
        audience="customer",
        issuer=config["issuer"],
        options={"require": REQUIRED},
    )
    assert header == {"alg": "RS256", "kid": header["kid"], "typ": "JWT"}
    assert header["kid"]
    assert claims["sub"] == f"webhook:{GROUP}"
    assert claims["aud"] == "customer"
    assert claims["iss"] == ISSUER
    assert claims["exp"] - claims["iat"] == 300


async def test_token_is_reused_within_the_window_and_renewed_after(
    issuer: Issuer, clock: FakeClock
) -> None:
    """The same token serves a group for 60 s; then a fresh one is signed."""
    first = await issuer.token_for(GROUP)
    clock.advance(59.999)
    assert await issuer.token_for(GROUP) == first
    clock.advance(0.001)
    renewed = await issuer.token_for(GROUP)
    assert renewed != first
    old, new = (jwt.decode(t, options={"verify_signature": False}) for t in (first, renewed))
    assert old["jti"] != new["jti"]
    assert new["iat"] - old["iat"] == 60


async def test_tokens_are_per_group(issuer: Issuer) -> None:
    """Each group gets its own token, naming it in `sub`."""
    other = f"{GROUP}/b74ce966caf448d1"
    token, child = await issuer.token_for(GROUP), await issuer.token_for(other)
    assert token != child
    assert jwt.decode(child, options={"verify_signature": False})["sub"] == f"webhook:{other}"


async def test_no_token_before_a_key_exists(storage: SQLiteStorage, clock: FakeClock) -> None:
    """An issuer whose database has no key refuses to sign until ensure_key()."""
    issuer = Issuer(storage, ISSUER, clock, None)
    with pytest.raises(IssuerError):
        await issuer.token_for(GROUP)


# --- documents ---------------------------------------------------------------------------------


async def test_well_known_documents_are_cacheable_json(issuer: Issuer) -> None:
    """Discovery and JWKS are JSON with `Cache-Control: public, max-age=300`."""
    async with http(issuer) as client:
        config = await client.get(f"{ISSUER}/.well-known/openid-configuration")
        keys = await client.get(f"{ISSUER}/.well-known/jwks.json")
    for response in (config, keys):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == f"public, max-age={JWKS_MAX_AGE_S}"
    assert config.json() == {
        "issuer": ISSUER,
        "jwks_uri": f"{ISSUER}/.well-known/jwks.json",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["iss", "sub", "aud", "iat", "exp", "jti"],
    }


def test_default_rotation_delay_outlasts_the_jwks_cache() -> None:
    """The default delay exceeds the JWKS max-age plus the reload interval."""
    assert DEFAULT_ROTATION_DELAY_S > SAFE_ROTATION_DELAY_S == JWKS_MAX_AGE_S + RELOAD_INTERVAL_S


async def test_jwks_holds_no_private_material(issuer: Issuer, clock: FakeClock) -> None:
    """The JWKS carries only public RSA members, for every published key."""
    await issuer.rotate(DEFAULT_ROTATION_DELAY_S)
    async with http(issuer) as client:
        response = await client.get(f"{ISSUER}/.well-known/jwks.json")
    assert "PRIVATE" not in response.text
    keys = response.json()["keys"]
    assert len(keys) == 2
    for key in keys:
        assert set(key) == {"kid", "kty", "n", "e", "alg", "use"}
        assert not set(PRIVATE_MEMBERS) & set(key)
        assert (key["kty"], key["alg"], key["use"], key["e"]) == ("RSA", "RS256", "sig", "AQAB")


async def test_well_known_answers_404_without_an_issuer() -> None:
    """A server without an issuer says so in tidings' error format."""
    async with http(None) as client:
        response = await client.get(f"{ISSUER}/.well-known/jwks.json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_thumbprint_matches_rfc_7638_example() -> None:
    """The kid function gives the thumbprint of RFC 7638 section 3.1."""
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
        "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4Qy"
        "Q5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbI"
        "SD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
        "kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


async def test_kid_is_the_keys_thumbprint(issuer: Issuer, clock: FakeClock) -> None:
    """Every served key's kid is the RFC 7638 thumbprint of its public members."""
    for key in issuer.jwks(clock())["keys"]:
        assert key["kid"] == jwk_thumbprint(key)


async def test_ensure_key_makes_only_the_first_key(
    storage: SQLiteStorage, issuer: Issuer, clock: FakeClock
) -> None:
    """ensure_key() on a database that has a signing key adds none."""
    await issuer.ensure_key()
    await Issuer(storage, ISSUER, clock, None).ensure_key()
    assert len(await storage.signing_keys()) == 1


# --- rotation ----------------------------------------------------------------------------------


async def test_rotated_key_is_published_at_once_and_signs_after_the_delay(
    issuer: Issuer, clock: FakeClock
) -> None:
    """After rotate(delay), the new key is in the JWKS at once but signs only once delay passes."""
    old = kid_of(await issuer.token_for(GROUP))
    new = await issuer.rotate(600)
    assert kids(issuer.jwks(clock())) == [old, new.kid]
    clock.advance(600 - 0.001)
    assert kid_of(await issuer.token_for("g-before")) == old
    clock.advance(0.001)
    assert kid_of(await issuer.token_for("g-after")) == new.kid
    assert kid_of(await issuer.token_for(GROUP)) == new.kid


async def test_old_key_stays_published_until_its_last_token_expires(
    issuer: Issuer, clock: FakeClock
) -> None:
    """The replaced key leaves the JWKS only after every token it signed has expired."""
    old = kid_of(await issuer.token_for(GROUP))
    new = await issuer.rotate(600)
    clock.now = new.signs_from_ns - 1
    last = jwt.decode(await issuer.token_for("last"), options={"verify_signature": False})
    retires = new.signs_from_ns + (300 + RETIRE_LEEWAY_S) * NS
    assert last["exp"] * NS + RETIRE_LEEWAY_S * NS <= retires
    clock.now = retires - 1
    assert old in kids(issuer.jwks(clock()))
    clock.now = retires
    assert kids(issuer.jwks(clock())) == [new.kid]


async def test_rotation_deletes_retired_keys(
    storage: SQLiteStorage, issuer: Issuer, clock: FakeClock
) -> None:
    """A rotation removes from the database the keys retired before it."""
    first = issuer.keys[0].kid
    await issuer.rotate(600)
    clock.advance(600 + 300 + RETIRE_LEEWAY_S)
    await issuer.rotate(600)
    stored = [key.kid for key in await storage.signing_keys()]
    assert first not in stored
    assert len(stored) == 2


async def test_another_process_sees_a_rotation_within_the_reload_interval(
    storage: SQLiteStorage, issuer: Issuer, clock: FakeClock
) -> None:
    """A second issuer on the same database publishes a key rotated elsewhere after it reloads."""
    other = Issuer(storage, ISSUER, clock, None)
    await other.token_for(GROUP)
    new = await issuer.rotate(600)
    await other.refresh()
    assert new.kid not in kids(other.jwks(clock()))
    clock.advance(RELOAD_INTERVAL_S)
    await other.refresh()
    assert new.kid in kids(other.jwks(clock()))


async def test_rotating_a_database_never_served_signs_at_once(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    """With no key published yet, the first rotated key signs at once (nobody caches a JWKS)."""
    issuer = Issuer(storage, ISSUER, clock, None)
    key = await issuer.rotate(DEFAULT_ROTATION_DELAY_S)
    assert key.signs_from_ns == clock()
    assert kid_of(await issuer.token_for(GROUP)) == key.kid


async def simulate(issuer: Issuer, clock: FakeClock, delay_s: int) -> tuple[int, set[str]]:
    """1,000 deliveries 3 s apart across two rotations; return the failures and the kids that verified."""
    failures, verified = 0, set()
    async with http(issuer) as client:
        receivers = [Receiver(client, clock, phase) for phase in (0, 75, 150, 225)]
        for step in range(1000):
            if step in (100, 600):
                await issuer.rotate(delay_s)
            token = await issuer.token_for(f"group-{step % 5}")
            try:
                await receivers[step % len(receivers)].verify(token)
            except (jwt.PyJWTError, KeyError):
                failures += 1
            else:
                verified.add(kid_of(token))
            clock.advance(3)
    assert all(0 < r.fetches <= 3000 // JWKS_MAX_AGE_S + 2 for r in receivers)
    return failures, verified


async def test_a_thousand_verifications_across_rotations_never_fail(
    issuer: Issuer, clock: FakeClock
) -> None:
    """Receivers caching the JWKS for 300 s verify every token across two default rotations."""
    failures, verified = await simulate(issuer, clock, DEFAULT_ROTATION_DELAY_S)
    assert failures == 0
    assert len(verified) == 3


async def test_rotating_without_delay_breaks_caching_receivers(
    issuer: Issuer, clock: FakeClock
) -> None:
    """The same simulation with no delay fails: the check above has teeth."""
    failures, _ = await simulate(issuer, clock, 0)
    assert failures > 0


# --- keys at rest ------------------------------------------------------------------------------


async def test_private_key_is_encrypted_at_rest_with_a_fernet_key(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    """With a Fernet key, the stored private key is not a PEM, and decrypts back to one that signs."""
    secret = Fernet.generate_key()
    await Issuer(storage, ISSUER, clock, secret).ensure_key()
    (stored,) = await storage.signing_keys()
    assert not stored.private_key.startswith(b"-----BEGIN")
    assert b"PRIVATE" not in stored.private_key
    assert Fernet(secret).decrypt(stored.private_key).startswith(b"-----BEGIN PRIVATE KEY-----")
    restarted = Issuer(storage, ISSUER, clock, secret)
    token = await restarted.token_for(GROUP)
    public = jwt.PyJWK(restarted.jwks(clock())["keys"][0])
    claims = jwt.decode(
        token,
        public,
        algorithms=["RS256"],
        options={"verify_aud": False, "verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == f"webhook:{GROUP}"


async def test_private_key_is_plain_pkcs8_without_a_fernet_key(issuer: Issuer) -> None:
    """Without an encryption key, the private key is stored as PKCS#8 PEM."""
    assert issuer.keys[0].private_key.startswith(b"-----BEGIN PRIVATE KEY-----")


async def test_encrypted_keys_need_their_fernet_key(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    """Encrypted keys refuse to load without the key, or with another one, and rotation refuses too."""
    await Issuer(storage, ISSUER, clock, Fernet.generate_key()).ensure_key()
    for secret in (None, Fernet.generate_key()):
        issuer = Issuer(storage, ISSUER, clock, secret)
        with pytest.raises(IssuerError):
            await issuer.token_for(GROUP)
        with pytest.raises(IssuerError):
            await issuer.rotate(DEFAULT_ROTATION_DELAY_S)
    assert len(await storage.signing_keys()) == 1


async def test_a_bad_fernet_key_is_refused(storage: SQLiteStorage, clock: FakeClock) -> None:
    """An encryption key that is not a Fernet key fails at construction, without echoing it."""
    with pytest.raises(IssuerError) as caught:
        Issuer(storage, ISSUER, clock, b"not-a-fernet-key")
    assert "not-a-fernet-key" not in str(caught.value)


# --- the issuer URL ----------------------------------------------------------------------------


async def test_issuer_url_is_fixed_the_first_time(storage: SQLiteStorage) -> None:
    """The first default is stored and kept when the server later runs at another address."""
    first = await resolve_issuer_url(storage, None, "http://127.0.0.1:8080/")
    again = await resolve_issuer_url(storage, None, "http://127.0.0.1:9090")
    assert first == again == "http://127.0.0.1:8080"
    assert await storage.setting(ISSUER_URL_SETTING) == first


async def test_configured_issuer_url_wins_and_is_stored(storage: SQLiteStorage) -> None:
    """TIDINGS_ISSUER replaces the stored URL, and is what later processes use."""
    await resolve_issuer_url(storage, None, "http://127.0.0.1:8080")
    assert await resolve_issuer_url(storage, ISSUER, "http://127.0.0.1:8080") == ISSUER
    assert await resolve_issuer_url(storage, None, "http://127.0.0.1:8080") == ISSUER
    assert await stored_issuer_url(storage, None) == ISSUER


async def test_a_worker_needs_a_stored_or_configured_issuer_url(storage: SQLiteStorage) -> None:
    """stored_issuer_url() fails clearly on a database never served, unless configured."""
    with pytest.raises(IssuerError, match="TIDINGS_ISSUER"):
        await stored_issuer_url(storage, None)
    assert await stored_issuer_url(storage, ISSUER) == ISSUER


@pytest.mark.parametrize("url", ["ftp://x.example", "tidings.example", "https://x.example/?a=b"])
async def test_an_unusable_issuer_url_is_refused(storage: SQLiteStorage, url: str) -> None:
    """An issuer URL must be http(s), without query or fragment."""
    with pytest.raises(IssuerError):
        await resolve_issuer_url(storage, url, "http://127.0.0.1:8080")


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://127.0.0.1:8080"),
        ("::1", "http://[::1]:8080"),
        ("events.example", "http://events.example:8080"),
    ],
)
def test_default_issuer_url_of_a_listening_address(host: str, url: str) -> None:
    """A server's own base URL, with wildcard addresses made loopback."""
    assert default_issuer_url(host, 8080) == url


# --- tidings keys ------------------------------------------------------------------------------


def test_keys_commands_rotate_and_list(tmp_path: Path) -> None:
    """`keys rotate` adds a pending key, `keys list` shows it beside the signing one."""
    runner = CliRunner(
        env={
            "TIDINGS_DATABASE_URL": database_url(tmp_path / "tidings.db"),
            "TIDINGS_KEY_ENCRYPTION_KEY": None,
            "TIDINGS_KEY_ROTATION_DELAY": None,
        }
    )
    first = runner.invoke(keys_app, ["rotate"])
    second = runner.invoke(keys_app, ["rotate", "--delay", "600"])
    listed = runner.invoke(keys_app, ["list", "--json"])
    assert (first.exit_code, second.exit_code, listed.exit_code) == (0, 0, 0)
    keys = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(k["kid"], k["state"]) for k in keys] == [
        (first.stdout.strip(), "signing"),
        (second.stdout.strip(), "pending"),
    ]
    assert "PRIVATE" not in listed.stdout + first.stdout + second.stdout


def test_keys_rotate_warns_about_a_short_delay(tmp_path: Path) -> None:
    """A delay shorter than receivers cache the JWKS is allowed, with a warning."""
    runner = CliRunner(env={"TIDINGS_DATABASE_URL": database_url(tmp_path / "tidings.db")})
    runner.invoke(keys_app, ["rotate"])
    result = runner.invoke(keys_app, ["rotate", "--delay", "0"])
    assert result.exit_code == 0
    assert "warning" in result.stderr

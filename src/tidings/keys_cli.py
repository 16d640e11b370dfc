"""`tidings keys`: list and rotate the token issuer's signing keys, on the database directly.

A rotation takes effect in running servers and workers within seconds (they
re-read the keys), and the new key signs only after `--delay` (see
`tidings.issuer` for why).
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.text import Text

from tidings.cli_common import err, listing, out, with_storage
from tidings.config import Settings
from tidings.issuer import ISSUER_URL_SETTING, SAFE_ROTATION_DELAY_S, Issuer
from tidings.model import SigningKey
from tidings.storage.base import Storage
from tidings.timestamps import Timestamp

keys_app = typer.Typer(
    help="The token issuer's signing keys (works on the database directly).",
    no_args_is_help=True,
)


def _time(ns: int | None) -> str:
    return "" if ns is None else Timestamp(ns, 0).render()


def key_state(issuer: Issuer, key: SigningKey, now_ns: int) -> str:
    """What a key does at `now_ns`: pending, signing, published, retiring or retired."""
    if key.retires_ns is not None and now_ns >= key.retires_ns:
        return "retired"
    if now_ns < key.signs_from_ns:
        return "pending"
    signer = issuer.signer(now_ns)
    if signer is not None and signer.kid == key.kid:
        return "signing"
    return "published" if key.retires_ns is None else "retiring"


async def _issuer(storage: Storage, encryption_key: bytes | None) -> Issuer:
    url = await storage.setting(ISSUER_URL_SETTING) or ""
    issuer = Issuer(storage, url, time.time_ns, encryption_key)
    await issuer.reload()
    return issuer


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List the signing keys and what each does now (never their private halves)."""

    async def work(storage: Storage) -> Issuer:
        return await _issuer(storage, None)  # lists public parts only: nothing to decrypt

    issuer = with_storage(work)
    now = issuer.clock()
    rows = []
    for key in issuer.keys:
        row = {
            "kid": key.kid,
            "state": key_state(issuer, key, now),
            "created": _time(key.created_ns),
            "signs_from": _time(key.signs_from_ns),
            "retires": _time(key.retires_ns) or None,
        }
        if as_json:
            print(json.dumps(row))
        else:
            rows.append(tuple(value or "" for value in row.values()))
    if not as_json:
        url = issuer.issuer_url or "not fixed yet (set when first served)"
        err.print(f"issuer: {url}", highlight=False)
        out.print(listing(("kid", "state", "created", "signs from", "retires"), rows, "kid"))


@keys_app.command("rotate")
def keys_rotate(
    delay: Annotated[
        int | None,
        typer.Option(
            "--delay",
            min=0,
            max=30 * 86_400,
            show_default=False,
            help="Seconds the new key is published before it signs; more than receivers cache"
            " the JWKS. [default: TIDINGS_KEY_ROTATION_DELAY, or 900]",
        ),
    ] = None,
) -> None:
    """Add a signing key: published now, signing after --delay; the old keys retire after.

    The new key is encrypted with TIDINGS_KEY_ENCRYPTION_KEY when it is set.
    """
    settings = Settings.from_env()
    delay_s = settings.key_rotation_delay_s if delay is None else delay
    if delay_s < SAFE_ROTATION_DELAY_S:
        err.print(
            Text.assemble(
                ("warning:", "yellow"),
                f" receivers may cache the JWKS for up to {SAFE_ROTATION_DELAY_S} s;"
                " until then they can reject the new key's tokens",
            ),
            highlight=False,
        )

    async def work(storage: Storage) -> tuple[SigningKey, int, int]:
        issuer = await _issuer(storage, settings.key_encryption_key)
        key = await issuer.rotate(delay_s)
        retire_ns = issuer.retirement_ns(key)
        replaced = sum(1 for k in issuer.keys if k.retires_ns == retire_ns)
        return key, retire_ns, replaced

    key, retire_ns, replaced = with_storage(work)
    err.print(
        f"key {key.kid} is published now and signs from {_time(key.signs_from_ns)}"
        + (f"; the {replaced} key(s) it replaces retire at {_time(retire_ns)}" if replaced else ""),
        highlight=False,
    )
    print(key.kid)

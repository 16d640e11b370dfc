"""What the `tidings` subcommands share: consoles, API options, error reporting, database access."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from tidings.client import ApiError, Client
from tidings.config import Settings
from tidings.errors import TidingsError
from tidings.storage import storage_for
from tidings.storage.base import Storage

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"

# No markup: what the consoles print holds stored text (actors, subjects, names, error
# messages quoting input), which would otherwise be read as rich markup ("[/x]" fails, "[red]"
# restyles the audit log). Styles are given as Text or `style=`.
err = Console(stderr=True, markup=False, soft_wrap=True)  # lines kept whole, JSON details too
# Piped into a file or another program, tables are not cut to 80 columns (rich's default
# where it cannot ask the terminal): ids and times are then kept whole. COLUMNS still rules.
PIPED_WIDTH = 240
out = Console(
    markup=False,
    width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH,
)

UrlOption = Annotated[str, typer.Option("--url", envvar="TIDINGS_URL", help="The API's base URL.")]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="TIDINGS_TOKEN", help="An API token.", show_default=False),
]


def finite(value: float | None) -> float | None:
    """An option's number, refused (a usage error) if it is NaN or infinite, which ranges let
    through: NaN compares false with any bound."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a number")
    return value


def fail(message: str) -> typer.Exit:
    """Print an error on stderr; return the Exit(1) to raise."""
    err.print(Text.assemble(("error:", "red"), " ", message), highlight=False)
    return typer.Exit(1)


def id_in_path(value: str, what: str, segments: bool = False) -> str:
    """An id as it goes in a URL's path, percent-encoded: one segment, or several for ids that
    are paths (a subscription's). An empty id, or a '.' or '..' segment (which a URL resolves
    to another resource), is refused."""
    parts = value.split("/") if segments else [value]
    if any(part in ("", ".", "..") for part in parts):
        raise fail(f"{what} {value!r} is not an id")
    return "/".join(quote(part, safe="") for part in parts)


def with_storage(work: Callable[[Storage], Coroutine[Any, Any, T]]) -> T:
    """Open the configured database (migrating it), run `work`, close it."""

    async def run() -> T:
        storage = storage_for(Settings.from_env())
        await storage.open()
        try:
            return await work(storage)
        finally:
            await storage.close()

    return checked(lambda: asyncio.run(run()))


def client_for(url: str, token: str | None) -> Client:
    """An API client, or a clear error when no token is given."""
    token = (token or "").strip()  # a line read from a file keeps its newline
    if not token:
        raise fail("an API token is needed: pass --token or set TIDINGS_TOKEN")
    if not (token.isascii() and token.isprintable()):  # never echoed: it is a secret
        raise fail(
            "the API token holds characters no token has (they are ASCII letters, digits, _ and -)"
        )
    try:
        return Client(url, token)
    except httpx.InvalidURL as exc:
        raise fail(f"the API's URL {url!r} is not a URL: {exc}") from exc


def call(fn: Callable[[], T]) -> T:
    """Run an API call; turn its errors into a message and exit code 1."""
    try:
        return fn()
    except ApiError as exc:
        detail = "".join(f"\n  {json.dumps(d)}" for d in exc.details)
        raise fail(f"{exc.message} ({exc.status}){detail}") from exc
    except (OSError, httpx.TransportError) as exc:
        raise fail(f"cannot reach the API: {exc}") from exc


def checked(fn: Callable[[], T]) -> T:
    """Run `fn`; turn bad input or settings (TidingsError, ValueError, a missing file) and a
    database that cannot be used into a message and exit code 1."""
    try:
        return fn()
    except TidingsError as exc:
        raise fail(exc.message) from exc
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    except _database_errors() as exc:
        raise fail(f"the database cannot be used: {exc}") from exc


def _database_errors() -> tuple[type[Exception], ...]:
    """The drivers' errors, imported only when an error is being handled (psycopg is large)."""
    import sqlite3

    from psycopg import Error
    from psycopg_pool import PoolTimeout

    return (sqlite3.Error, Error, PoolTimeout)


_NARROW = 3  # the fewest characters a column of a listing is folded to


def listing(headers: tuple[str, ...], rows: Sequence[Sequence[str]], whole: str = "id") -> Table:
    """A table of `rows` for `out`'s width: the `whole` column (an id, there to be copied) is
    kept on one line when it fits beside the other columns at their narrowest; every other
    column (and the id, when it does not fit) folds onto more lines rather than lose its end."""
    index = headers.index(whole)
    longest = max((len(row[index]) for row in rows), default=0)
    # The table's outer borders take 4 characters, each other column its text and 3.
    keep = longest <= out.width - 4 - (_NARROW + 3) * (len(headers) - 1)
    table = Table(
        *(
            Column(header, no_wrap=keep and header == whole, overflow="fold", min_width=_NARROW)
            for header in headers
        )
    )
    for row in rows:
        table.add_row(*row)
    return table

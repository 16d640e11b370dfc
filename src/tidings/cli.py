"""The `tidings` command: run the service, bootstrap access, and use the API."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Annotated

import typer
import uvloop
from rich.table import Table

from tidings import groups
from tidings.cli_common import (
    DEFAULT_URL,
    TokenOption,
    UrlOption,
    call,
    checked,
    client_for,
    err,
    fail,
    out,
    with_storage,
)
from tidings.config import Settings
from tidings.events_cli import events_app
from tidings.keys_cli import keys_app
from tidings.listen_cli import listen_command
from tidings.model import Group
from tidings.storage import storage_for
from tidings.storage.base import Storage
from tidings.subscriptions_cli import deliveries_app, subscriptions_app
from tidings.tokens import new_token
from tidings.webhooks_cli import webhooks_app

app = typer.Typer(help="tidings: a self-hosted events service for platforms.", no_args_is_help=True)
groups_app = typer.Typer(help="Groups (works on the database directly).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (works on the database directly).", no_args_is_help=True)
app.add_typer(groups_app, name="groups")
app.add_typer(tokens_app, name="tokens")
app.add_typer(events_app, name="events")
app.add_typer(subscriptions_app, name="subscriptions")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(keys_app, name="keys")
app.add_typer(webhooks_app, name="webhooks")
app.command("listen")(listen_command)


def _print_version(asked: bool) -> None:
    """Print the version and the last migration of each backend (what `Upgrading` in
    docs/deploy.md speaks of), then exit."""
    if not asked:
        return
    from tidings import __version__
    from tidings.storage.migrations import migration_files

    last = {backend: migration_files(backend)[-1][0] for backend in ("postgres", "sqlite")}
    out.print(
        f"tidings {__version__} (schema: PostgreSQL {last['postgres']}, SQLite {last['sqlite']})"
    )
    raise typer.Exit()


@app.callback()
def options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and the schema's last migrations, then exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """tidings: a self-hosted events service for platforms."""


# Kept for modules that import these names from here.
_with_storage, _fail, _client, _call, _parse = with_storage, fail, client_for, call, checked


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
    worker: Annotated[
        bool,
        typer.Option("--worker/--no-worker", help="Also run the delivery worker in this process."),
    ] = True,
    log_format: Annotated[str, typer.Option(help="console or json.")] = "console",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    processes: Annotated[
        int,
        typer.Option(
            help="Serve from this many processes sharing the port (one a core); each runs"
            " the delivery worker too, unless --no-worker.",
            min=1,
            max=256,
        ),
    ] = 1,
) -> None:
    """Run the service: the HTTP API and (unless --no-worker) the delivery worker."""
    from tidings import logs
    from tidings.server import listening_socket, supervise

    if processes == 1:
        _serve_process(host, port, worker, log_format, log_level)
        return
    logs.configure(log_format, log_level)
    settings = checked(lambda: _service_settings(host, port, worker))  # its faults, said once
    checked(lambda: listening_socket(host, port).close())  # taken: said once, before starting
    checked(lambda: asyncio.run(_prepare_service(settings)))
    args = (host, port, worker, log_format, log_level, True)
    code = supervise(_serve_process, args, processes)
    if code:
        raise typer.Exit(code)


async def _prepare_service(settings: Settings) -> None:
    """What the processes of `serve --processes` would each do first, done once: migrate, fix
    the issuer URL and make the first signing key (made by each at once, a new database got
    one first key a process, and the processes published differing key sets for a while).
    A database that cannot be used, or a key that cannot be read, is then said once."""
    from tidings.issuer import resolve_issuer_url
    from tidings.runtime import issuer_for

    storage = storage_for(settings)
    await storage.open()
    try:
        issuer_url = await resolve_issuer_url(storage, settings.issuer, settings.public_url)
        await issuer_for(settings, storage, issuer_url, time.time_ns).ensure_key()
    finally:
        await storage.close()


def _service_settings(host: str, port: int, worker: bool) -> Settings:
    from tidings.issuer import default_issuer_url

    return Settings.from_env(public_url=default_issuer_url(host, port), run_worker=worker)


def _serve_process(
    host: str,
    port: int,
    worker: bool,
    log_format: str,
    log_level: str,
    shared: bool = False,
) -> None:
    """One process of `tidings serve` (`shared`: one of several on the port)."""
    from tidings import logs
    from tidings.api import create_app
    from tidings.server import listening_socket
    from tidings.server import serve as run_server

    logs.configure(log_format, log_level)
    settings = checked(lambda: _service_settings(host, port, worker))
    try:
        sock = checked(lambda: listening_socket(host, port, shared=True)) if shared else None
        checked(lambda: run_server(create_app(settings), host, port, sock))
    except typer.Exit as exc:
        if not shared:
            raise
        sys.exit(exc.exit_code)  # in a process of its own: its exit code, not a traceback


@app.command("worker")
def run_worker(
    log_format: Annotated[str, typer.Option(help="console or json.")] = "console",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Answer /healthz, /readyz and /metrics (Prometheus) on this port.",
            min=1,
            max=65535,
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address for --metrics-port to listen on.")
    ] = "127.0.0.1",
) -> None:
    """Run the delivery worker alone, until interrupted."""
    from tidings import logs
    from tidings.delivery.standalone import run_standalone_worker
    from tidings.gc_tuning import tune_for_service

    logs.configure(log_format, log_level)
    settings = checked(Settings.from_env)
    tune_for_service()
    probes_at = None if metrics_port is None else (metrics_host, metrics_port)
    code = checked(lambda: uvloop.run(run_standalone_worker(settings, probes_at)))
    if code:
        raise typer.Exit(code)


@app.command()
def migrate() -> None:
    """Apply pending schema migrations to the configured database."""

    async def work() -> list[str]:
        # Not opened first: open() would apply the migrations and leave none to report.
        return await storage_for(Settings.from_env()).migrate()

    applied = _parse(lambda: asyncio.run(work()))
    err.print(f"schema is current ({len(applied)} migrations applied now)")


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port for the demo service.", min=1, max=65535)] = 8080,
    once: Annotated[
        bool, typer.Option("--once", help="Exit after the demo instead of serving.")
    ] = False,
) -> None:
    """Start the service on a temporary database and fill it with realistic events."""
    from tidings.demo import DemoNotStarted, run_demo

    try:
        run_demo(port=port, once=once, console=out)
    except DemoNotStarted as exc:
        raise fail(str(exc)) from None


@app.command("retention")
def retention() -> None:
    """Expire the events older than TIDINGS_RETENTION_DAYS now (serve also does it hourly)."""
    from tidings.runtime import run_retention

    settings = checked(Settings.from_env)

    async def work(storage: Storage) -> int:
        return await run_retention(storage, settings, time.time_ns())

    expired = with_storage(work)
    err.print(f"expired {expired} events older than {settings.retention_days:g} days")


@app.command("types")
def list_types(
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines, with schemas and examples.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List the catalog of event types, where each comes from, and how it is validated."""
    client = client_for(url, token)
    found = call(lambda: client.request("GET", "/v1/types"))["types"]
    if as_json:
        for event_type in found:
            print(json.dumps(event_type))
        return
    table = Table("type", "origin", "validation", "schema", "description")
    for event_type in found:
        table.add_row(
            event_type["type"],
            event_type["origin"],
            event_type["validation"],
            "yes" if event_type["schema"] else "no",
            event_type["description"],
        )
    out.print(table)


@groups_app.command("create")
def groups_create(
    name: Annotated[str, typer.Option(help="A human-readable name.")],
    parent: Annotated[str | None, typer.Option(help="Mint the group under this one.")] = None,
) -> None:
    """Mint a group (a root UID, or a child UIDP under --parent); print its path."""
    path = _parse(
        lambda: (
            groups.new_root()
            if parent is None
            else groups.new_child(groups.parse_group(parent, "parent"))
        )
    )

    async def work(storage: Storage) -> None:
        await storage.create_group(Group(path=path, name=name, created_ns=time.time_ns()))

    _with_storage(work)
    print(path)


@tokens_app.command("create")
def tokens_create(
    group: Annotated[str, typer.Option(help="The group the token acts on (and below).")],
    role: Annotated[list[str], typer.Option(help="viewer, producer, editor or owner; repeatable.")],
    name: Annotated[str | None, typer.Option(help="A label for the token.")] = None,
    subject: Annotated[str | None, typer.Option(help="The identity the token acts as.")] = None,
) -> None:
    """Create an API token; print only the token."""
    path = _parse(lambda: groups.parse_group(group))

    async def work(storage: Storage) -> str:
        token, secret = new_token(path, role, name, subject, None, time.time_ns())
        await storage.create_token(token)
        return secret

    print(_with_storage(work))


def main() -> None:
    """Entry point of the `tidings` command."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

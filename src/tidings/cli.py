"""The `tidings` command: run the service, bootstrap access, and use the API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tidings import groups
from tidings.api.access import new_token
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
from tidings.keys_cli import keys_app
from tidings.model import Group
from tidings.storage import open_storage
from tidings.storage.base import Storage
from tidings.subscriptions_cli import deliveries_app, subscriptions_app

app = typer.Typer(help="tidings: a self-hosted events service for platforms.", no_args_is_help=True)
groups_app = typer.Typer(help="Groups (works on the database directly).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (works on the database directly).", no_args_is_help=True)
events_app = typer.Typer(help="Emit, list and get events through the API.", no_args_is_help=True)
app.add_typer(groups_app, name="groups")
app.add_typer(tokens_app, name="tokens")
app.add_typer(events_app, name="events")
app.add_typer(subscriptions_app, name="subscriptions")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(keys_app, name="keys")

# Kept for modules that import these names from here.
_with_storage, _fail, _client, _call, _parse = with_storage, fail, client_for, call, checked


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    worker: Annotated[
        bool,
        typer.Option("--worker/--no-worker", help="Also run the delivery worker in this process."),
    ] = True,
    log_format: Annotated[str, typer.Option(help="console or json.")] = "console",
) -> None:
    """Run the service: the HTTP API and (unless --no-worker) the delivery worker."""
    from tidings import logs
    from tidings.api import create_app
    from tidings.issuer import default_issuer_url
    from tidings.server import serve as run_server

    logs.configure(log_format)
    settings = checked(
        lambda: Settings.from_env(public_url=default_issuer_url(host, port), run_worker=worker)
    )
    run_server(create_app(settings), host, port)


@app.command("worker")
def run_worker(
    log_format: Annotated[str, typer.Option(help="console or json.")] = "console",
) -> None:
    """Run the delivery worker alone, until interrupted."""
    from tidings import logs
    from tidings.delivery.standalone import run_standalone_worker

    logs.configure(log_format)
    settings = checked(Settings.from_env)
    checked(lambda: asyncio.run(run_standalone_worker(settings)))


@app.command()
def migrate() -> None:
    """Apply pending schema migrations to the configured database."""

    async def work() -> list[str]:
        # Not opened first: open() would apply the migrations and leave none to report.
        return await open_storage(Settings.from_env().database_url).migrate()

    applied = _parse(lambda: asyncio.run(work()))
    err.print(f"schema is current ({len(applied)} migrations applied now)")


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port for the demo service.")] = 8080,
    once: Annotated[
        bool, typer.Option("--once", help="Exit after the demo instead of serving.")
    ] = False,
) -> None:
    """Start the service on a temporary database and fill it with realistic events."""
    from tidings.demo import run_demo

    run_demo(port=port, once=once, console=out)


@app.command("types")
def list_types(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """List the catalog of event types."""
    client = _client(url, token)
    found = _call(lambda: client.request("GET", "/v1/types"))["types"]
    table = Table("type", "description")
    for event_type in found:
        table.add_row(event_type["type"], event_type["description"])
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


def _read_body(body: str) -> Any:
    text = Path(body[1:]).read_text() if body.startswith("@") else body
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"--body is not valid JSON: {exc}") from exc


@events_app.command("emit")
def events_emit(
    type: Annotated[str, typer.Option("--type", help="The event type.")],
    source: Annotated[str, typer.Option(help="The event source (a URI reference).")],
    group: Annotated[str, typer.Option(help="The group the event belongs to.")],
    actor: Annotated[str, typer.Option(help="Who did it (the actor's subject).")],
    body: Annotated[str, typer.Option(help="The body as JSON, or @file.")] = "{}",
    subject: Annotated[str | None, typer.Option(help="What it happened to.")] = None,
    event_id: Annotated[
        str | None, typer.Option("--id", help="The event id (default: generated).")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Emit one event; print it as stored."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "type": type,
        "source": source,
        "group": group,
        "data": {"actor": {"subject": actor}, "body": _read_body(body)},
    }
    if subject:
        event["subject"] = subject
    if event_id:
        event["id"] = event_id
    client = _client(url, token)
    print(json.dumps(_call(lambda: client.emit(event))))


def _row(event: dict[str, Any]) -> tuple[str, ...]:
    actor = event.get("data", {}).get("actor", {}).get("subject", "")
    return (
        event["time"],
        event["type"],
        event.get("subject", ""),
        actor,
        event["group"],
        event["id"],
    )


@events_app.command("list")
def events_list(
    type: Annotated[
        list[str] | None, typer.Option("--type", help="Exact type or 'prefix.*'; repeatable.")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Exact source.")] = None,
    subject: Annotated[str | None, typer.Option(help="Exact subject or 'prefix*'.")] = None,
    group: Annotated[str | None, typer.Option(help="Only this subtree.")] = None,
    actor: Annotated[str | None, typer.Option(help="The actor's subject.")] = None,
    since: Annotated[str | None, typer.Option(help="RFC 3339: at or after.")] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339: before.")] = None,
    limit: Annotated[int, typer.Option(help="Events per page (1..100).")] = 100,
    order: Annotated[str, typer.Option(help="asc or desc.")] = "asc",
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Keep polling for new events.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --follow.")] = 1.0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List events; all pages, or with --follow every new one as it arrives."""
    params: dict[str, Any] = {"limit": limit, "order": order}
    for key, value in (
        ("type", type),
        ("source", source),
        ("subject", subject),
        ("group", group),
        ("actor", actor),
        ("since", since),
        ("until", until),
    ):
        if value:
            params[key] = value
    if follow and order != "asc":
        raise _fail("--follow lists in ascending order")
    client = _client(url, token)
    table = None if as_json or follow else Table("time", "type", "subject", "actor", "group", "id")

    def show(events: list[dict[str, Any]]) -> None:
        for event in events:
            if table is not None:
                table.add_row(*_row(event))
            elif as_json:
                print(json.dumps(event), flush=True)
            else:
                out.print("  ".join(_row(event)), highlight=False)

    page: dict[str, Any] = {}
    for page in _call(lambda: list(client.pages(params))):
        show(page["events"])
    if table is not None:
        out.print(table)
    while follow:
        time.sleep(interval)
        params["cursor"] = page["next_cursor"]
        page = _call(lambda: client.list_events(params))
        show(page["events"])


@events_app.command("get")
def events_get(
    event_id: Annotated[str, typer.Argument(help="The CloudEvents id.")],
    source: Annotated[
        str | None, typer.Option(help="Needed when several events share the id.")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Show one event as JSON."""
    client = _client(url, token)
    out.print_json(json.dumps(_call(lambda: client.get_event(event_id, source))))


def main() -> None:
    """Entry point of the `tidings` command."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""`tidings events`: emit, list, follow, show and count events through the API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table
from rich.text import Text

from tidings import wire
from tidings.cli_common import (
    DEFAULT_URL,
    TokenOption,
    UrlOption,
    call,
    client_for,
    fail,
    finite,
    listing,
    out,
)
from tidings.errors import BadRequest
from tidings.model import PAGE_LIMIT

events_app = typer.Typer(
    help="Emit, list, show and count events through the API.", no_args_is_help=True
)

TypeOption = Annotated[
    list[str] | None, typer.Option("--type", help="Exact type or 'prefix.*'; repeatable.")
]
SourceOption = Annotated[str | None, typer.Option(help="Exact source.")]
SubjectOption = Annotated[str | None, typer.Option(help="Exact subject or 'prefix*'.")]
GroupOption = Annotated[str | None, typer.Option(help="Only this subtree.")]
ActorOption = Annotated[
    str | None, typer.Option(help="The actor's subject; 'me' for the token's own.")
]
EventKeyOption = Annotated[str | None, typer.Option(help="The source's key: one alert's history.")]
SearchOption = Annotated[str | None, typer.Option("--search", "-q", help="Words to search for.")]
SinceOption = Annotated[str | None, typer.Option(help="RFC 3339: at or after.")]
UntilOption = Annotated[str | None, typer.Option(help="RFC 3339: before.")]


def _filters(**given: Any) -> dict[str, Any]:
    """The filters given, as typed: an empty one goes to the API, which matches or refuses it
    (`--actor ''` lists no event, as `actor=` does), never dropped as if not given."""
    return {name: value for name, value in given.items() if value is not None and value != []}


def _read_json(value: str, option: str) -> Any:
    """The JSON given to `option`, or read from the file named after '@'. Parsed as the
    service parses events (no NaN, no lone surrogates), and sendable: a file that cannot be
    read, or JSON that is neither, is a one-line error."""
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"{option}: cannot read {value[1:]!r}: {exc}") from exc
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise fail(f"{option} is not valid JSON: {exc}") from exc
    try:
        orjson.dumps(parsed)
    except orjson.JSONEncodeError as exc:
        raise fail(f"{option} is nested too deeply to send: {exc}") from exc
    try:
        wire.refuse_inexact_integers(text.encode(), option)
    except BadRequest as exc:
        raise fail(str(exc)) from exc
    return parsed


@events_app.command("emit")
def emit(
    type: Annotated[str, typer.Option("--type", help="The event type.")],
    source: Annotated[str, typer.Option(help="The event source (a URI reference).")],
    group: Annotated[str, typer.Option(help="The group the event belongs to.")],
    actor: Annotated[str, typer.Option(help="Who did it (the actor's subject).")],
    body: Annotated[str, typer.Option(help="The body as JSON, or @file.")] = "{}",
    subject: Annotated[str | None, typer.Option(help="What it happened to.")] = None,
    description: Annotated[str | None, typer.Option(help="A human-readable description.")] = None,
    previous: Annotated[
        str | None, typer.Option(help="Changed properties before an update: JSON or @file.")
    ] = None,
    event_id: Annotated[
        str | None, typer.Option("--id", help="The event id (default: generated).")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Emit one event; print it as stored."""
    data: dict[str, Any] = {"actor": {"subject": actor}, "body": _read_json(body, "--body")}
    if previous:
        data["previous"] = _read_json(previous, "--previous")
    event: dict[str, Any] = {
        "specversion": "1.0",
        "type": type,
        "source": source,
        "group": group,
        "data": data,
    }
    for key, value in (("subject", subject), ("id", event_id), ("description", description)):
        if value:
            event[key] = value
    client = client_for(url, token)
    print(json.dumps(call(lambda: client.emit(event))))


def _actor(event: dict[str, Any]) -> str:
    return str(event.get("data", {}).get("actor", {}).get("subject", ""))


def _changes(event: dict[str, Any]) -> str:
    """The description, and which properties an update changed."""
    previous = event.get("data", {}).get("previous")
    text = str(event.get("description", ""))
    if previous:
        text += (" " if text else "") + "changed: " + ", ".join(sorted(previous))
    return text


def _row(event: dict[str, Any]) -> tuple[str, ...]:
    return (
        event["time"],
        event["type"],
        event.get("subject", ""),
        _actor(event),
        event["group"],
        event["id"],
        _changes(event),
    )


COLUMNS = ("time", "type", "subject", "actor", "group", "id", "description")


@events_app.command("list")
def list_events(
    type: TypeOption = None,
    source: SourceOption = None,
    subject: SubjectOption = None,
    group: GroupOption = None,
    actor: ActorOption = None,
    eventkey: EventKeyOption = None,
    search: SearchOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[
        int | None, typer.Option(help="At most this many events (all by default).", min=1)
    ] = None,
    order: Annotated[str, typer.Option(help="asc or desc.")] = "asc",
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Keep polling for new events.")] = False,
    interval: Annotated[
        float,
        typer.Option(
            help="Seconds between polls with --follow.", min=0.1, max=3600, callback=finite
        ),
    ] = 1.0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List events: all of them (or the first --limit), or with --follow every new one as it
    arrives. The last ten: --order desc --limit 10."""
    params: dict[str, Any] = {"limit": min(limit or PAGE_LIMIT, PAGE_LIMIT), "order": order}
    params.update(
        _filters(
            type=type,
            source=source,
            subject=subject,
            group=group,
            actor=actor,
            eventkey=eventkey,
            q=search,
            since=since,
            until=until,
        )
    )
    if follow and order != "asc":
        raise fail("--follow lists in ascending order")
    if follow and limit is not None:
        raise fail("--follow lists every event from the first on; it takes no --limit")
    client = client_for(url, token)
    tabled = not (as_json or follow)
    rows: list[tuple[str, ...]] = []

    def show(events: list[dict[str, Any]]) -> None:
        for event in events:
            if tabled:
                rows.append(_row(event))
            elif as_json:
                print(json.dumps(event), flush=True)
            else:
                out.print("  ".join(_row(event)), highlight=False)

    pages = client.pages(params)
    page: dict[str, Any] = {}
    shown = 0
    while limit is None or shown < limit:
        following = call(lambda: next(pages, None))
        if following is None:
            break
        page = following
        events = page["events"] if limit is None else page["events"][: limit - shown]
        show(events)
        shown += len(events)
    if tabled:
        out.print(listing(COLUMNS, rows))
    while follow:
        time.sleep(interval)
        params["cursor"] = page["next_cursor"]
        page = call(lambda: client.list_events(params))
        show(page["events"])


@events_app.command("get")
def get(
    event_id: Annotated[str, typer.Argument(help="The CloudEvents id.")],
    source: Annotated[
        str | None, typer.Option(help="Needed when several events share the id.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The event as CloudEvents JSON.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Show one event: its attributes, when it happened and was stored, what changed, its body."""
    client = client_for(url, token)
    event = call(lambda: client.get_event(event_id, source))
    if as_json:
        out.print_json(json.dumps(event))
        return
    details = Table(show_header=False, box=None)
    data = event.get("data", {})
    actor = data.get("actor", {})
    rows = [
        ("type", event["type"]),
        ("id", event["id"]),
        ("source", event["source"]),
        ("subject", event.get("subject", "")),
        ("group", event["group"]),
        (
            "actor",
            " ".join(str(actor.get(k, "")) for k in ("subject", "email", "ip") if actor.get(k)),
        ),
        ("time", f"{event['time']} (at the source)"),
        ("stored", f"{event.get('storedtime', '')} (by tidings)"),
    ]
    standard = {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "group",
        "datacontenttype",
        "data",
        "storedtime",
    }
    rows += [(name, str(value)) for name, value in sorted(event.items()) if name not in standard]
    for name, value in rows:
        if value:
            details.add_row(Text(name, style="bold"), value)
    out.print(details)
    if data.get("previous"):
        out.print(Text.assemble(("previous", "bold"), " (before the change)"))
        out.print_json(json.dumps(data["previous"]))
    out.print("body", style="bold")
    out.print_json(json.dumps(data.get("body", {})))


@events_app.command("stats")
def stats(
    by: Annotated[
        list[str] | None,
        typer.Option("--by", help="type, group, actor, source or subject; repeatable."),
    ] = None,
    interval: Annotated[str | None, typer.Option(help="Count per 'hour' or 'day'.")] = None,
    chart: Annotated[bool, typer.Option("--chart", help="Draw the counts as bars.")] = False,
    type: TypeOption = None,
    source: SourceOption = None,
    subject: SubjectOption = None,
    group: GroupOption = None,
    actor: ActorOption = None,
    eventkey: EventKeyOption = None,
    search: SearchOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Count events by field and/or per hour or day; --chart draws bars (by time when --interval)."""
    params: dict[str, Any] = _filters(
        type=type,
        source=source,
        subject=subject,
        group=group,
        actor=actor,
        eventkey=eventkey,
        q=search,
        since=since,
        until=until,
        interval=interval,
    )
    if by:
        params["group_by"] = by
    client = client_for(url, token)
    rows: list[dict[str, Any]] = call(
        lambda: client.request("GET", "/v1/events/stats", params=params)
    )["rows"]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    keys = [*(by or []), *(["interval_start"] if interval else [])]
    if interval and not by:
        rows = sorted(rows, key=lambda row: str(row["interval_start"]))
    if chart:
        out.print(bar_chart(rows, keys))
        return
    table = Table(*keys, "count")
    for row in rows:
        table.add_row(*(str(row.get(key, "")) for key in keys), str(row["count"]))
    out.print(table)


def bar_chart(rows: list[dict[str, Any]], keys: list[str], width: int = 50) -> Table:
    """Counts as horizontal bars, scaled to the largest."""
    table = Table(show_header=False, box=None, pad_edge=False)
    top = max((int(row["count"]) for row in rows), default=0)
    for row in rows:
        count = int(row["count"])
        bar = "█" * max(1 if count else 0, round(width * count / top)) if top else ""
        label = " ".join(str(row.get(key, "")) for key in keys) or "all"
        table.add_row(label, Text.assemble((bar, "cyan"), f" {count}"))
    return table

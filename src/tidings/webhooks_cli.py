"""`tidings webhooks`: inbound webhooks that turn external systems' payloads into events."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from tidings.cli_common import (
    DEFAULT_URL,
    TokenOption,
    UrlOption,
    call,
    client_for,
    err,
    fail,
    finite,
    id_in_path,
    listing,
    out,
)

webhooks_app = typer.Typer(
    help="Inbound webhooks: external systems post events to them.", no_args_is_help=True
)


@webhooks_app.command("create")
def create(
    group: Annotated[str, typer.Option(help="The group the events belong to.")],
    name: Annotated[str, typer.Option(help="What posts to it.")],
    mapping: Annotated[
        str, typer.Option(help="cloudevents, alertmanager, grafana, or a generic mapping as JSON.")
    ] = "cloudevents",
    rate_limit: Annotated[
        float,
        typer.Option(help="Requests per second.", min=0.01, max=10_000, callback=finite),
    ] = 100.0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Create an inbound webhook; print its id, then its access key (shown once) on stderr."""
    spec_mapping: Any = mapping
    if mapping.startswith("{"):
        try:
            spec_mapping = json.loads(mapping)
        except json.JSONDecodeError as exc:
            raise fail(f"--mapping is not valid JSON: {exc}") from exc
    spec = {"group": group, "name": name, "mapping": spec_mapping, "rate_limit": rate_limit}
    client = client_for(url, token)
    created = call(lambda: client.request("POST", "/v1/webhooks", json=spec))
    print(created["id"])
    err.print(f"access key (shown once): {created['access_key']}", highlight=False)
    err.print(
        f"post to: {url.rstrip('/')}{created['url']} with header X-Access-Key", highlight=False
    )


@webhooks_app.command("list")
def list_webhooks(
    group: Annotated[str | None, typer.Option(help="Only this subtree.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List the inbound webhooks of a subtree."""
    client = client_for(url, token)
    params = {"group": group} if group else {}
    found = call(lambda: client.request("GET", "/v1/webhooks", params=params))["webhooks"]
    if as_json:
        for webhook in found:
            print(json.dumps(webhook))
        return
    rows = [
        (
            webhook["id"],
            webhook["name"],
            webhook["group"],
            webhook["mapping"]["kind"],
            f"{webhook['rate_limit']:g}/s",
        )
        for webhook in found
    ]
    out.print(listing(("id", "name", "group", "mapping", "rate limit"), rows))


@webhooks_app.command("delete")
def delete(
    webhook_id: Annotated[str, typer.Argument(help="The webhook's id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Delete an inbound webhook; its key stops working at once."""
    client = client_for(url, token)
    path = id_in_path(webhook_id, "webhook")
    call(lambda: client.request("DELETE", f"/v1/webhooks/{path}"))
    err.print(f"deleted webhook {webhook_id}; its access key no longer works")

"""`tidings subscriptions` and `tidings deliveries`: managing delivery through the API."""

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
    id_in_path,
    listing,
    out,
)

subscriptions_app = typer.Typer(
    help="Subscriptions: where a group's events are delivered.", no_args_is_help=True
)
deliveries_app = typer.Typer(
    help="Deliveries: each event sent to each subscription.", no_args_is_help=True
)


@subscriptions_app.command("create")
def create(
    sink: Annotated[str, typer.Argument(help="The endpoint's http(s) URL.")],
    parent: Annotated[
        str | None,
        typer.Option("--parent", "--group", help="The group whose events are delivered."),
    ] = None,
    event_type: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only these types (exact or 'prefix.*'); repeatable."),
    ] = None,
    subject: Annotated[str | None, typer.Option(help="Only subjects starting with this.")] = None,
    kind: Annotated[str, typer.Option(help="webhook or slack.")] = "webhook",
    description: Annotated[str | None, typer.Option(help="What it is for.")] = None,
    signing_secret: Annotated[
        str | None,
        typer.Option(help="'whsec_...' or 'generate': also sign with Standard Webhooks."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Subscribe an endpoint to a group's events; print the subscription's id."""
    if parent is None:
        raise fail("--parent (or --group) is required: the group whose events are delivered")
    spec: dict[str, Any] = {"parent": parent, "sink": sink, "kind": kind, "types": event_type or []}
    for key, value in (
        ("subject", subject),
        ("description", description),
        ("signing_secret", signing_secret),
    ):
        if value is not None:
            spec[key] = value
    client = client_for(url, token)
    created = call(lambda: client.request("POST", "/v1/subscriptions", json=spec))
    print(created["id"])
    if "signing_secret" in created:
        err.print(f"signing secret (shown once): {created['signing_secret']}", highlight=False)


@subscriptions_app.command("list")
def list_subscriptions(
    group: Annotated[str | None, typer.Option(help="Only this subtree.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List the subscriptions of a subtree."""
    client = client_for(url, token)
    params = {"group": group} if group else {}
    found = call(lambda: client.request("GET", "/v1/subscriptions", params=params))["subscriptions"]
    if as_json:
        for sub in found:
            print(json.dumps(sub))
        return
    rows = [
        (sub["id"], sub["kind"], sub["sink"], ", ".join(sub["types"]) or "(all)", sub["state"])
        for sub in found
    ]
    out.print(listing(("id", "kind", "sink", "types", "state"), rows))


@subscriptions_app.command("delete")
def delete(
    subscription_id: Annotated[str, typer.Argument(help="The subscription's id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Delete a subscription."""
    client = client_for(url, token)
    path = id_in_path(subscription_id, "subscription", segments=True)
    call(lambda: client.request("DELETE", f"/v1/subscriptions/{path}"))
    err.print(f"deleted subscription {subscription_id}")


@subscriptions_app.command("replay")
def replay(
    subscription_id: Annotated[str, typer.Argument(help="The subscription's id.")],
    since: Annotated[str, typer.Option(help="RFC 3339: replay events stored since then.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Queue every matching event stored since a time again; print how many."""
    client = client_for(url, token)
    path = id_in_path(subscription_id, "subscription", segments=True)
    answer = call(
        lambda: client.request("POST", f"/v1/subscriptions/{path}/replay", json={"since": since})
    )
    print(answer["queued"])


@deliveries_app.command("list")
def list_deliveries(
    subscription_id: Annotated[str, typer.Argument(help="The subscription's id.")],
    status: Annotated[str | None, typer.Option(help="pending, delivered or failed.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List a subscription's deliveries, newest first, with their last attempt."""
    client = client_for(url, token)
    params = {"status": status} if status else {}
    path = id_in_path(subscription_id, "subscription", segments=True)
    page = call(
        lambda: client.request("GET", f"/v1/subscriptions/{path}/deliveries", params=params)
    )
    if as_json:
        for delivery in page["deliveries"]:
            print(json.dumps(delivery))
        return
    rows = []
    for delivery in page["deliveries"]:
        last = delivery["attempts"][-1] if delivery["attempts"] else {}
        rows.append(
            (
                delivery["id"],
                delivery["event"]["id"],
                delivery["event"]["type"],
                delivery["status"],
                str(len(delivery["attempts"])),
                str(last.get("status_code") or ""),
                last.get("error") or "",
            )
        )
    headers = ("id", "event", "type", "status", "attempts", "last status", "last error")
    out.print(listing(headers, rows))


@deliveries_app.command("retry")
def retry(
    delivery_id: Annotated[str, typer.Argument(help="The delivery's id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Queue a failed delivery again, at once."""
    client = client_for(url, token)
    path = id_in_path(delivery_id, "delivery")
    call(lambda: client.request("POST", f"/v1/deliveries/{path}/retry"))
    err.print(f"delivery {delivery_id} is queued again")

"""Slack subscriptions end to end: a local receiver that checks each message as Slack's incoming webhooks would."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aiohttp import web
from fastapi.testclient import TestClient

from tests.conftest import Tenant, auth, event
from tests.receivers import Received, Receiver
from tidings.config import Settings

SLACK_TYPE = "dev.example.widget.created.v1"
HOOK_PATH = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"

# What Slack documents for an incoming webhook's JSON payload.
TOP_LEVEL = frozenset(
    {
        "text",
        "blocks",
        "attachments",
        "username",
        "icon_emoji",
        "icon_url",
        "channel",
        "thread_ts",
        "mrkdwn",
        "unfurl_links",
        "unfurl_media",
    }
)
BLOCK_KEYS = {
    "header": frozenset({"type", "text", "block_id"}),
    "section": frozenset({"type", "text", "fields", "block_id"}),
    "context": frozenset({"type", "elements", "block_id"}),
    "divider": frozenset({"type", "block_id"}),
}
EMOJI = re.compile(r":[a-z0-9_+'-]+:")
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_FIELDS = 10
MAX_FIELD = 2000
MAX_TEXT_OBJECT = 3000
MAX_CONTEXT = 10


def _text_object(obj: Any, where: str, limit: int, kinds: tuple[str, ...]) -> list[str]:
    """Problems of one Block Kit text object."""
    if not isinstance(obj, dict):
        return [f"{where} is not an object"]
    problems = []
    allowed = {"type", "text", "emoji" if obj.get("type") == "plain_text" else "verbatim"}
    if set(obj) - allowed:
        problems.append(f"{where} has unknown keys {sorted(set(obj) - allowed)}")
    if obj.get("type") not in kinds:
        problems.append(f"{where}.type is {obj.get('type')!r}, not one of {kinds}")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        problems.append(f"{where}.text is not a non-empty string")
    elif len(text) > limit:
        problems.append(f"{where}.text has {len(text)} characters, more than {limit}")
    return problems


def _block(block: Any, where: str) -> list[str]:
    """Problems of one block (only the kinds a tidings message may use)."""
    if not isinstance(block, dict) or block.get("type") not in BLOCK_KEYS:
        return [f"{where} is not a header, section, context or divider block"]
    kind = block["type"]
    unknown = sorted(set(block) - BLOCK_KEYS[kind])
    problems = [f"{where} has unknown keys {unknown}"] if unknown else []
    if kind == "header":
        problems += _text_object(block.get("text"), f"{where}.text", MAX_HEADER, ("plain_text",))
    elif kind == "section":
        if "text" not in block and "fields" not in block:
            problems.append(f"{where} has neither text nor fields")
        if "text" in block:
            problems += _text_object(
                block["text"], f"{where}.text", MAX_TEXT_OBJECT, ("plain_text", "mrkdwn")
            )
        if "fields" in block:
            fields = block["fields"]
            if not isinstance(fields, list) or not 1 <= len(fields) <= MAX_FIELDS:
                problems.append(f"{where}.fields is not a list of 1 to {MAX_FIELDS} items")
            else:
                for index, field in enumerate(fields):
                    problems += _text_object(
                        field, f"{where}.fields[{index}]", MAX_FIELD, ("plain_text", "mrkdwn")
                    )
    elif kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_CONTEXT:
            problems.append(f"{where}.elements is not a list of 1 to {MAX_CONTEXT} items")
        else:
            for index, element in enumerate(elements):
                problems += _text_object(
                    element,
                    f"{where}.elements[{index}]",
                    MAX_TEXT_OBJECT,
                    ("plain_text", "mrkdwn"),
                )
    return problems


def slack_problems(request: Received) -> list[str]:
    """Why Slack's incoming-webhook endpoint would refuse this request; empty when it would not."""
    content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return [f"Content-Type is {content_type!r}, not application/json"]
    try:
        payload = json.loads(request.body)
    except ValueError:
        return ["the body is not JSON"]
    if not isinstance(payload, dict):
        return ["the payload is not a JSON object"]
    problems = []
    if set(payload) - TOP_LEVEL:
        problems.append(f"unknown top-level keys {sorted(set(payload) - TOP_LEVEL)}")
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        problems.append("text (the fallback when blocks are used) is not a non-empty string")
    if "blocks" in payload:
        blocks = payload["blocks"]
        if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
            problems.append(f"blocks is not a list of at most {MAX_BLOCKS} blocks")
        else:
            for index, block in enumerate(blocks):
                problems += _block(block, f"blocks[{index}]")
    if "username" in payload and not isinstance(payload["username"], str):
        problems.append("username is not a string")
    if "icon_emoji" in payload and (
        not isinstance(payload["icon_emoji"], str) or not EMOJI.fullmatch(payload["icon_emoji"])
    ):
        problems.append(f"icon_emoji {payload['icon_emoji']!r} is not of the form :name:")
    if "icon_url" in payload:
        url = payload["icon_url"]
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"icon_url {url!r} is not an http(s) URL")
    return problems


def slack(request: Received) -> web.StreamResponse:
    """Answer as Slack does: 400 invalid_payload for an invalid message, else 200 ok."""
    if slack_problems(request):
        return web.Response(status=400, text="invalid_payload")
    return web.Response(status=200, text="ok")


def unescape(text: str) -> str:
    """Text as Slack displays it: its three entities decoded."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def escaping_problems(text: str) -> list[str]:
    """Where `text` breaks Slack's escaping rules: a bare <, > or an & that starts no entity."""
    problems = [f"bare {char!r}" for char in "<>" if char in text]
    problems += [
        f"bare '&' at {match.start()}" for match in re.finditer(r"&(?!amp;|lt;|gt;)", text)
    ]
    return problems


def mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    """Every mrkdwn text of the message, the top-level text first."""
    texts = [message["text"]]
    for block in message.get("blocks", []):
        for obj in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(obj, dict) and obj.get("type") == "mrkdwn":
                texts.append(obj["text"])
    return texts


def displayed(message: dict[str, Any]) -> str:
    """All text the message shows, unescaped, joined by newlines."""
    shown = [unescape(t) for t in mrkdwn_texts(message)]
    shown += [b["text"]["text"] for b in message.get("blocks", []) if b.get("type") == "header"]
    return "\n".join(shown)


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings that let deliveries reach receivers on 127.0.0.1."""
    return Settings(
        database_url=database_url,
        allow_private_sinks=True,
        delivery_poll_s=0.05,
        public_url="http://tidings.test",
    )


@pytest.fixture
def hook(receivers: Any) -> Receiver:
    """A receiver that answers like Slack's incoming-webhook endpoint."""
    receiver: Receiver = receivers(slack)
    return receiver


def subscribe_slack(client: TestClient, tenant: Tenant, hook: Receiver, **extra: Any) -> str:
    response = client.post(
        "/v1/subscriptions",
        json={
            "parent": tenant.root,
            "sink": hook.url + HOOK_PATH,
            "kind": "slack",
            "types": [SLACK_TYPE],
            **extra,
        },
        headers=auth(tenant.owner),
    )
    assert response.status_code == 201, response.text
    sub_id: str = response.json()["id"]
    return sub_id


def deliver(
    client: TestClient, tenant: Tenant, hook: Receiver, **overrides: Any
) -> tuple[dict[str, Any], Received]:
    """Ingest one event and return it as stored with the request that delivered it."""
    response = client.post(
        "/v1/events",
        json=event(tenant.root, type=SLACK_TYPE, **overrides),
        headers=auth(tenant.producer),
    )
    assert response.status_code == 201, response.text
    [request] = hook.wait_for(1)
    stored: dict[str, Any] = response.json()
    return stored, request


def data(actor: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"actor": {"subject": actor}, "body": body}


# --- the validator itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {},
        {"text": ""},
        {"text": "hi", "color": "red"},
        {"text": "hi", "blocks": [{"type": "image"}]},
        {"text": "hi", "blocks": [{"type": "divider"}] * 51},
        {"text": "hi", "blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}]},
        {
            "text": "hi",
            "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}],
        },
        {
            "text": "hi",
            "blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}],
        },
        {
            "text": "hi",
            "blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2001}]}],
        },
        {
            "text": "hi",
            "blocks": [{"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 11}],
        },
        {"text": "hi", "username": 3},
        {"text": "hi", "icon_emoji": "bell"},
        {"text": "hi", "icon_url": "ftp://example.com/a.png"},
    ],
)
def test_the_validator_answers_invalid_payload_like_slack(hook: Receiver, payload: Any) -> None:
    """The receiver refuses each malformed message with 400 invalid_payload, as Slack does."""
    response = httpx.post(hook.url + HOOK_PATH, json=payload, trust_env=False)
    assert (response.status_code, response.text) == (400, "invalid_payload")


def test_the_validator_accepts_a_documented_message(hook: Receiver) -> None:
    """The receiver answers 200 ok to a message shaped as Slack's documentation shows."""
    payload = {
        "text": "Danny Torrence left a 1 star review",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "New review"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Stars*\n:star:"}},
            {"type": "divider"},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "Location: Dogpatch"}]},
        ],
        "username": "reviews",
        "icon_emoji": ":ghost:",
    }
    response = httpx.post(hook.url + HOOK_PATH, json=payload, trust_env=False)
    assert (response.status_code, response.text) == (200, "ok")


# --- what tidings sends ------------------------------------------------------------------------


def test_slack_subscription_posts_a_valid_incoming_webhook_message(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """An event reaches the Slack hook's path as a message the endpoint accepts."""
    subscribe_slack(client, tenant, hook)
    _, request = deliver(client, tenant, hook)
    assert request.path == HOOK_PATH
    assert slack_problems(request) == []


def test_slack_delivery_is_recorded_as_delivered(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """The hook's 200 ok makes the delivery delivered after one attempt."""
    sub_id = subscribe_slack(client, tenant, hook)
    deliver(client, tenant, hook)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        [found] = client.get(
            f"/v1/subscriptions/{sub_id}/deliveries", headers=auth(tenant.owner)
        ).json()["deliveries"]
        if found["status"] != "pending":
            break
        time.sleep(0.02)
    assert found["status"] == "delivered"
    assert [a["status_code"] for a in found["attempts"]] == [200]


def test_slack_message_shows_type_subject_actor_group_and_time(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """The message names the event's type, subject, actor, group and time."""
    subscribe_slack(client, tenant, hook)
    subject = f"{tenant.root}/00000000000000aa"
    stored, request = deliver(
        client, tenant, hook, subject=subject, data=data("alice@example.com", {"name": "w1"})
    )
    shown = displayed(json.loads(request.body))
    for value in (SLACK_TYPE, subject, "alice@example.com", tenant.root, stored["time"]):
        assert value in shown


def test_slack_fallback_text_summarises_the_event(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """The top-level text (the notification's fallback) says the type, the actor and the subject."""
    subscribe_slack(client, tenant, hook)
    subject = f"{tenant.root}/00000000000000ab"
    _, request = deliver(client, tenant, hook, subject=subject, data=data("bob", {}))
    text = unescape(json.loads(request.body)["text"])
    assert SLACK_TYPE in text
    assert "bob" in text
    assert subject in text


def test_slack_message_shows_the_body_main_fields(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """The body's scalar fields appear with their names and values."""
    subscribe_slack(client, tenant, hook)
    body = {"name": "widget-7", "replicas": 3, "ready": True}
    _, request = deliver(client, tenant, hook, data=data("carol", body))
    shown = displayed(json.loads(request.body))
    for key, value in body.items():
        assert key in shown
        assert str(value) in shown


def test_slack_escapes_angle_brackets_and_ampersands(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """<, & and > in the subject, actor and body arrive as &lt;, &amp; and &gt; and show as typed."""
    subscribe_slack(client, tenant, hook)
    tricky = "<!channel> & <https://evil.example|click> > 1 &amp;"
    _, request = deliver(
        client, tenant, hook, subject=f"s {tricky}", data=data(f"a {tricky}", {"note": tricky})
    )
    message = json.loads(request.body)
    assert slack_problems(request) == []
    for text in mrkdwn_texts(message):
        assert escaping_problems(text) == [], text
    assert unescape(message["text"]).count(tricky) == 2
    assert f"s {tricky}" in displayed(message)
    assert f"a {tricky}" in displayed(message)
    assert any(unescape(t).endswith(f"\n{tricky}") for t in mrkdwn_texts(message))


def test_slack_carries_a_non_ascii_subject_intact(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """A subject in other scripts and emoji arrives as UTF-8 JSON, readable as sent."""
    subscribe_slack(client, tenant, hook)
    subject = "Überprüfung/日本語/🚀 café"
    _, request = deliver(client, tenant, hook, subject=subject)
    assert slack_problems(request) == []
    request.body.decode("utf-8")
    assert subject in displayed(json.loads(request.body))


def test_slack_message_of_a_long_event_stays_within_slack_limits(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """Many long fields and a long subject, actor and source still give a message Slack accepts."""
    subscribe_slack(client, tenant, hook)
    body: dict[str, Any] = {f"{'&' * 500}{i:02d}": "&<>" * 2000 for i in range(40)}
    body["nested"] = {"deep": ["x"] * 100}
    _, request = deliver(
        client,
        tenant,
        hook,
        source="https://platform.example/?" + "&" * 990,
        subject="&" * 1024,
        data=data("<" * 1024, body),  # the longest actor accepted; escaped, 4,096 characters
    )
    assert slack_problems(request) == []


def test_slack_username_is_applied(client: TestClient, tenant: Tenant, hook: Receiver) -> None:
    """slack_username becomes the message's username."""
    subscribe_slack(client, tenant, hook, slack_username="tidings bot")
    _, request = deliver(client, tenant, hook)
    assert json.loads(request.body)["username"] == "tidings bot"


def test_emoji_slack_icon_becomes_icon_emoji(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """slack_icon ':bell:' is sent as icon_emoji, with no icon_url."""
    subscribe_slack(client, tenant, hook, slack_icon=":bell:")
    _, request = deliver(client, tenant, hook)
    message = json.loads(request.body)
    assert message["icon_emoji"] == ":bell:"
    assert "icon_url" not in message
    assert slack_problems(request) == []


def test_url_slack_icon_becomes_icon_url(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """slack_icon 'https://...png' is sent as icon_url, with no icon_emoji."""
    icon = "https://platform.example/static/tidings.png"
    subscribe_slack(client, tenant, hook, slack_icon=icon)
    _, request = deliver(client, tenant, hook)
    message = json.loads(request.body)
    assert message["icon_url"] == icon
    assert "icon_emoji" not in message
    assert slack_problems(request) == []


def test_without_username_or_icon_slack_defaults_apply(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """A subscription without slack_username or slack_icon sends neither, leaving the hook's own."""
    subscribe_slack(client, tenant, hook)
    _, request = deliver(client, tenant, hook)
    assert {"username", "icon_emoji", "icon_url"} & set(json.loads(request.body)) == set()


def test_slack_requests_carry_no_authorization(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """A Slack delivery sends no Authorization header (the hook's URL is its secret)."""
    subscribe_slack(client, tenant, hook)
    _, request = deliver(client, tenant, hook)
    assert request.header("Authorization") is None
    assert request.header("Content-Type") == "application/json"


def test_slack_test_send_is_a_valid_message(
    client: TestClient, tenant: Tenant, hook: Receiver
) -> None:
    """POST .../test on a Slack subscription sends a message the hook accepts."""
    sub_id = subscribe_slack(client, tenant, hook)
    answer = client.post(f"/v1/subscriptions/{sub_id}/test", headers=auth(tenant.owner)).json()
    assert (answer["status_code"], answer["response"], answer["delivered"]) == (200, "ok", True)

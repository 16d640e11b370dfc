"""Standard Webhooks signatures, as an option: verified with the `standardwebhooks` package."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import pytest
from aiohttp import web
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.conftest import TEST_TYPE, Tenant, auth, event
from tests.receivers import Received, Receiver
from tidings.config import Settings
from tidings.delivery.schedule import parse_schedule

WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings that reach receivers on 127.0.0.1 and retry within a fraction of a second."""
    return Settings(
        database_url=database_url,
        allow_private_sinks=True,
        delivery_poll_s=0.05,
        public_url="http://tidings.test",
        retry_schedule=parse_schedule("0,100ms,100ms"),
    )


def new_secret() -> str:
    """A fresh Standard Webhooks secret of 32 random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def create(client: TestClient, tenant: Tenant, sink: str, **extra: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/subscriptions",
        json={"parent": tenant.root, "sink": sink, "types": [TEST_TYPE], **extra},
        headers=auth(tenant.owner),
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def emit(client: TestClient, tenant: Tenant, event_id: str) -> None:
    response = client.post(
        "/v1/events", json=event(tenant.root, id=event_id), headers=auth(tenant.producer)
    )
    assert response.status_code == 201, response.text


def fail_once() -> Any:
    """An answer that is 500 for the first request and 200 after."""
    seen: list[Received] = []

    def answer(request: Received) -> web.StreamResponse:
        seen.append(request)
        return web.Response(status=500 if len(seen) == 1 else 200)

    return answer


def test_generated_secret_is_a_whsec_key_in_the_create_response(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """signing_secret 'generate' answers a 'whsec_' secret of base64 key bytes, once."""
    created = create(client, tenant, receivers().url, signing_secret="generate")
    secret = created["signing_secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24
    assert created["signed"] is True


def test_two_generated_secrets_differ(client: TestClient, tenant: Tenant, receivers: Any) -> None:
    """Each 'generate' makes a new random secret."""
    sink = receivers().url
    first = create(client, tenant, sink, signing_secret="generate")["signing_secret"]
    second = create(client, tenant, sink, signing_secret="generate")["signing_secret"]
    assert first != second


def test_secret_is_never_shown_after_creation(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """GET, list and PATCH say the subscription is signed but never show its secret."""
    created = create(client, tenant, receivers().url, signing_secret="generate")
    secret = created["signing_secret"]
    path = f"/v1/subscriptions/{created['id']}"
    got = client.get(path, headers=auth(tenant.owner))
    listed = client.get("/v1/subscriptions", headers=auth(tenant.owner))
    patched = client.patch(path, json={"description": "d"}, headers=auth(tenant.owner))
    for response in (got, listed, patched):
        assert response.status_code == 200
        assert secret not in response.text
        assert secret.removeprefix("whsec_") not in response.text
        assert "signing_secret" not in response.text
    assert got.json()["signed"] is True
    assert [s["signed"] for s in listed.json()["subscriptions"]] == [True]


def test_deliveries_with_a_generated_secret_verify(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """A delivery carries webhook-id/-timestamp/-signature that standardwebhooks verifies."""
    receiver: Receiver = receivers()
    secret = create(client, tenant, receiver.url, signing_secret="generate")["signing_secret"]
    emit(client, tenant, "e1")
    [request] = receiver.wait_for(1)
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload == {"actor": {"subject": "user-1"}, "body": {"name": "w1"}}


def test_deliveries_with_a_given_secret_verify(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """A 'whsec_' secret supplied at creation signs deliveries that verify with it."""
    receiver: Receiver = receivers()
    secret = new_secret()
    created = create(client, tenant, receiver.url, signing_secret=secret)
    assert created["signing_secret"] == secret
    emit(client, tenant, "e1")
    [request] = receiver.wait_for(1)
    Webhook(secret).verify(request.body, request.headers)


def test_signature_headers_have_the_spec_form(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """webhook-timestamp is the current Unix time in seconds, webhook-signature 'v1,<base64>'."""
    receiver: Receiver = receivers()
    create(client, tenant, receiver.url, signing_secret=new_secret())
    before = int(time.time())
    emit(client, tenant, "e1")
    [request] = receiver.wait_for(1)
    timestamp = request.header("webhook-timestamp") or ""
    assert timestamp.isdigit()
    assert before - 1 <= int(timestamp) <= time.time() + 1
    version, _, signature = (request.header("webhook-signature") or "").partition(",")
    assert version == "v1"
    assert len(base64.b64decode(signature, validate=True)) == 32
    assert request.header("webhook-id")


def test_a_tampered_body_fails_verification(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """Changing one byte of the delivered body makes verification fail."""
    receiver: Receiver = receivers()
    secret = create(client, tenant, receiver.url, signing_secret="generate")["signing_secret"]
    emit(client, tenant, "e1")
    [request] = receiver.wait_for(1)
    tampered = request.body.replace(b"w1", b"w2")
    assert tampered != request.body
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, request.headers)


def test_another_secret_fails_verification(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """A delivery does not verify with a secret other than the subscription's."""
    receiver: Receiver = receivers()
    create(client, tenant, receiver.url, signing_secret="generate")
    emit(client, tenant, "e1")
    [request] = receiver.wait_for(1)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(request.body, request.headers)


def test_webhook_id_is_stable_across_retries(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """A retried delivery keeps its webhook-id, and every attempt verifies."""
    receiver: Receiver = receivers(fail_once())
    secret = create(client, tenant, receiver.url, signing_secret="generate")["signing_secret"]
    emit(client, tenant, "e1")
    first, second = receiver.wait_for(2)
    assert first.header("Ce-Id") == second.header("Ce-Id") == "e1"
    assert first.header("webhook-id") == second.header("webhook-id")
    for request in (first, second):
        Webhook(secret).verify(request.body, request.headers)


def test_webhook_id_differs_between_deliveries(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """Two events give two deliveries with different webhook-ids."""
    receiver: Receiver = receivers()
    create(client, tenant, receiver.url, signing_secret="generate")
    emit(client, tenant, "e1")
    emit(client, tenant, "e2")
    ids = {r.header("Ce-Id"): r.header("webhook-id") for r in receiver.wait_for(2)}
    assert set(ids) == {"e1", "e2"}
    assert ids["e1"] != ids["e2"]


def test_webhook_id_differs_between_subscriptions_of_one_event(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """One event sent to two signed subscriptions has a webhook-id per delivery."""
    one, two = receivers(), receivers()
    create(client, tenant, one.url, signing_secret="generate")
    create(client, tenant, two.url, signing_secret="generate")
    emit(client, tenant, "e1")
    [first], [second] = one.wait_for(1), two.wait_for(1)
    assert first.header("webhook-id") != second.header("webhook-id")


def test_signed_deliveries_still_carry_the_bearer_token_and_cloudevents_headers(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """The signature is added to, not instead of, Authorization and the Ce-* headers."""
    receiver: Receiver = receivers()
    create(client, tenant, receiver.url, signing_secret="generate")
    emit(client, tenant, "e1")
    [request] = receiver.wait_for(1)
    assert (request.header("Authorization") or "").startswith("Bearer ")
    assert request.header("Ce-Id") == "e1"
    assert request.header("Ce-Type") == TEST_TYPE


def test_unsigned_subscriptions_send_no_webhook_headers(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """Without a signing secret no webhook-* header is sent."""
    receiver: Receiver = receivers()
    created = create(client, tenant, receiver.url)
    assert created["signed"] is False
    assert "signing_secret" not in created
    emit(client, tenant, "e1")
    [request] = receiver.wait_for(1)
    assert [name for name in request.headers if name.lower().startswith("webhook-")] == []


def test_test_send_of_a_signed_subscription_verifies(
    client: TestClient, tenant: Tenant, receivers: Any
) -> None:
    """POST .../test signs its message like a delivery."""
    receiver: Receiver = receivers()
    created = create(client, tenant, receiver.url, signing_secret="generate")
    answer = client.post(f"/v1/subscriptions/{created['id']}/test", headers=auth(tenant.owner))
    assert answer.json()["delivered"] is True
    [request] = receiver.wait_for(1)
    Webhook(created["signing_secret"]).verify(request.body, request.headers)

"""Request ids: on every answer (a 500 included) and in the log lines of the request."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import Tenant, auth

UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """The structlog events logged during the test, with the context bound when each was."""
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as captured:
        yield captured


def test_each_answer_has_an_id_of_its_own(client: TestClient, tenant: Tenant) -> None:
    answers = [
        client.get("/healthz"),
        client.get("/v1/events", headers=auth(tenant.viewer)),
        client.post("/v1/events", json={"nope": 1}, headers=auth(tenant.producer)),  # 400
        client.get("/v1/events/missing", headers=auth(tenant.viewer)),  # 404
        client.get("/v1/events", headers=auth("tdg_unknown")),  # 401
        client.get("/v1/events%00"),  # 400 from the middleware for NUL
    ]
    ids = [answer.headers["x-request-id"] for answer in answers]
    assert [answer.status_code for answer in answers] == [200, 200, 400, 404, 401, 400]
    assert all(UUID7.fullmatch(request_id) for request_id in ids), ids
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("lb-7f3a9c.2:trace/1=ok+", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("", False),
        ("é", False),
    ],
)
def test_a_plain_id_from_the_caller_is_kept(client: TestClient, given: str, kept: bool) -> None:
    answer = client.get("/healthz", headers={"X-Request-Id": given.encode()})
    request_id = answer.headers["x-request-id"]
    if kept:
        assert request_id == given
    else:
        assert UUID7.fullmatch(request_id), request_id


def test_a_500_has_the_id_of_the_log_line_that_tells_what_happened(
    app: FastAPI, logged: list[dict[str, Any]]
) -> None:
    @app.get("/v1/boom-for-this-test")
    async def boom() -> None:
        raise RuntimeError("the cause, for the log only")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/v1/boom-for-this-test", headers={"X-Request-Id": "ticket-4711"})
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "ticket-4711"
    assert "the cause" not in answer.text
    [line] = [entry for entry in logged if entry["event"] == "unhandled error"]
    assert line["request_id"] == "ticket-4711"
    assert line["path"] == "/v1/boom-for-this-test"

"""The Starlette/FastAPI and WSGI adapters: refusals answered with their status, events handed on."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests import test_receiver
from tests.test_receiver import ISSUER, SIBLING, TEAM, Documents, FakeClock, delivery
from tidings.issuer import Issuer
from tidings.receiver import Event, Verifier
from tidings.receiver.starlette import receiver_endpoint, verified_event
from tidings.receiver.wsgi import EVENT_KEY, VerifyingMiddleware, WSGIReceiver

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


# The fixtures of test_receiver: a real issuer on SQLite, its documents, a verifier for TEAM.
template_database = test_receiver.template_database
storage = test_receiver.storage
clock = test_receiver.clock
issuer = test_receiver.issuer
documents = test_receiver.documents
verifier = test_receiver.verifier


def starlette_app(verifier: Verifier, seen: list[Event]) -> Starlette:
    """A Starlette receiver that records the events its handler gets."""

    async def handle(event: Event) -> Response | None:
        seen.append(event)
        return JSONResponse({"got": event.id}) if event.id == "answer" else None

    return Starlette(routes=[Route("/hook", receiver_endpoint(verifier, handle), methods=["POST"])])


def asgi(app: Any) -> httpx.AsyncClient:
    """A client of an ASGI app."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver")


# --- Starlette ---------------------------------------------------------------------------------


async def test_starlette_hands_the_verified_event_to_the_handler(
    issuer: Issuer, verifier: Verifier
) -> None:
    """A genuine delivery reaches the handler as an Event; a None answer is 204."""
    seen: list[Event] = []
    headers, body = delivery(await issuer.token_for(TEAM), id="e-1")
    async with asgi(starlette_app(verifier, seen)) as client:
        response = await client.post("/hook", headers=headers, content=body)
    assert response.status_code == 204
    assert [(e.id, e.group, e.actor.subject) for e in seen] == [("e-1", TEAM, "user-1")]


async def test_starlette_returns_the_handlers_response(issuer: Issuer, verifier: Verifier) -> None:
    """A Response from the handler is the answer."""
    headers, body = delivery(await issuer.token_for(TEAM), id="answer")
    async with asgi(starlette_app(verifier, [])) as client:
        response = await client.post("/hook", headers=headers, content=body)
    assert response.json() == {"got": "answer"}


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("no-token", 401, "missing_token"),
        ("forged", 401, "bad_signature"),
        ("sibling", 403, "forbidden_group"),
        ("too-large", 413, "body_too_large"),
    ],
)
async def test_starlette_answers_refusals_and_skips_the_handler(
    issuer: Issuer, verifier: Verifier, case: str, status: int, code: str
) -> None:
    """No token or a forged one: 401 with a Bearer challenge; a sibling's: 403; too large: 413."""
    seen: list[Event] = []
    group_token = await issuer.token_for(SIBLING if case == "sibling" else TEAM)
    headers, body = delivery(group_token)
    if case == "no-token":
        del headers["Authorization"]
    if case == "forged":
        headers["Authorization"] = headers["Authorization"][:-8] + "AAAAAAAA"
    if case == "too-large":
        body = b" " * (verifier.max_body_bytes + 1)
    async with asgi(starlette_app(verifier, seen)) as client:
        response = await client.post("/hook", headers=headers, content=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert ("www-authenticate" in response.headers) == (status == 401)
    assert seen == []


async def test_fastapi_dependency_gives_the_event_or_the_status(
    issuer: Issuer, verifier: Verifier
) -> None:
    """`Depends(verified_event(verifier))` yields the event; a sibling's token is a 403."""
    app = FastAPI()
    verified = Depends(verified_event(verifier))

    @app.post("/hook")
    async def hook(event: Event = verified) -> dict[str, str]:
        return {"id": event.id, "type": event.type}

    good = delivery(await issuer.token_for(TEAM), id="fa-1")
    other = delivery(await issuer.token_for(SIBLING))
    async with asgi(app) as client:
        accepted = await client.post("/hook", headers=good[0], content=good[1])
        refused = await client.post("/hook", headers=other[0], content=other[1])
    assert accepted.json()["id"] == "fa-1"
    assert refused.status_code == 403
    assert "webhook:" in refused.json()["detail"]


async def test_a_key_fetch_does_not_block_the_event_loop(issuer: Issuer, clock: FakeClock) -> None:
    """While a slow JWKS fetch runs, the event loop keeps serving other work."""
    served = Documents(issuer, clock)

    def slow_fetch(url: str) -> bytes:
        time.sleep(0.2)
        return served(url)

    slow = Verifier(ISSUER, TEAM, fetch=slow_fetch, clock=clock.seconds)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    running = asyncio.create_task(ticker())
    headers, body = delivery(await issuer.token_for(TEAM))
    async with asgi(starlette_app(slow, [])) as client:
        ticks.append(time.monotonic())
        response = await client.post("/hook", headers=headers, content=body)
        ticks.append(time.monotonic())
    running.cancel()
    assert response.status_code == 204
    # Each fetch sleeps 0.2 s: a loop blocked by it would go that long between two ticks (the
    # request's start and end are ticks too).
    assert ticks[-1] - ticks[0] >= 0.4
    assert max(later - earlier for earlier, later in itertools.pairwise(ticks)) < 0.18


# --- WSGI --------------------------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    """A request handler that does not log to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""


@pytest.fixture
def wsgi_server() -> Iterator[Any]:
    """A factory: serve a WSGI app on 127.0.0.1 with wsgiref in a thread; give its URL."""
    servers: list[WSGIServer] = []

    def serve(app: WSGIApplication) -> str:
        server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


async def test_wsgi_receiver_hands_on_events_and_refuses_forgeries(
    issuer: Issuer, verifier: Verifier, wsgi_server: Any
) -> None:
    """Over real HTTP: genuine 204 (handler called), forged 401, sibling 403, GET 405."""
    seen: list[Event] = []

    def handle(event: Event) -> int | None:
        seen.append(event)
        return None

    url = wsgi_server(WSGIReceiver(verifier, handle))
    good = delivery(await issuer.token_for(TEAM), id="w-1")
    sibling = delivery(await issuer.token_for(SIBLING))
    forged_headers = {**good[0], "Authorization": good[0]["Authorization"][:-8] + "AAAAAAAA"}
    with httpx.Client(base_url=url, trust_env=False) as client:
        assert client.post("/", headers=good[0], content=good[1]).status_code == 204
        forged = client.post("/", headers=forged_headers, content=good[1])
        assert forged.status_code == 401
        assert forged.json()["error"]["code"] == "bad_signature"
        assert forged.headers["www-authenticate"].startswith("Bearer")
        refused = client.post("/", headers=sibling[0], content=sibling[1])
        assert refused.status_code == 403
        assert client.get("/").status_code == 405
    assert [event.id for event in seen] == ["w-1"]


def echo_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A plain WSGI app (as Flask would be): echoes the body it reads and the event it finds."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    event = environ.get(EVENT_KEY)
    answer = json.dumps({"event": event.id if event else None, "body": body.decode()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [answer]


async def test_wsgi_middleware_passes_the_event_and_the_body_on(
    issuer: Issuer, verifier: Verifier, wsgi_server: Any
) -> None:
    """Behind the middleware the app reads the body as usual and finds the event in the environ."""
    url = wsgi_server(VerifyingMiddleware(echo_app, verifier, paths={"/hook"}))
    headers, body = delivery(await issuer.token_for(TEAM), id="mw-1")
    with httpx.Client(base_url=url, trust_env=False) as client:
        answer = client.post("/hook", headers=headers, content=body).json()
        unguarded = client.post("/other", content=b"hello").json()
        refused = client.post("/hook", content=body)
    assert answer == {"event": "mw-1", "body": body.decode()}
    assert unguarded == {"event": None, "body": "hello"}
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "missing_token"

"""`tidings listen` as a subprocess, receiving real deliveries from a real `tidings serve`."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.receivers import Receiver
from tests.servers import TIDINGS, Server, serving, tidings_env
from tidings import groups
from tidings.storage.sqlite import SQLiteStorage
from tidings.tokens import new_token

TYPE = "dev.example.widget.created.v1"
START_TIMEOUT = 20.0


def listen_argv() -> list[str]:
    """`tidings listen`; until cli.py registers it, the same command run as a module."""
    from tidings.cli import app

    if any(command.name == "listen" for command in app.registered_commands):
        return [TIDINGS, "listen"]
    return [sys.executable, "-m", "tidings.listen_cli"]


@dataclass
class Platform:
    """A running tidings server with a tenant: its root group and an owner token."""

    server: Server
    root: str
    owner: str

    def api(self) -> httpx.Client:
        """An API client with the owner's token."""
        return httpx.Client(
            base_url=self.server.url,
            headers={"Authorization": f"Bearer {self.owner}"},
            trust_env=False,
            timeout=10,
        )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One `tidings serve` for the module, delivering to 127.0.0.1, with an owner token."""
    database = tmp_path_factory.mktemp("listen") / "tidings.db"
    env = {"TIDINGS_ALLOW_PRIVATE_SINKS": "true", "TIDINGS_DELIVERY_POLL": "0.05"}
    with serving(database, env) as server:
        root = groups.new_root()
        token, secret = new_token(root, ["owner"], None, None, None, time.time_ns())

        async def store() -> None:
            storage = SQLiteStorage(str(database))
            await storage.open()
            try:
                await storage.create_token(token)
            finally:
                await storage.close()

        asyncio.run(store())
        yield Platform(server, root, secret)


class Listener:
    """A `tidings listen` subprocess; its stdout and stderr go to files."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
        self.out, self.err = tmp_path / "listen.out", tmp_path / "listen.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [*listen_argv(), "--port", "0", *args],
                env=tidings_env(**env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        ready = self.wait_for(lambda: re.search(r"listening on (http://\S+?)/ ", self.stderr()))
        self.url = ready.group(1)

    def stdout(self) -> str:
        """What it printed on stdout so far."""
        return self.out.read_text()

    def stderr(self) -> str:
        """What it printed on stderr so far."""
        return self.err.read_text()

    def wait_for(self, found: Callable[[], Any], timeout: float = START_TIMEOUT) -> Any:
        """Poll until `found()` is truthy; fail with the output otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = found()
            if result:
                return result
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        pytest.fail(f"tidings listen:\nstdout:\n{self.stdout()}\nstderr:\n{self.stderr()}")

    def stop(self) -> None:
        """Stop it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def listen(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    """A factory of started `tidings listen` processes, stopped at the end of the test."""
    started: list[Listener] = []

    def start(*args: str, **env: str) -> Listener:
        listener = Listener(tmp_path, list(args), env)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


def subscribe_and_emit(platform: Platform, group: str, sink: str, event_id: str) -> None:
    """Subscribe `sink` to `group` and emit one event there through the API."""
    with platform.api() as api:
        created = api.post(
            "/v1/subscriptions", json={"parent": group, "sink": sink, "types": [TYPE]}
        )
        assert created.status_code == 201, created.text
        emitted = api.post(
            "/v1/events",
            json={
                "id": event_id,
                "type": TYPE,
                "source": "https://platform.example/widgets",
                "subject": f"{group}/0123456789abcdef",
                "group": group,
                "data": {"actor": {"subject": "alice"}, "body": {"name": "sprocket"}},
            },
        )
        assert emitted.status_code == 201, emitted.text


def test_listen_prints_each_verified_delivery(
    platform: Platform, listen: Callable[..., Listener]
) -> None:
    """A delivery from tidings is verified and printed: type, id, group, actor, body."""
    group = groups.new_child(platform.root)
    listener = listen("--issuer", platform.server.url, "--group", group)
    subscribe_and_emit(platform, group, listener.url + "/hook", "listen-1")
    output = listener.wait_for(lambda: "sprocket" in listener.stdout() and listener.stdout())
    assert TYPE in output
    assert "listen-1" in output
    assert group in output
    assert "alice" in output


def test_listen_trusts_the_server_the_cli_talks_to(
    platform: Platform, listen: Callable[..., Listener]
) -> None:
    """Without --issuer or TIDINGS_ISSUER, the issuer is TIDINGS_URL (the server's own URL is
    its issuer by default): the README's `serve --port N` with TIDINGS_URL needs nothing more."""
    group = groups.new_child(platform.root)
    listener = listen("--group", group, TIDINGS_URL=platform.server.url)
    assert f"deliveries from {platform.server.url} " in listener.stderr()
    subscribe_and_emit(platform, group, listener.url + "/hook", "listen-url")
    assert listener.wait_for(lambda: "listen-url" in listener.stdout())


def test_listen_json_prints_json_lines(platform: Platform, listen: Callable[..., Listener]) -> None:
    """With --json, each verified event is one line of CloudEvents JSON."""
    group = groups.new_child(platform.root)
    listener = listen("--issuer", platform.server.url, "--group", group, "--json")
    subscribe_and_emit(platform, group, listener.url + "/", "listen-json")
    line = listener.wait_for(lambda: listener.stdout().strip())
    event = json.loads(line.splitlines()[0])
    assert (event["id"], event["type"], event["group"]) == ("listen-json", TYPE, group)
    assert event["specversion"] == "1.0"
    assert event["data"] == {"actor": {"subject": "alice"}, "body": {"name": "sprocket"}}


def test_listen_forwards_verified_deliveries_unchanged(
    platform: Platform, listen: Callable[..., Listener], receivers: Any
) -> None:
    """With --forward, the local app gets the delivery's body and headers, token included."""
    target: Receiver = receivers()
    group = groups.new_child(platform.root)
    listener = listen(
        "--issuer", platform.server.url, "--group", group, "--forward", target.url + "/local"
    )
    subscribe_and_emit(platform, group, listener.url + "/", "listen-fwd")
    [forwarded] = target.wait_for(1)
    assert forwarded.path == "/local"
    assert forwarded.header("Ce-Id") == "listen-fwd"
    assert forwarded.header("Ce-Group") == group
    assert json.loads(forwarded.body)["body"] == {"name": "sprocket"}
    token = (forwarded.header("Authorization") or "").removeprefix("Bearer ")
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == f"webhook:{group}"
    listener.wait_for(lambda: "forwarded to" in listener.stderr())


def test_listen_refuses_forgeries_and_does_not_forward_them(
    platform: Platform, listen: Callable[..., Listener], receivers: Any
) -> None:
    """A genuine token of another group gets 403, the same with `sub` edited 401; none forwarded."""
    target: Receiver = receivers()
    group, other = groups.new_child(platform.root), groups.new_child(platform.root)
    listener = listen("--issuer", platform.server.url, "--group", group, "--forward", target.url)
    # A genuine delivery to another group, captured, then replayed to the listener.
    capture: Receiver = receivers()
    subscribe_and_emit(platform, other, capture.url, "other-group")
    [genuine] = capture.wait_for(1)
    headers = {
        k: v for k, v in genuine.headers.items() if k.lower() not in ("host", "content-length")
    }
    header, _, signature = headers["Authorization"].removeprefix("Bearer ").split(".")
    claims = jwt.decode(headers["Authorization"][7:], options={"verify_signature": False})
    edited = jwt.utils.base64url_encode(
        json.dumps({**claims, "sub": f"webhook:{group}"}).encode()
    ).decode()
    forged_headers = {**headers, "Authorization": f"Bearer {header}.{edited}.{signature}"}
    with httpx.Client(trust_env=False) as client:
        wrong_group = client.post(listener.url, headers=headers, content=genuine.body)
        forged = client.post(listener.url, headers=forged_headers, content=genuine.body)
    assert wrong_group.status_code == 403
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "bad_signature"
    listener.wait_for(lambda: listener.stderr().count("✗") >= 2)
    assert "forbidden_group" in listener.stderr()
    assert listener.stdout() == ""
    assert target.received() == []

"""The example receivers, run as scripts against a real `tidings serve` and local stand-ins.

`examples/slack_receiver.py` posts to a stand-in Slack incoming webhook and
`examples/issue_opener.py` to a stand-in issue tracker (GitHub's REST API shape); both
are `tests.receivers.Receiver`s recording what they get.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web

from tests import test_listen
from tests.receivers import Received, Receiver
from tests.servers import free_port, tidings_env
from tests.test_listen import Platform
from tidings import groups

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
POLICY = "dev.chainguard.policy.validation.changed.v1"
WIDGET = "dev.example.widget.created.v1"

platform = test_listen.platform  # one real `tidings serve` for the module


class Example:
    """An example receiver running as a script on a free port."""

    def __init__(self, script: str, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), "--port", self.url.rsplit(":", 1)[1]],
            env=tidings_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 20
        with httpx.Client(trust_env=False, timeout=1) as client:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    client.get(self.url)  # any answer: it is serving
                    return
                except httpx.TransportError:
                    time.sleep(0.02)
        self.stop()
        self.log.seek(0)
        pytest.fail(f"{script} did not start:\n{self.log.read().decode()}")

    def stop(self) -> None:
        """Stop the script."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.fixture
def example() -> Iterator[Callable[[str, dict[str, str]], Example]]:
    """A factory of running examples, stopped at the end of the test."""
    started: list[Example] = []

    def start(script: str, env: dict[str, str]) -> Example:
        started.append(Example(script, env))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def subscribe(platform: Platform, group: str, sink: str, event_type: str) -> str:
    """Subscribe `sink` to `group` for `event_type`; the subscription's id."""
    with platform.api() as api:
        created = api.post(
            "/v1/subscriptions", json={"parent": group, "sink": sink, "types": [event_type]}
        )
    assert created.status_code == 201, created.text
    sub_id: str = created.json()["id"]
    return sub_id


def emit(
    platform: Platform, group: str, event_type: str, body: dict[str, Any], **extra: Any
) -> str:
    """Emit an event in `group`; its id."""
    with platform.api() as api:
        emitted = api.post(
            "/v1/events",
            json={
                "type": event_type,
                "source": "k8s://cluster-7",
                "subject": f"{group}/1a4b29ca6df80013",
                "group": group,
                "data": {"actor": {"subject": "enforcer"}, "body": body},
                **extra,
            },
        )
    assert emitted.status_code == 201, emitted.text
    event_id: str = emitted.json()["id"]
    return event_id


def wait_delivered(platform: Platform, sub_id: str, count: int = 1) -> list[dict[str, Any]]:
    """Wait until `count` deliveries of a subscription succeeded; them."""
    deadline = time.monotonic() + 15
    found: list[dict[str, Any]] = []
    with platform.api() as api:
        while time.monotonic() < deadline:
            found = api.get(f"/v1/subscriptions/{sub_id}/deliveries").json()["deliveries"]
            done = [d for d in found if d["status"] == "delivered"]
            if len(done) >= count:
                return done
            time.sleep(0.05)
    pytest.fail(f"deliveries of {sub_id} did not succeed: {found}")


def forged_token(platform: Platform, group: str) -> str:
    """A token with the right iss and sub, signed by a key of the forger's own."""
    now = int(time.time())
    claims = {
        "iss": platform.server.url,
        "sub": f"webhook:{group}",
        "aud": "customer",
        "iat": now,
        "exp": now + 300,
    }
    return jwt.encode(claims, "forger-secret-of-32-bytes-or-more!!", "HS256")


def post_forged(url: str, token: str, group: str) -> httpx.Response:
    """POST a well-formed delivery carrying `token` to `url`."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Ce-Id": "forged",
        "Ce-Source": "k8s://cluster-7",
        "Ce-Specversion": "1.0",
        "Ce-Type": POLICY,
        "Ce-Group": group,
        "Content-Type": "application/json",
    }
    body = {
        "actor": {"subject": "mallory"},
        "body": {"policies": {"p": {"change": "degraded"}}},
    }
    return httpx.post(url, headers=headers, content=json.dumps(body), trust_env=False)


# --- the Slack receiver ------------------------------------------------------------------------


def test_slack_example_posts_a_message_for_each_event(
    platform: Platform, example: Callable[..., Example], receivers: Any
) -> None:
    """Each delivered event becomes one Slack message naming its type, actor and body fields."""
    slack: Receiver = receivers()
    group = groups.new_child(platform.root)
    receiver = example(
        "slack_receiver.py",
        {
            "TIDINGS_ISSUER": platform.server.url,
            "TIDINGS_GROUP": group,
            "SLACK_WEBHOOK_URL": slack.url + "/services/T000/B000/XXXX",
        },
    )
    subscribe(platform, group, receiver.url + "/hook", WIDGET)
    event_id = emit(platform, group, WIDGET, {"name": "sprocket", "count": 3})
    [message] = slack.wait_for(1)
    assert message.path == "/services/T000/B000/XXXX"
    posted = json.loads(message.body)
    assert posted["text"] == f"{WIDGET} by enforcer on {group}/1a4b29ca6df80013"
    fields = json.dumps(posted["blocks"])
    assert "sprocket" in fields
    assert event_id in fields


def test_slack_example_refuses_a_forged_delivery(
    platform: Platform, example: Callable[..., Example], receivers: Any
) -> None:
    """A forged token is answered 401 and nothing reaches Slack."""
    slack: Receiver = receivers()
    group = groups.new_child(platform.root)
    receiver = example(
        "slack_receiver.py",
        {
            "TIDINGS_ISSUER": platform.server.url,
            "TIDINGS_GROUP": group,
            "SLACK_WEBHOOK_URL": slack.url,
        },
    )
    answer = post_forged(receiver.url + "/hook", forged_token(platform, group), group)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "disallowed_algorithm"
    time.sleep(0.2)
    assert slack.received() == []


# --- the issue opener --------------------------------------------------------------------------


def tracker_answer(request: Received) -> web.StreamResponse:
    """The stand-in tracker: 201 with the new issue, as GitHub answers."""
    return web.json_response({"number": 1, "html_url": "https://tracker.example/1"}, status=201)


def policy_body(**changes: str) -> dict[str, Any]:
    """A validation-changed body with one policy per `changes` entry."""
    return {
        "cluster_id": "cluster-7",
        "image_id": "cgr.dev/acme/app@sha256:abc",
        "last_seen": "2026-11-01T12:00:00Z",
        "policies": {
            name: {
                "change": change,
                "diagnostic": f"{name}: signature missing",
                "last_checked": "2026-11-01T12:00:00Z",
                "valid": change != "degraded",
            }
            for name, change in changes.items()
        },
    }


def issue_opener(
    example: Callable[..., Example], platform: Platform, tracker: Receiver, groups_: str
) -> Example:
    """Start the issue opener for `groups_` against the stand-in tracker."""
    return example(
        "issue_opener.py",
        {
            "TIDINGS_ISSUER": platform.server.url,
            "TIDINGS_GROUP": groups_,
            "TRACKER_URL": tracker.url,
            "TRACKER_REPO": "acme/clusters",
            "TRACKER_TOKEN": "tracker-token",
        },
    )


def test_issue_opener_opens_one_issue_per_degraded_policy_once(
    platform: Platform, example: Callable[..., Example], receivers: Any
) -> None:
    """A degraded policy opens one issue, even when two subscriptions deliver the event twice."""
    tracker: Receiver = receivers(tracker_answer)
    team = groups.new_child(platform.root)
    project = groups.new_child(team)
    receiver = issue_opener(example, platform, tracker, f"{team},{project}")
    subs = [subscribe(platform, g, receiver.url + "/", POLICY) for g in (team, project)]
    emit(platform, project, POLICY, policy_body(signed="degraded", sbom="improved"))
    for sub_id in subs:
        wait_delivered(platform, sub_id)
    [opened] = tracker.received()
    assert (opened.method, opened.path) == ("POST", "/repos/acme/clusters/issues")
    assert opened.header("Authorization") == "Bearer tracker-token"
    issue = json.loads(opened.body)
    assert issue["title"] == "Policy signed degraded for cgr.dev/acme/app@sha256:abc"
    assert "cluster-7" in issue["body"]
    assert "signed: signature missing" in issue["body"]


def test_issue_opener_ignores_other_changes_and_forgeries(
    platform: Platform, example: Callable[..., Example], receivers: Any
) -> None:
    """Improved or new policies open nothing, and a forged degraded event is refused with 401."""
    tracker: Receiver = receivers(tracker_answer)
    group = groups.new_child(platform.root)
    receiver = issue_opener(example, platform, tracker, group)
    sub_id = subscribe(platform, group, receiver.url + "/", POLICY)
    emit(platform, group, POLICY, policy_body(signed="improved", sbom="new"))
    wait_delivered(platform, sub_id)
    answer = post_forged(receiver.url + "/", forged_token(platform, group), group)
    assert answer.status_code == 401
    assert tracker.received() == []

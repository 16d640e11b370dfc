"""`tidings subscriptions` and `tidings deliveries` against a real `tidings serve` process."""

from __future__ import annotations

import gc
import json
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web
from typer.testing import CliRunner

from tests.conftest import TEST_TYPE
from tests.receivers import Received, Receiver
from tests.servers import Server, database_url, serving
from tidings.cli import app

OTHER_TYPE = "dev.example.gadget.deleted.v1"
SUFFIX = re.compile(r"[0-9a-f]{16}")
TIMEOUT = 10.0


@dataclass
class Ran:
    """How a `tidings` command ended."""

    code: int
    stdout: str
    stderr: str


def invoke(env: Mapping[str, str | None], *args: str) -> Ran:
    """Run `tidings ARGS` in-process with `env`.

    The API commands leave their HTTP client for the process's exit to close; in-process
    it is collected here at once and its unclosed-socket ResourceWarning ignored. COLUMNS is
    wide so that rich does not cut the tables' cells.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        result = CliRunner(env={"COLUMNS": "250", **env}).invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        ran = Ran(result.exit_code, result.stdout, result.stderr)
        del result
        gc.collect()
    return ran


def flat(text: str) -> str:
    """`text` with every run of whitespace (rich wraps long cells) made one space."""
    return " ".join(text.split())


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table, each as its cells' text."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `tidings serve` for the module: private sinks allowed, one attempt per delivery."""
    env = {
        "TIDINGS_ALLOW_PRIVATE_SINKS": "true",
        "TIDINGS_RETRY_SCHEDULE": "0",
        "TIDINGS_DELIVERY_POLL": "0.05",
    }
    with serving(tmp_path_factory.mktemp("subscriptions-cli") / "tidings.db", env) as running:
        yield running


@dataclass
class Tenant:
    """A root group made by the CLI and an owner token on it made by the CLI."""

    root: str
    token: str
    server: Server

    def run(self, *args: str, token: str | None = None) -> Ran:
        """Run `tidings ARGS` against the server with this tenant's token (or `token`)."""
        env = {"TIDINGS_URL": self.server.url, "TIDINGS_TOKEN": token or self.token}
        return invoke(env, *args)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call the API directly (setup and checks, not under test)."""
        return httpx.request(
            method,
            f"{self.server.url}{path}",
            headers={"authorization": f"Bearer {self.token}"},
            timeout=TIMEOUT,
            trust_env=False,
            **kwargs,
        )

    def emit(self, event_id: str, event_type: str = TEST_TYPE) -> None:
        """Ingest one event through the API."""
        body = {
            "specversion": "1.0",
            "id": event_id,
            "source": "https://platform.example/widgets",
            "type": event_type,
            "group": self.root,
            "data": {"actor": {"subject": "alice"}, "body": {"name": event_id}},
        }
        response = self.api("POST", "/v1/events", json=body)
        assert response.status_code == 201, response.text

    def create(self, sink: str, *options: str) -> str:
        """A subscription made by the CLI; its id."""
        ran = self.run("subscriptions", "create", "--parent", self.root, sink, *options)
        assert ran.code == 0, ran.stderr
        return ran.stdout.strip()

    def deliveries(self, sub_id: str) -> list[dict[str, Any]]:
        """The subscription's deliveries through the API."""
        response = self.api("GET", f"/v1/subscriptions/{sub_id}/deliveries")
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["deliveries"]
        return found

    def settled(self, sub_id: str, count: int) -> list[dict[str, Any]]:
        """Wait until `count` deliveries exist and none is pending; return them."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            found = self.deliveries(sub_id)
            if len(found) >= count and all(d["status"] != "pending" for d in found):
                return found
            time.sleep(0.02)
        pytest.fail(f"deliveries of {sub_id} did not settle: {self.deliveries(sub_id)}")


@pytest.fixture
def tenant(server: Server) -> Tenant:
    """A fresh root (`tidings groups create`) and owner token (`tidings tokens create`)."""
    db = {"TIDINGS_DATABASE_URL": database_url(server.database), "TIDINGS_TOKEN": None}
    root = invoke(db, "groups", "create", "--name", "acme").stdout.strip()
    made = invoke(db, "tokens", "create", "--group", root, "--role", "owner")
    assert made.code == 0, made.stderr
    return Tenant(root, made.stdout.strip(), server)


@dataclass
class FailingFor:
    """An answer: 500 'boom' for the given event ids while `failing`, else 200 'ok'."""

    event_ids: tuple[str, ...]
    failing: bool = True

    def __call__(self, request: Received) -> web.StreamResponse:
        if self.failing and request.header("Ce-Id") in self.event_ids:
            return web.Response(status=500, text="boom")
        return web.Response(status=200, text="ok")


# --- subscriptions create ----------------------------------------------------------------------


def test_create_prints_only_the_id_a_uidp_under_the_parent(tenant: Tenant, receivers: Any) -> None:
    """stdout is exactly one line: the parent, '/', and 16 hex characters."""
    ran = tenant.run(
        "subscriptions", "create", "--parent", tenant.root, receivers().url, "--type", TEST_TYPE
    )
    assert ran.code == 0, ran.stderr
    assert ran.stdout.count("\n") == 1
    parent, _, suid = ran.stdout.strip().rpartition("/")
    assert parent == tenant.root
    assert SUFFIX.fullmatch(suid)


def test_create_stores_the_sink_and_every_type(tenant: Tenant, receivers: Any) -> None:
    """The sink and each repeated --type are stored on the subscription."""
    sink = receivers().url + "/hook"
    sub_id = tenant.create(sink, "--type", TEST_TYPE, "--type", OTHER_TYPE)
    stored = tenant.api("GET", f"/v1/subscriptions/{sub_id}").json()
    assert (stored["parent"], stored["sink"]) == (tenant.root, sink)
    assert stored["types"] == [TEST_TYPE, OTHER_TYPE]
    assert stored["kind"] == "webhook"


def test_group_is_accepted_for_parent(tenant: Tenant, receivers: Any) -> None:
    """--group works as --parent did, as in the older Chainguard CLI."""
    team = f"{tenant.root}/{'0' * 15}1"
    ran = tenant.run("subscriptions", "create", "--group", team, receivers().url)
    assert ran.code == 0, ran.stderr
    sub_id = ran.stdout.strip()
    assert sub_id.rpartition("/")[0] == team
    assert tenant.api("GET", f"/v1/subscriptions/{sub_id}").json()["parent"] == team


def test_create_without_parent_fails_clearly(tenant: Tenant, receivers: Any) -> None:
    """Without --parent (or --group) it exits 1 saying what is missing, and creates nothing."""
    ran = tenant.run("subscriptions", "create", receivers().url)
    assert ran.code == 1
    assert ran.stdout == ""
    assert "--parent" in flat(ran.stderr)
    assert tenant.api("GET", "/v1/subscriptions").json()["subscriptions"] == []


def test_create_with_a_generated_secret_keeps_stdout_the_id(tenant: Tenant, receivers: Any) -> None:
    """--signing-secret generate prints the id on stdout and the secret once on stderr."""
    sink = receivers().url
    ran = tenant.run(
        "subscriptions", "create", "--parent", tenant.root, sink, "--signing-secret", "generate"
    )
    assert ran.code == 0, ran.stderr
    assert ran.stdout.strip().rpartition("/")[0] == tenant.root
    assert re.search(r"whsec_[A-Za-z0-9+/=]+", flat(ran.stderr))
    assert "whsec_" not in ran.stdout


def test_create_refused_by_the_api_exits_1_with_its_message(tenant: Tenant) -> None:
    """An invalid type filter is reported as the API's error and exit code 1."""
    ran = tenant.run(
        "subscriptions", "create", "--parent", tenant.root, "http://127.0.0.1:9/", "--type", "a*b"
    )
    assert ran.code == 1
    assert ran.stdout == ""
    assert flat(ran.stderr).startswith("error: type filter 'a*b'")


# --- subscriptions list / delete ---------------------------------------------------------------


def test_list_shows_subscriptions_in_a_table(tenant: Tenant, receivers: Any) -> None:
    """The table has each subscription's id, kind, sink, types and state."""
    sink = receivers().url + "/hook"
    sub_id = tenant.create(sink, "--type", TEST_TYPE, "--type", OTHER_TYPE)
    ran = tenant.run("subscriptions", "list")
    assert ran.code == 0, ran.stderr
    assert table_rows(ran.stdout) == [
        [sub_id, "webhook", sink, f"{TEST_TYPE}, {OTHER_TYPE}", "active"]
    ]


def test_list_json_gives_one_json_object_a_line(tenant: Tenant, receivers: Any) -> None:
    """--json prints JSON lines, one per subscription, with no secret."""
    sink = receivers().url
    first = tenant.create(sink, "--type", TEST_TYPE)
    second = tenant.create(sink, "--signing-secret", "generate")
    ran = tenant.run("subscriptions", "list", "--json")
    assert ran.code == 0, ran.stderr
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    assert sorted(s["id"] for s in lines) == sorted([first, second])
    assert {s["id"]: s["types"] for s in lines}[first] == [TEST_TYPE]
    assert "whsec_" not in ran.stdout


def test_delete_removes_the_subscription(tenant: Tenant, receivers: Any) -> None:
    """After `delete ID` the subscription is gone from the list and the API."""
    sub_id = tenant.create(receivers().url)
    ran = tenant.run("subscriptions", "delete", sub_id)
    assert ran.code == 0, ran.stderr
    assert (ran.stdout, ran.stderr) == ("", f"deleted subscription {sub_id}\n")
    assert tenant.run("subscriptions", "list", "--json").stdout == ""
    assert tenant.api("GET", f"/v1/subscriptions/{sub_id}").status_code == 404


def test_delete_of_an_unknown_subscription_fails_clearly(tenant: Tenant) -> None:
    """Deleting an id that does not exist exits 1 naming it."""
    missing = f"{tenant.root}/{'f' * 16}"
    ran = tenant.run("subscriptions", "delete", missing)
    assert ran.code == 1
    assert flat(ran.stderr) == f"error: no subscription {missing!r} is visible to this token (404)"


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (("subscriptions", "delete"), "subscription"),
        (("subscriptions", "replay", "--since", "2024-01-01T00:00:00Z"), "subscription"),
        (("deliveries", "list"), "subscription"),
    ],
)
def test_an_id_that_is_no_id_is_refused_before_any_request(
    tenant: Tenant, receivers: Any, command: tuple[str, ...], what: str
) -> None:
    """An id with '..' or '.' segments, or none, would resolve to another resource's URL
    ('../webhooks/ID' had deleted a webhook): it is refused, and the subscription stays."""
    sub_id = tenant.create(receivers().url)
    name, verb, *rest = command
    for bad in (f"{sub_id}/../{sub_id.rsplit('/', 1)[1]}", ".", "", f"{sub_id}/.."):
        ran = tenant.run(name, verb, bad, *rest)
        assert ran.code == 1, (bad, ran.stdout)
        assert flat(ran.stderr) == f"error: {what} {bad!r} is not an id"
    assert tenant.api("GET", f"/v1/subscriptions/{sub_id}").status_code == 200


def test_a_delivery_id_is_one_path_segment(tenant: Tenant) -> None:
    """A delivery's id is sent percent-encoded, so '/' cannot reach another route; '.', '..'
    and an empty id are refused."""
    for bad in (".", "..", ""):
        ran = tenant.run("deliveries", "retry", bad)
        assert (ran.code, flat(ran.stderr)) == (1, f"error: delivery {bad!r} is not an id")
    ran = tenant.run("deliveries", "retry", "1/../../webhooks/x")
    assert ran.code == 1
    assert "404" in ran.stderr


# --- subscriptions replay ----------------------------------------------------------------------


def test_replay_prints_the_number_queued(tenant: Tenant, receivers: Any) -> None:
    """`replay ID --since T` prints how many matching events it queued, and they are sent."""
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    for event_id in ("r1", "r2", "r3"):
        tenant.emit(event_id)
    tenant.emit("other", OTHER_TYPE)
    receiver: Receiver = receivers()
    sub_id = tenant.create(receiver.url, "--type", TEST_TYPE)
    ran = tenant.run("subscriptions", "replay", sub_id, "--since", since)
    assert ran.code == 0, ran.stderr
    assert ran.stdout == "3\n"
    assert sorted(r.header("Ce-Id") or "" for r in receiver.wait_for(3)) == ["r1", "r2", "r3"]


def test_replay_since_now_queues_nothing(tenant: Tenant, receivers: Any) -> None:
    """Replaying from a time after every event prints 0."""
    tenant.emit("r1")
    sub_id = tenant.create(receivers().url, "--type", TEST_TYPE)
    since = (datetime.now(UTC) + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    ran = tenant.run("subscriptions", "replay", sub_id, "--since", since)
    assert (ran.code, ran.stdout) == (0, "0\n")


def test_replay_of_an_unknown_subscription_fails_clearly(tenant: Tenant) -> None:
    """Replaying an id that does not exist exits 1 naming it."""
    missing = f"{tenant.root}/{'e' * 16}"
    ran = tenant.run("subscriptions", "replay", missing, "--since", "2024-01-01T00:00:00Z")
    assert ran.code == 1
    assert ran.stdout == ""
    assert f"error: no subscription {missing!r}" in flat(ran.stderr)


# --- deliveries list / retry -------------------------------------------------------------------


def test_deliveries_list_shows_status_and_attempts(tenant: Tenant, receivers: Any) -> None:
    """The table shows each delivery's event, type, status, attempt count and last status."""
    receiver: Receiver = receivers(FailingFor(("bad",)))
    sub_id = tenant.create(receiver.url, "--type", TEST_TYPE)
    tenant.emit("good")
    tenant.emit("bad")
    found = {d["event"]["id"]: d["id"] for d in tenant.settled(sub_id, 2)}
    ran = tenant.run("deliveries", "list", sub_id)
    assert ran.code == 0, ran.stderr
    assert sorted(table_rows(ran.stdout)) == sorted(
        [
            [found["good"], "good", TEST_TYPE, "delivered", "1", "200", ""],
            [found["bad"], "bad", TEST_TYPE, "failed", "1", "500", ""],
        ]
    )


def test_deliveries_list_json_gives_the_attempts(tenant: Tenant, receivers: Any) -> None:
    """--json prints one delivery a line with its status and every attempt."""
    receiver: Receiver = receivers(FailingFor(("bad",)))
    sub_id = tenant.create(receiver.url, "--type", TEST_TYPE)
    tenant.emit("bad")
    tenant.settled(sub_id, 1)
    ran = tenant.run("deliveries", "list", sub_id, "--json")
    assert ran.code == 0, ran.stderr
    [line] = [json.loads(line) for line in ran.stdout.splitlines()]
    assert line["event"]["id"] == "bad"
    assert line["status"] == "failed"
    assert [(a["number"], a["status_code"], a["response"]) for a in line["attempts"]] == [
        (1, 500, "boom")
    ]


def test_deliveries_list_status_filters(tenant: Tenant, receivers: Any) -> None:
    """--status failed lists only the failed deliveries."""
    receiver: Receiver = receivers(FailingFor(("bad",)))
    sub_id = tenant.create(receiver.url, "--type", TEST_TYPE)
    tenant.emit("good")
    tenant.emit("bad")
    tenant.settled(sub_id, 2)
    ran = tenant.run("deliveries", "list", sub_id, "--status", "failed", "--json")
    assert ran.code == 0, ran.stderr
    listed = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [(d["event"]["id"], d["status"]) for d in listed] == [("bad", "failed")]


def test_deliveries_retry_requeues_a_failed_delivery(tenant: Tenant, receivers: Any) -> None:
    """`retry ID` sends a failed delivery again; once the sink recovers it is delivered."""
    answer = FailingFor(("bad",))
    receiver: Receiver = receivers(answer)
    sub_id = tenant.create(receiver.url, "--type", TEST_TYPE)
    tenant.emit("bad")
    [failed] = tenant.settled(sub_id, 1)
    assert failed["status"] == "failed"
    answer.failing = False
    ran = tenant.run("deliveries", "retry", failed["id"])
    assert ran.code == 0, ran.stderr
    assert ran.stderr == f"delivery {failed['id']} is queued again\n"
    assert [r.header("Ce-Id") for r in receiver.wait_for(2)] == ["bad", "bad"]
    [retried] = tenant.settled(sub_id, 1)
    assert retried["id"] == failed["id"]
    assert retried["status"] == "delivered"


def test_deliveries_retry_of_an_unknown_delivery_fails_clearly(tenant: Tenant) -> None:
    """Retrying a delivery id that does not exist exits 1 naming it."""
    ran = tenant.run("deliveries", "retry", "999999999")
    assert ran.code == 1
    assert flat(ran.stderr) == "error: no delivery '999999999' is visible to this token (404)"


def test_deliveries_list_of_an_unknown_subscription_fails_clearly(tenant: Tenant) -> None:
    """Listing the deliveries of an id that does not exist exits 1 naming it."""
    missing = f"{tenant.root}/{'d' * 16}"
    ran = tenant.run("deliveries", "list", missing)
    assert ran.code == 1
    assert ran.stdout == ""
    assert f"error: no subscription {missing!r}" in flat(ran.stderr)


def test_subscription_of_another_tenant_is_unknown(
    tenant: Tenant, server: Server, receivers: Any
) -> None:
    """Another tenant's token cannot list, replay or delete a subscription: it is not found."""
    sub_id = tenant.create(receivers().url)
    db = {"TIDINGS_DATABASE_URL": database_url(server.database), "TIDINGS_TOKEN": None}
    other_root = invoke(db, "groups", "create", "--name", "other").stdout.strip()
    other = invoke(db, "tokens", "create", "--group", other_root, "--role", "owner").stdout.strip()
    for args in (
        ("deliveries", "list", sub_id),
        ("subscriptions", "replay", sub_id, "--since", "2024-01-01T00:00:00Z"),
        ("subscriptions", "delete", sub_id),
    ):
        ran = tenant.run(*args, token=other)
        assert ran.code == 1, args
        assert "no subscription" in flat(ran.stderr)
    assert tenant.api("GET", f"/v1/subscriptions/{sub_id}").status_code == 200


def test_commands_without_a_token_fail_clearly(server: Server) -> None:
    """Without --token or TIDINGS_TOKEN the command exits 1 saying a token is needed."""
    ran = invoke({"TIDINGS_URL": server.url, "TIDINGS_TOKEN": None}, "subscriptions", "list")
    assert ran.code == 1
    assert "an API token is needed" in flat(ran.stderr)

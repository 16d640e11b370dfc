"""The `tidings` command end to end: database commands on a tmp file, API commands on a real server."""

from __future__ import annotations

import gc
import hashlib
import http.server
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from tests import servers
from tests.conftest import TEST_TYPE
from tests.servers import (
    TIDINGS,
    Server,
    StartServer,
    database_url,
    free_port,
    post_batch,
    run_tidings,
    serving,
    tidings_env,
)
from tidings import __version__
from tidings.catalog import builtin_types
from tidings.cli import app
from tidings.storage.migrations import migration_files

ROOT = re.compile(r"[0-9a-f]{40}")
SUFFIX = re.compile(r"/[0-9a-f]{16}")
TOKEN = re.compile(r"tdg_[A-Za-z0-9_-]{43}")
OTHER_TYPE = "dev.example.gadget.deleted.v1"
TIMEOUT = 30
tidings_server = servers.tidings_server  # the fixture, usable in this module
TWO_ROLES = ("--role", "owner", "--role", "viewer", "--name", "N")


def cli(database: Path, *args: str) -> Result:
    """Run `tidings ARGS` in-process on `database`."""
    runner = CliRunner(env={"TIDINGS_DATABASE_URL": database_url(database), "TIDINGS_TOKEN": None})
    return runner.invoke(app, list(args))


def flat(text: str) -> str:
    """`text` with every run of whitespace (rich wraps long lines) made one space."""
    return " ".join(text.split())


def rows(database: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a query on the database file."""
    with closing(sqlite3.connect(database)) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A path for a fresh SQLite database."""
    return tmp_path / "tidings.db"


# --- groups create ---------------------------------------------------------------------------


def test_groups_create_prints_only_a_root_uid(db: Path) -> None:
    """Without --parent, stdout is exactly one 40-hex root path."""
    result = cli(db, "groups", "create", "--name", "acme")
    assert result.exit_code == 0, result.output
    assert ROOT.fullmatch(result.stdout.removesuffix("\n"))
    assert result.stdout.count("\n") == 1


def test_groups_create_stores_the_group_with_its_name(db: Path) -> None:
    """The printed path is stored in the database under the given name."""
    path = cli(db, "groups", "create", "--name", "acme").stdout.strip()
    assert rows(db, "SELECT name FROM groups WHERE path = ?", path) == [("acme",)]


def test_groups_create_with_parent_prints_parent_slash_suid(db: Path) -> None:
    """With --parent, stdout is the parent, '/', and 16 hex characters."""
    root = cli(db, "groups", "create", "--name", "acme").stdout.strip()
    result = cli(db, "groups", "create", "--name", "team", "--parent", root)
    assert result.exit_code == 0, result.output
    child = result.stdout.removesuffix("\n")
    assert child.startswith(root)
    assert SUFFIX.fullmatch(child.removeprefix(root))


def test_groups_create_nests_below_a_child(db: Path) -> None:
    """A child of a child is its parent plus one more 16-hex segment."""
    root = cli(db, "groups", "create", "--name", "acme").stdout.strip()
    team = cli(db, "groups", "create", "--name", "team", "--parent", root).stdout.strip()
    cluster = cli(db, "groups", "create", "--name", "c", "--parent", team).stdout.strip()
    assert cluster.startswith(team + "/")
    assert SUFFIX.fullmatch(cluster.removeprefix(team))


@pytest.mark.parametrize("parent", ["Acme", "a//b", "/a", "a/", "a b", "../x"])
def test_groups_create_with_malformed_parent_fails_clearly(db: Path, parent: str) -> None:
    """A malformed --parent is a one-line error and exit code 1, with nothing printed or stored."""
    result = cli(db, "groups", "create", "--name", "team", "--parent", parent)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert flat(result.stderr).startswith("error: parent must be a path of 1 to 16 lowercase")
    assert "Traceback" not in result.output
    assert not db.exists() or rows(db, "SELECT count(*) FROM groups") == [(0,)]


# --- tokens create ---------------------------------------------------------------------------


def test_tokens_create_prints_only_the_token(db: Path) -> None:
    """stdout is exactly one token secret."""
    root = cli(db, "groups", "create", "--name", "acme").stdout.strip()
    result = cli(db, "tokens", "create", "--group", root, *TWO_ROLES)
    assert result.exit_code == 0, result.output
    assert TOKEN.fullmatch(result.stdout.removesuffix("\n"))
    assert result.stdout.count("\n") == 1


def test_tokens_create_stores_a_hash_with_roles_and_name(db: Path) -> None:
    """The token is stored as its SHA-256 hash, with its group, roles and name."""
    root = cli(db, "groups", "create", "--name", "acme").stdout.strip()
    secret = cli(db, "tokens", "create", "--group", root, *TWO_ROLES).stdout.strip()
    stored = rows(
        db,
        "SELECT group_path, roles, name FROM tokens WHERE secret_hash = ?",
        hashlib.sha256(secret.encode()).hexdigest(),
    )
    assert stored == [(root, "viewer,owner", "N")]
    assert rows(db, "SELECT count(*) FROM tokens WHERE secret_hash = ?", secret) == [(0,)]


def test_tokens_create_with_unknown_role_fails(db: Path) -> None:
    """An unknown role is a clear error, exit code 1, and no token."""
    root = cli(db, "groups", "create", "--name", "acme").stdout.strip()
    result = cli(db, "tokens", "create", "--group", root, "--role", "owner", "--role", "boss")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert flat(result.stderr).startswith("error: unknown roles ['boss']")
    assert rows(db, "SELECT count(*) FROM tokens") == [(0,)]


def test_tokens_create_with_malformed_group_fails_clearly(db: Path) -> None:
    """A malformed --group is a one-line error and exit code 1, not a traceback."""
    result = cli(db, "tokens", "create", "--group", "Not/A/Group", "--role", "owner")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert flat(result.stderr).startswith("error: group must be a path")


def test_tokens_create_requires_a_role(db: Path) -> None:
    """--role is required: usage error (exit code 2)."""
    root = cli(db, "groups", "create", "--name", "acme").stdout.strip()
    result = cli(db, "tokens", "create", "--group", root)
    assert result.exit_code == 2
    assert "--role" in result.stderr


# --- migrate ---------------------------------------------------------------------------------


def test_migrate_creates_the_schema(db: Path) -> None:
    """On a fresh file, migrate applies and records every migration and says how many."""
    result = cli(db, "migrate")
    assert result.exit_code == 0, result.output
    names = [name for name, _ in migration_files("sqlite")]
    assert [r[0] for r in rows(db, "SELECT name FROM schema_migrations ORDER BY name")] == names
    assert {"events", "groups", "tokens"} <= {
        r[0] for r in rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    assert f"({len(names)} migrations applied now)" in flat(result.stderr)


def test_migrate_is_idempotent(db: Path) -> None:
    """A second migrate succeeds, applies nothing and leaves the records as they were."""
    assert cli(db, "migrate").exit_code == 0
    before = rows(db, "SELECT * FROM schema_migrations ORDER BY name")
    again = cli(db, "migrate")
    assert again.exit_code == 0, again.output
    assert "(0 migrations applied now)" in flat(again.stderr)
    assert rows(db, "SELECT * FROM schema_migrations ORDER BY name") == before


def test_migrate_keeps_existing_data(db: Path) -> None:
    """Migrating a database in use keeps its groups."""
    root = cli(db, "groups", "create", "--name", "acme").stdout.strip()
    assert cli(db, "migrate").exit_code == 0
    assert rows(db, "SELECT path FROM groups") == [(root,)]


# --- serve ---------------------------------------------------------------------------------


def test_serve_uses_the_configured_database(db: Path, tidings_server: StartServer) -> None:
    """`tidings serve` answers from TIDINGS_DATABASE_URL: a token made there by the CLI works."""
    root = cli(db, "groups", "create", "--name", "acme").stdout.strip()
    token = cli(db, "tokens", "create", "--group", root, "--role", "viewer").stdout.strip()
    server = tidings_server(db)
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, trust_env=False) as client:
        assert client.get("/readyz").json() == {"status": "ready"}
        assert client.get("/v1/events", headers=headers).status_code == 200
        assert client.get("/v1/events", headers={"authorization": "Bearer x"}).status_code == 401


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_shuts_down_gracefully_on_a_signal(
    db: Path, tidings_server: StartServer, signum: int
) -> None:
    """SIGTERM or SIGINT runs the application's shutdown to its end, then the process exits 0."""
    server = tidings_server(db)
    assert server.process is not None
    server.process.send_signal(signum)
    assert server.process.wait(30) == 0
    log = server.log_text()
    assert "the service has stopped" in log
    assert "Traceback" not in log


def _serving_children(pid: int) -> list[int]:
    """The processes `tidings serve --processes` started, alive (by /proc's children list)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def _wait_started(server: Server, processes: int) -> None:
    """Until each of the server's processes has logged that it has started."""
    deadline = time.monotonic() + TIMEOUT
    while server.log_text().count("the service has started") < processes:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)


def test_serve_with_processes_shares_the_port_and_stops_them_all(
    db: Path, tidings_server: StartServer
) -> None:
    """--processes 2: two processes answer on one port, each running the app; SIGTERM stops
    both gracefully and the command exits 0."""
    root = cli(db, "groups", "create", "--name", "acme").stdout.strip()
    token = cli(db, "tokens", "create", "--group", root, "--role", "producer").stdout.strip()
    server = tidings_server(db, args=("--processes", "2"))
    assert server.process is not None
    _wait_started(server, 2)
    assert len(_serving_children(server.process.pid)) == 2
    keys = cli(db, "keys", "list", "--json").stdout.splitlines()
    assert len(keys) == 1  # made once, before the processes started: not one a process
    for index in range(20):  # each on a new connection: the kernel hands them to either
        answer = httpx.post(
            f"{server.url}/v1/events",
            json={
                "specversion": "1.0",
                "id": f"p-{index}",
                "source": "s",
                "type": TEST_TYPE,
                "group": root,
                "data": {"actor": {"subject": "alice"}, "body": {}},
            },
            headers={"authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
            trust_env=False,
        )
        assert answer.status_code == 201, answer.text
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    assert server.log_text().count("the service has stopped") == 2


def test_serve_stops_when_one_of_its_processes_dies(db: Path, tidings_server: StartServer) -> None:
    """A process that ends of itself (here: killed) stops the others, and the command exits
    non-zero, so that the service's supervisor starts it anew rather than half of it lives on."""
    server = tidings_server(db, args=("--processes", "2"))
    assert server.process is not None
    _wait_started(server, 2)
    children = _serving_children(server.process.pid)
    os.kill(children[0], signal.SIGKILL)
    assert server.process.wait(30) == 1
    assert server.log_text().count("the service has stopped") == 1


def test_serve_processes_stop_when_their_supervisor_is_killed(
    db: Path, tidings_server: StartServer
) -> None:
    """SIGKILL to the command leaves no process serving on: each stops gracefully, freeing the
    port for the command started again."""
    server = tidings_server(db, args=("--processes", "2"))
    assert server.process is not None
    _wait_started(server, 2)
    children = _serving_children(server.process.pid)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(30)
    deadline = time.monotonic() + TIMEOUT
    while any(Path(f"/proc/{child}").exists() for child in children):
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    assert server.log_text().count("the service has stopped") == 2
    again = Server(db, args=("--processes", "2")).start(port=server.port)
    try:
        assert (
            httpx.get(f"{again.url}/healthz", timeout=TIMEOUT, trust_env=False).status_code == 200
        )
    finally:
        assert again.stop() == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TIDINGS_KEY_ENCRYPTION_KEY": "not-a-key"},
            "error: TIDINGS_KEY_ENCRYPTION_KEY is not a Fernet key (32 url-safe base64-encoded"
            " bytes)",
        ),
        (
            {"TIDINGS_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/tidings"},
            "error: the database cannot be used: connection failed",
        ),
    ],
)
def test_serve_that_cannot_start_says_why_in_one_line(
    db: Path, env: dict[str, str], message: str
) -> None:
    """A setting the service cannot start with, found as it starts: exit 1 and the reason,
    not uvicorn's traceback of the failed start."""
    settings = {"TIDINGS_DATABASE_URL": database_url(db), **env}
    done = run_tidings("serve", "--port", str(free_port()), **settings)
    assert done.returncode == 1, done.stderr
    assert flat(done.stderr).startswith(message), done.stderr
    assert "Traceback" not in done.stderr


# --- the API commands, against a real server -------------------------------------------------


@dataclass
class Tenant:
    """A fresh root group on the live server, with tokens made by the CLI."""

    root: str
    team: str
    owner: str
    viewer: str


@dataclass
class Ran:
    """How a `tidings` command ended."""

    returncode: int
    stdout: str
    stderr: str


def run(server: Server, *args: str, token: str | None = None) -> Ran:
    """Run `tidings ARGS` in-process against `server` (TIDINGS_URL, and TIDINGS_TOKEN if given).

    The commands leave their HTTP client for the process's exit to close. In-process
    the client is collected here at once, its unclosed-socket ResourceWarning ignored.
    """
    runner = CliRunner(env={"TIDINGS_URL": server.url, "TIDINGS_TOKEN": token})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        result = runner.invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        ran = Ran(result.exit_code, result.stdout, result.stderr)
        del result
        gc.collect()
    return ran


def run_process(
    server: Server, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed `tidings ARGS` as a process against `server`."""
    extra = {"TIDINGS_URL": server.url}
    if token is not None:
        extra["TIDINGS_TOKEN"] = token
    return subprocess.run(
        [TIDINGS, *args],
        env=tidings_env(None, **extra),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `tidings serve` for this module's API tests."""
    with serving(tmp_path_factory.mktemp("cli-api") / "tidings.db") as running:
        yield running


@pytest.fixture
def tenant(server: Server) -> Tenant:
    """A root and a team under it, an owner and a viewer token: all made by the CLI."""
    root = cli(server.database, "groups", "create", "--name", "acme").stdout.strip()
    team = cli(server.database, "groups", "create", "--name", "t", "--parent", root).stdout.strip()
    owner = cli(server.database, "tokens", "create", "--group", root, "--role", "owner")
    viewer = cli(server.database, "tokens", "create", "--group", root, "--role", "viewer")
    return Tenant(root, team, owner.stdout.strip(), viewer.stdout.strip())


def emit(server: Server, token: str, group: str, **attributes: Any) -> dict[str, Any]:
    """Ingest one event straight through the API (setup, not under test)."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "source": "https://platform.example/widgets",
        "type": TEST_TYPE,
        "group": group,
        "data": {"actor": {"subject": "alice"}, "body": {}},
    }
    body.update(attributes)
    response = httpx.post(
        f"{server.url}/v1/events",
        json=body,
        headers={"authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
        trust_env=False,
    )
    assert response.status_code == 201, response.text
    stored: dict[str, Any] = response.json()
    return stored


def api_get(server: Server, token: str, path: str) -> dict[str, Any]:
    """GET an API path, decoded."""
    response = httpx.get(
        f"{server.url}{path}",
        headers={"authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def emit_args(group: str, *options: str, source: str = "s") -> list[str]:
    """The arguments of `events emit` for a TEST_TYPE event by alice in `group`, plus `options`."""
    return [
        *("events", "emit", "--type", TEST_TYPE, "--source", source),
        *("--group", group, "--actor", "alice", *options),
    ]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` decoded as JSON."""
    return [json.loads(line) for line in text.splitlines()]


def test_tokens_made_by_the_cli_work_against_the_server(server: Server, tenant: Tenant) -> None:
    """A token from `tokens create` authenticates; a viewer token may not ingest."""
    assert api_get(server, tenant.viewer, "/v1/events")["events"] == []
    result = run(server, *emit_args(tenant.root), token=tenant.viewer)
    assert result.returncode == 1
    assert "(403)" in flat(result.stderr)


def test_events_emit_prints_the_stored_event(server: Server, tenant: Tenant) -> None:
    """emit prints the event as stored, one JSON line, with every given attribute."""
    options = ["--subject", "thing-1", "--body", '{"name": "w1", "n": 2}', "--id", "cli-1"]
    result = run_process(
        server,
        *emit_args(tenant.team, *options, source="https://x.example/a"),
        token=tenant.owner,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    printed = json.loads(result.stdout)
    assert printed == api_get(server, tenant.viewer, "/v1/events/cli-1")
    assert (printed["type"], printed["source"], printed["group"], printed["subject"]) == (
        TEST_TYPE,
        "https://x.example/a",
        tenant.team,
        "thing-1",
    )
    assert printed["data"] == {"actor": {"subject": "alice"}, "body": {"name": "w1", "n": 2}}
    assert "storedtime" in printed


def test_events_emit_reads_the_body_from_a_file(
    server: Server, tenant: Tenant, tmp_path: Path
) -> None:
    """--body @file takes the body from that file."""
    body = tmp_path / "body.json"
    body.write_text('{"from": "file"}')
    result = run(server, *emit_args(tenant.root, "--body", f"@{body}"), token=tenant.owner)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"]["body"] == {"from": "file"}


def test_events_emit_refused_by_the_api_shows_its_message(server: Server, tenant: Tenant) -> None:
    """An event the API refuses is exit code 1 with the API's message and status."""
    result = run(server, *emit_args("Not A Group"), token=tenant.owner)
    assert result.returncode == 1
    assert result.stdout == ""
    assert re.match(r"error: group must be .*\(400\)$", flat(result.stderr))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("NaN", "--body is not valid JSON"),
        ('{"x": 1e999}', "--body is not valid JSON"),
        ('"\\ud800"', "--body is not valid JSON"),
        ("[" * 600 + "]" * 600, "--body is nested too deeply to send"),
        ('{"n": 18446744073709551616}', "the --body holds the integer 18446744073709551616"),
        ("@/nonexistent/body.json", "--body: cannot read '/nonexistent/body.json'"),
    ],
)
def test_events_emit_refuses_a_body_it_cannot_send_in_one_line(
    server: Server, tenant: Tenant, body: str, message: str
) -> None:
    """JSON the service would refuse, or a file that cannot be read: exit 1, one line, nothing
    sent (each had been a traceback)."""
    result = run(server, *emit_args(tenant.root, "--body", body), token=tenant.owner)
    assert result.returncode == 1
    assert flat(result.stderr).startswith(f"error: {message}")
    assert api_get(server, tenant.viewer, "/v1/events")["events"] == []


def test_events_emit_with_invalid_body_json_fails(server: Server, tenant: Tenant) -> None:
    """A --body that is not JSON is refused before anything is sent."""
    result = run(server, *emit_args(tenant.root, "--body", "{nope"), token=tenant.owner)
    assert result.returncode == 1
    assert "--body is not valid JSON" in flat(result.stderr)
    assert api_get(server, tenant.viewer, "/v1/events")["events"] == []


def test_events_list_prints_a_table_by_default(server: Server, tenant: Tenant) -> None:
    """Without --json, list prints a table with a header and one row per event, in order."""
    first = emit(server, tenant.owner, tenant.root, id="table-1", subject="s-1")
    second = emit(server, tenant.owner, tenant.team, id="table-2", type=OTHER_TYPE)
    result = run_process(server, "events", "list", token=tenant.viewer)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "time" in line)
    assert re.search(r"time\W+type\W+subject\W+actor\W+group\W+id", header)
    table_rows = [line for line in lines if "table-" in line]
    assert len(table_rows) == 2
    assert all(word in table_rows[0] for word in (first["time"], TEST_TYPE, "s-1", "alice"))
    assert all(word in table_rows[1] for word in (OTHER_TYPE, tenant.team, second["id"]))
    assert "table-1" in table_rows[0]


def test_events_list_json_prints_json_lines(server: Server, tenant: Tenant) -> None:
    """--json prints each event as the API returns it, one per line, oldest first."""
    emitted = [emit(server, tenant.owner, tenant.root, id=f"j-{i}") for i in range(3)]
    result = run(server, "events", "list", "--json", token=tenant.viewer)
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout) == emitted


def test_events_list_follows_every_page_and_limit_caps_the_total(
    server: Server, tenant: Tenant
) -> None:
    """Without --limit, list prints every event across pages (of 100); --limit N prints the
    first N (pages of at most 100, the last cut), and with --order desc the newest N."""
    batch = [
        {
            "specversion": "1.0",
            "id": f"p-{i:03}",
            "source": "https://platform.example/widgets",
            "type": TEST_TYPE,
            "group": tenant.root,
            "data": {"actor": {"subject": "alice"}, "body": {}},
        }
        for i in range(205)
    ]
    post_batch(server, tenant.owner, batch)
    emitted = [event["id"] for event in batch]

    def listed(*options: str) -> list[str]:
        result = run(server, "events", "list", "--json", *options, token=tenant.viewer)
        assert result.returncode == 0, result.stderr
        return [event["id"] for event in json_lines(result.stdout)]

    assert listed() == emitted
    assert listed("--limit", "2") == emitted[:2]
    assert listed("--limit", "150") == emitted[:150]
    assert listed("--limit", "1000") == emitted
    assert listed("--order", "desc", "--limit", "3") == emitted[::-1][:3]


def test_follow_takes_no_limit(server: Server, tenant: Tenant) -> None:
    result = run(server, "events", "list", "--follow", "--limit", "5", token=tenant.viewer)
    assert result.returncode == 1
    assert "--follow lists every event from the first on; it takes no --limit" in flat(
        result.stderr
    )


def test_events_list_desc_lists_newest_first(server: Server, tenant: Tenant) -> None:
    """--order desc reverses the order."""
    emitted = [emit(server, tenant.owner, tenant.root, id=f"d-{i}")["id"] for i in range(3)]
    result = run(server, "events", "list", "--json", "--order", "desc", token=tenant.viewer)
    assert result.returncode == 0, result.stderr
    assert [event["id"] for event in json_lines(result.stdout)] == emitted[::-1]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--type", TEST_TYPE], ["f-1", "f-3"]),
        (["--type", "dev.example.gadget.*"], ["f-2"]),
        (["--type", TEST_TYPE, "--type", OTHER_TYPE], ["f-1", "f-2", "f-3"]),
        (["--group", "TEAM"], ["f-2", "f-3"]),
        (["--actor", "bob"], ["f-2", "f-3"]),
        (["--actor", "alice"], ["f-1"]),
        (["--group", "TEAM", "--type", TEST_TYPE, "--actor", "bob"], ["f-3"]),
        (["--actor", "nobody"], []),
    ],
)
def test_events_list_filters(
    server: Server, tenant: Tenant, filters: list[str], expected: list[str]
) -> None:
    """--type (exact or prefix.*), --group and --actor narrow the list, and combine."""
    bob = {"actor": {"subject": "bob"}, "body": {}}
    emit(server, tenant.owner, tenant.root, id="f-1")
    emit(server, tenant.owner, tenant.team, id="f-2", type=OTHER_TYPE, data=bob)
    emit(server, tenant.owner, tenant.team, id="f-3", data=bob)
    args = [tenant.team if value == "TEAM" else value for value in filters]
    result = run(server, "events", "list", "--json", *args, token=tenant.viewer)
    assert result.returncode == 0, result.stderr
    assert [event["id"] for event in json_lines(result.stdout)] == expected


def test_events_list_outside_the_token_group_fails(server: Server, tenant: Tenant) -> None:
    """--group outside the token's subtree is the API's 403, exit code 1."""
    other = cli(server.database, "groups", "create", "--name", "other").stdout.strip()
    result = run(server, "events", "list", "--group", other, token=tenant.viewer)
    assert result.returncode == 1
    assert "(403)" in flat(result.stderr)


def test_events_get_prints_the_event(server: Server, tenant: Tenant) -> None:
    """get ID --json prints that event as JSON."""
    stored = emit(server, tenant.owner, tenant.team, id="get-1")
    emit(server, tenant.owner, tenant.team, id="get-2")
    result = run(server, "events", "get", "get-1", "--json", token=tenant.viewer)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == stored


def test_events_get_shows_times_description_and_previous(server: Server, tenant: Tenant) -> None:
    """get ID shows the source's time beside the stored time, the description and what changed."""
    emit(
        server,
        tenant.owner,
        tenant.team,
        id="get-3",
        description="renamed the widget",
        data={"actor": {"subject": "user-1"}, "body": {"name": "new"}, "previous": {"name": "old"}},
    )
    result = run(server, "events", "get", "get-3", token=tenant.viewer)
    assert result.returncode == 0, result.stderr
    text = flat(result.stdout)
    assert "(at the source)" in text
    assert "(by tidings)" in text
    assert "renamed the widget" in text
    assert '"name": "old"' in result.stdout


def test_events_get_unknown_id_fails(server: Server, tenant: Tenant) -> None:
    """An id that is not there is a 404 error and exit code 1."""
    result = run(server, "events", "get", "no-such-event", token=tenant.viewer)
    assert result.returncode == 1
    assert result.stdout == ""
    assert flat(result.stderr) == "error: no visible event has id 'no-such-event' (404)"


def test_types_lists_the_46_builtin_types(server: Server, tenant: Tenant) -> None:
    """types prints a table of the 46 built-in types with their descriptions."""
    result = run_process(server, "types", token=tenant.viewer)
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^\W*(dev\.chainguard\.[a-z0-9_.]+)\s", result.stdout, re.MULTILINE)
    catalog = builtin_types()
    assert len(catalog) == 46
    assert sorted(listed) == sorted(catalog)
    registry = catalog["dev.chainguard.registry.push.v1"]
    assert registry.description in result.stdout


def test_events_list_follow_prints_new_events(server: Server, tenant: Tenant) -> None:
    """--follow prints what is there, then an event emitted after it started."""
    emit(server, tenant.owner, tenant.root, id="before")
    follower = subprocess.Popen(
        [TIDINGS, "events", "list", "--follow", "--json", "--interval", "0.1"],
        env=tidings_env(TIDINGS_URL=server.url, TIDINGS_TOKEN=tenant.viewer),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert json.loads(lines.get(timeout=TIMEOUT))["id"] == "before"
        emit(server, tenant.owner, tenant.team, id="after-1")
        emit(server, tenant.owner, tenant.root, id="after-2")
        later = [json.loads(lines.get(timeout=TIMEOUT))["id"] for _ in range(2)]
        assert later == ["after-1", "after-2"]
        assert follower.poll() is None
    finally:
        follower.terminate()
        try:
            follower.wait(10)
        except subprocess.TimeoutExpired:
            follower.kill()
            follower.wait(10)
        reader.join(10)
        for stream in (follower.stdout, follower.stderr):
            if stream is not None:
                stream.close()


def test_follow_with_descending_order_is_refused(server: Server, tenant: Tenant) -> None:
    """--follow only lists in ascending order."""
    result = run(server, "events", "list", "--follow", "--order", "desc", token=tenant.viewer)
    assert result.returncode == 1
    assert "--follow lists in ascending order" in flat(result.stderr)


@pytest.mark.parametrize(
    "command",
    [
        ["types"],
        ["events", "list"],
        ["events", "get", "some-id"],
        ["events", "emit", "--type", "t", "--source", "s", "--group", "g", "--actor", "a"],
    ],
)
def test_missing_token_is_a_clear_error(server: Server, command: list[str]) -> None:
    """Without --token or TIDINGS_TOKEN, an API command says so and exits 1."""
    result = run(server, *command)
    assert result.returncode == 1
    assert result.stdout == ""
    assert flat(result.stderr) == "error: an API token is needed: pass --token or set TIDINGS_TOKEN"


def test_unknown_token_is_a_clear_error(server: Server) -> None:
    """A token the server does not know is the API's 401, exit code 1."""
    result = run(server, "events", "list", token="tdg_not-a-real-token")
    assert result.returncode == 1
    assert flat(result.stderr) == "error: the token is unknown or was deleted (401)"


def test_url_and_token_options_override_the_environment(server: Server, tenant: Tenant) -> None:
    """--url and --token work without TIDINGS_URL or TIDINGS_TOKEN."""
    emit(server, tenant.owner, tenant.root, id="opt-1")
    result = subprocess.run(
        [TIDINGS, "events", "list", "--json", "--url", server.url, "--token", tenant.viewer],
        env=tidings_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [event["id"] for event in json_lines(result.stdout)] == ["opt-1"]


def test_unreachable_api_is_a_clear_error() -> None:
    """A URL where nothing listens is a one-line error and exit code 1, not a traceback."""
    result = subprocess.run(
        [TIDINGS, "types", "--url", f"http://127.0.0.1:{free_port()}", "--token", "tdg_x"],
        env=tidings_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert flat(result.stderr).startswith("error: cannot reach the API")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("serve", "--port", "99999"), "--port"),  # had served on another port, and stored it
        (("demo", "--port", "0"), "--port"),
        (("listen", "--group", "a", "--port", "99999"), "--port"),
        (("events", "list", "--follow", "--interval", "nan"), "--interval"),
        (("events", "list", "--follow", "--interval", "-1"), "--interval"),
        (
            ("webhooks", "create", "--group", "a", "--name", "n", "--rate-limit", "nan"),
            "--rate-limit",
        ),
        (("keys", "rotate", "--delay", "99999999999999999999"), "--delay"),
    ],
)
def test_an_option_out_of_its_range_is_a_usage_error(
    tmp_path: Path, args: tuple[str, ...], option: str
) -> None:
    """Out-of-range and non-finite numbers are refused before anything runs (exit 2, naming
    the option); each had been a traceback or a wrong port."""
    result = cli(tmp_path / "tidings.db", *args)
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert not (tmp_path / "tidings.db").exists()


def test_a_database_that_cannot_be_opened_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A directory where the database file should be: exit 1 and a message, for the commands
    that open the database themselves (groups, tokens, keys)."""
    for args in (("groups", "create", "--name", "x"), ("keys", "list")):
        result = cli(tmp_path, *args)
        assert result.exit_code == 1, result.output
        assert (
            flat(result.output)
            == "error: the database cannot be used: unable to open database file"
        )


@pytest.mark.parametrize(
    "url", ["mysql://db.internal/tidings", "postgresq://db/t", "SQLITE:///x.db"]
)
def test_a_database_url_of_another_scheme_is_refused_not_taken_for_a_path(
    tmp_path: Path, url: str
) -> None:
    """A mistyped or foreign scheme is named; it had been opened as an SQLite file path."""
    runner = CliRunner(env={"TIDINGS_DATABASE_URL": url, "TIDINGS_TOKEN": None})
    result = runner.invoke(app, ["migrate"])
    assert result.exit_code == 1, result.output
    scheme = url.split(":", 1)[0]
    assert flat(result.output) == (
        f"error: TIDINGS_DATABASE_URL: tidings stores in SQLite or PostgreSQL, not {scheme!r};"
        " give sqlite:///path or postgresql://user@host/database"
    )


def test_version_names_the_release_and_each_backends_last_migration(tmp_path: Path) -> None:
    """`tidings --version` says which release runs and the schema it migrates to, and opens
    no database."""
    result = cli(tmp_path / "tidings.db", "--version")
    assert result.exit_code == 0, result.output
    postgres, sqlite = (migration_files(backend)[-1][0] for backend in ("postgres", "sqlite"))
    assert flat(result.output) == (
        f"tidings {__version__} (schema: PostgreSQL {postgres}, SQLite {sqlite})"
    )
    assert not (tmp_path / "tidings.db").exists()


def test_a_postgresql_server_that_cannot_be_reached_is_named_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens at the URL's port: the commands that open the database say why, in one
    line, without the pool retrying (and warning) until its timeout first."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/tidings"
    runner = CliRunner(env={"TIDINGS_DATABASE_URL": url, "TIDINGS_TOKEN": None})
    for args in (("keys", "list"), ("retention",)):
        result = runner.invoke(app, list(args))
        assert result.exit_code == 1, result.output
        assert flat(result.output).startswith(
            "error: the database cannot be used: connection failed"
        )
        assert "Connection refused" in result.output
    assert not [r for r in caplog.records if r.name.startswith("psycopg.pool")]


class _Canned(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status, headers and body of its server's `canned`."""

    def do_GET(self) -> None:
        status, headers, body = self.server.canned  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[http.server.HTTPServer]:
    """A local HTTP server that is not tidings: set its `canned` answer."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Canned)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            (200, {"content-type": "text/html"}, b"<html><body>Welcome</body></html>"),
            "the answer is not JSON, so not the tidings API's: <html><body>Welcome</body></html> (200)",
        ),
        (
            (307, {"location": "http://elsewhere.example/"}, b""),
            "(no body) (redirected to http://elsewhere.example/) (307)",
        ),
        (
            (500, {"content-type": "text/html"}, b"<h1>Internal\n\n  Error</h1>"),
            "<h1>Internal Error</h1> (500)",
        ),
        ((400, {"content-type": "application/json"}, b'{"error": "x"}'), '{"error": "x"} (400)'),
        ((404, {"content-type": "application/json"}, b'{"error": {}}'), '{"error": {}} (404)'),
    ],
)
def test_an_answer_no_tidings_api_gives_is_one_line(
    canned: http.server.HTTPServer, answer: tuple[int, dict[str, str], bytes], message: str
) -> None:
    """Pointed at something else (a web page, a redirect, another API's error), the CLI says
    what it got in one line and exits 1; each had been a traceback."""
    canned.canned = answer  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{canned.server_address[1]}"
    result = CliRunner().invoke(app, ["events", "list", "--url", url, "--token", "tdg_x"])
    assert result.exit_code == 1, result.output
    assert flat(result.stderr) == f"error: {message}"


@pytest.mark.parametrize("token", ["tdg_x\u201d", "tdg_\x01x"])
def test_a_token_with_characters_no_token_has_is_refused_unshown(token: str) -> None:
    """A smart quote or a control character: refused before any request, the token not
    echoed (it is a secret); whitespace around a token is dropped."""
    result = CliRunner().invoke(
        app, ["events", "list", "--url", "http://127.0.0.1:9", "--token", token]
    )
    assert result.exit_code == 1
    assert "characters no token has" in result.stderr
    assert token not in result.stderr

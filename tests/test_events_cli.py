"""`tidings events stats` and the audit views of `tidings events list`, against a real server.

Tables and charts come from the installed `tidings` run as a process (a wide,
colourless terminal: see `tests.servers.tidings_env`); JSON output is read from
in-process runs, which are faster.
"""

from __future__ import annotations

import gc
import json
import re
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.servers import TIDINGS, Server, database_url, post_batch, serving, tidings_env
from tidings.cli import app

TIMEOUT = 30
WIDGET = "dev.example.widget.created.v1"
GADGET = "dev.example.gadget.deleted.v1"
BAR = "█"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli_db(database: Path, *args: str) -> str:
    """Run a database command (`groups create`, `tokens create`) in-process; its stdout."""
    runner = CliRunner(env={"TIDINGS_DATABASE_URL": database_url(database), "TIDINGS_TOKEN": None})
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def run(server: Server, token: str, *args: str) -> Ran:
    """`tidings ARGS` in-process against the server (its HTTP client's ResourceWarning ignored)."""
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


def run_process(server: Server, token: str, *args: str, **env: str) -> Ran:
    """The installed `tidings ARGS` as a process against the server (`env`: more variables,
    such as COLUMNS, the width of its terminal)."""
    done = subprocess.run(
        [TIDINGS, *args],
        env=tidings_env(None, TIDINGS_URL=server.url, TIDINGS_TOKEN=token, **env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@dataclass
class Tenant:
    root: str
    team: str
    owner: str
    viewer: str
    alice: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("events-cli") / "tidings.db") as running:
        yield running


@pytest.fixture
def tenant(server: Server) -> Tenant:
    """A fresh root and team, an owner, a viewer, and a viewer acting as 'alice'."""
    db = server.database
    root = cli_db(db, "groups", "create", "--name", "acme")
    team = cli_db(db, "groups", "create", "--name", "team", "--parent", root)

    def token(*options: str) -> str:
        return cli_db(db, "tokens", "create", "--group", root, *options)

    return Tenant(
        root,
        team,
        token("--role", "owner"),
        token("--role", "viewer"),
        token("--role", "viewer", "--subject", "alice"),
    )


def emit(server: Server, token: str, *events: dict[str, Any]) -> None:
    """Ingest events straight through the API (setup, not under test)."""
    post_batch(server, token, events)


def ev(group: str, event_id: str, **attributes: Any) -> dict[str, Any]:
    actor = attributes.pop("actor", "bob")
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "https://platform.example/widgets",
        "type": WIDGET,
        "group": group,
        "data": {"actor": {"subject": actor}, "body": attributes.pop("body", {})},
    }
    if "previous" in attributes:
        body["data"]["previous"] = attributes.pop("previous")
    body.update(attributes)
    return body


def api_stats(server: Server, token: str, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.url}/v1/events/stats",
        params=params,
        headers={"authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


@pytest.fixture
def days(server: Server, tenant: Tenant) -> None:
    """Seven events over three days: 4 on 2024-03-01, 2 on 03-02 (one a gadget), 1 on 03-04."""
    times = [f"2024-03-01T0{i}:00:00Z" for i in range(4)]
    times += ["2024-03-02T10:00:00Z", "2024-03-02T23:59:59Z", "2024-03-04T00:00:00Z"]
    emit(
        server,
        tenant.owner,
        *(
            ev(
                tenant.team if i % 2 else tenant.root,
                f"d{i}",
                time=t,
                type=GADGET if i == 5 else WIDGET,
            )
            for i, t in enumerate(times)
        ),
    )


# --- events stats -----------------------------------------------------------------------------


@pytest.mark.usefixtures("days")
def test_stats_by_type_prints_a_table_most_first(server: Server, tenant: Tenant) -> None:
    """--by type prints a table of type and count, the most frequent first."""
    result = run_process(server, tenant.viewer, "events", "stats", "--by", "type")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "count" in line)
    assert re.search(r"type\W+count", header)
    rows = [line for line in lines if "dev.example" in line]
    assert len(rows) == 2
    assert re.search(rf"{re.escape(WIDGET)}\W+6\b", rows[0])
    assert re.search(rf"{re.escape(GADGET)}\W+1\b", rows[1])


@pytest.mark.usefixtures("days")
def test_stats_json_prints_the_api_rows(server: Server, tenant: Tenant) -> None:
    """--json prints each row as the API answers it, one per line, in its order."""
    result = run(
        server, tenant.viewer, "events", "stats", "--by", "group", "--by", "type", "--json"
    )
    assert result.returncode == 0, result.stderr
    printed = json_lines(result.stdout)
    assert printed == api_stats(server, tenant.viewer, group_by=["group", "type"])
    assert printed[0] == {"group": tenant.root, "type": WIDGET, "count": 4}
    assert sum(row["count"] for row in printed) == 7


@pytest.mark.usefixtures("days")
def test_stats_filters_narrow_the_counts(server: Server, tenant: Tenant) -> None:
    """The list's filters apply to stats too."""
    result = run(
        server,
        tenant.viewer,
        "events",
        "stats",
        "--json",
        "--group",
        tenant.team,
        "--interval",
        "day",
    )
    assert result.returncode == 0, result.stderr
    assert {row["interval_start"]: row["count"] for row in json_lines(result.stdout)} == {
        "2024-03-01T00:00:00Z": 2,
        "2024-03-02T00:00:00Z": 1,
    }
    result = run(
        server, tenant.viewer, "events", "stats", "--json", "--type", "dev.example.gadget.*"
    )
    assert json_lines(result.stdout) == [{"count": 1}]


@pytest.mark.usefixtures("days")
def test_stats_interval_chart_draws_a_bar_per_day_in_time_order(
    server: Server, tenant: Tenant
) -> None:
    """--interval day --chart draws one bar per day, oldest first, scaled to the largest count."""
    result = run_process(server, tenant.viewer, "events", "stats", "--interval", "day", "--chart")
    assert result.returncode == 0, result.stderr
    bars = [line for line in result.stdout.splitlines() if BAR in line]
    assert [line.split()[0] for line in bars] == [
        "2024-03-01T00:00:00Z",
        "2024-03-02T00:00:00Z",
        "2024-03-04T00:00:00Z",
    ]
    lengths = [line.count(BAR) for line in bars]
    counts = [int(line.split()[-1]) for line in bars]
    assert counts == [4, 2, 1]
    assert lengths[0] == max(lengths) > lengths[1] > lengths[2] > 0
    assert lengths[1] == pytest.approx(lengths[0] / 2, abs=1)


@pytest.mark.usefixtures("days")
def test_stats_chart_by_type(server: Server, tenant: Tenant) -> None:
    """--chart without --interval draws a bar per group_by value, most first."""
    result = run_process(server, tenant.viewer, "events", "stats", "--by", "type", "--chart")
    assert result.returncode == 0, result.stderr
    bars = [line for line in result.stdout.splitlines() if BAR in line]
    assert [line.split()[0] for line in bars] == [WIDGET, GADGET]
    assert bars[0].count(BAR) > bars[1].count(BAR) >= 1


def test_stats_of_nothing_prints_no_bars(server: Server, tenant: Tenant) -> None:
    result = run(server, tenant.viewer, "events", "stats", "--interval", "day", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert BAR not in run(server, tenant.viewer, "events", "stats", "--chart").stdout


@pytest.mark.parametrize(("option", "value"), [("--by", "time"), ("--interval", "week")])
def test_stats_with_a_bad_option_shows_the_apis_400(
    server: Server, tenant: Tenant, option: str, value: str
) -> None:
    result = run(server, tenant.viewer, "events", "stats", option, value)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "(400)" in " ".join(result.stderr.split())


# --- events list: audit views and filters -----------------------------------------------------


def test_list_shows_the_description_and_what_changed(server: Server, tenant: Tenant) -> None:
    """The table's description column holds the description and 'changed: ...' of an update."""
    emit(
        server,
        tenant.owner,
        ev(
            tenant.root,
            "upd",
            description="Renamed the widget",
            body={"name": "new", "size": 2},
            previous={"size": 1, "name": "old"},
        ),
        ev(tenant.root, "plain"),
        ev(tenant.root, "only-prev", previous={"colour": "red"}),
    )
    result = run_process(server, tenant.viewer, "events", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "time" in line)
    assert re.search(r"time\W+type\W+subject\W+actor\W+group\W+id\W+description", header)
    [upd] = [line for line in lines if " upd " in line]
    assert "Renamed the widget changed: name, size" in " ".join(upd.split())
    [only] = [line for line in lines if "only-prev" in line]
    assert "changed: colour" in only
    [plain] = [line for line in lines if " plain " in line]
    assert "changed" not in plain


def test_list_search(server: Server, tenant: Tenant) -> None:
    """--search (and -q) list the events whose text holds the words."""
    emit(
        server,
        tenant.owner,
        ev(tenant.root, "s1", description="Rotated the signing key"),
        ev(tenant.root, "s2", body={"note": {"deep": ["rotation schedule"]}}),
        ev(tenant.root, "s3", description="nothing here"),
    )
    result = run(server, tenant.viewer, "events", "list", "--json", "--search", "rotat")
    assert result.returncode == 0, result.stderr
    assert [e["id"] for e in json_lines(result.stdout)] == ["s1", "s2"]
    result = run(server, tenant.viewer, "events", "list", "--json", "-q", "signing key")
    assert [e["id"] for e in json_lines(result.stdout)] == ["s1"]
    result = run(server, tenant.viewer, "events", "stats", "--json", "--search", "rotat")
    assert json_lines(result.stdout) == [{"count": 2}]


def test_list_eventkey(server: Server, tenant: Tenant) -> None:
    """--eventkey lists one alert's history, oldest first."""
    emit(
        server,
        tenant.owner,
        ev(tenant.root, "k1", eventkey="alert-7", severity="high"),
        ev(tenant.root, "k2", eventkey="alert-8"),
        ev(tenant.root, "k3", eventkey="alert-7", severity="low"),
    )
    result = run(server, tenant.viewer, "events", "list", "--json", "--eventkey", "alert-7")
    assert result.returncode == 0, result.stderr
    found = json_lines(result.stdout)
    assert [(e["id"], e["severity"]) for e in found] == [("k1", "high"), ("k3", "low")]


def test_list_actor_me(server: Server, tenant: Tenant) -> None:
    """--actor me lists the events of the token's subject; a token without one fails with a 400."""
    emit(
        server,
        tenant.owner,
        ev(tenant.root, "a1", actor="alice"),
        ev(tenant.root, "b1", actor="bob"),
        ev(tenant.root, "a2", actor="alice"),
    )
    result = run(server, tenant.alice, "events", "list", "--json", "--actor", "me")
    assert result.returncode == 0, result.stderr
    assert [e["id"] for e in json_lines(result.stdout)] == ["a1", "a2"]
    result = run(
        server, tenant.alice, "events", "stats", "--json", "--actor", "me", "--by", "actor"
    )
    assert json_lines(result.stdout) == [{"actor": "alice", "count": 2}]
    result = run(server, tenant.viewer, "events", "list", "--actor", "me")
    assert result.returncode == 1
    assert "subject" in result.stderr
    assert "(400)" in " ".join(result.stderr.split())


def test_an_empty_filter_is_sent_not_dropped(server: Server, tenant: Tenant) -> None:
    """--actor '' matches the events whose actor is empty (none), as `actor=` does in the API;
    --search '' is the API's 400. Neither lists every event as if no filter were given."""
    emit(server, tenant.owner, ev(tenant.root, "e1", actor="alice"))
    result = run(server, tenant.viewer, "events", "list", "--json", "--actor", "")
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout) == []
    result = run(server, tenant.viewer, "events", "stats", "--json", "--actor", "")
    assert json_lines(result.stdout) == [{"count": 0}]
    result = run(server, tenant.viewer, "events", "list", "--search", "")
    assert result.returncode == 1
    assert "(400)" in " ".join(result.stderr.split())


def test_stored_text_is_shown_as_it_is_never_read_as_markup(server: Server, tenant: Tenant) -> None:
    """Actors, descriptions and subjects holding rich markup are printed literally: "[/x]" had
    made every table view of the tenant fail, and "[red]...[/red]" restyled the audit log."""
    emit(
        server,
        tenant.owner,
        ev(tenant.root, "markup", actor="[/x]", description="[bold red]fake alert[/bold red]"),
    )
    listed = run_process(server, tenant.viewer, "events", "list")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if " markup " in line]
    assert "[/x]" in row
    assert "[bold red]fake alert[/bold red]" in " ".join(row.split())
    shown = run(server, tenant.viewer, "events", "get", "markup")
    assert shown.returncode == 0, shown.stderr
    assert "[/x]" in shown.stdout
    stats = run(server, tenant.viewer, "events", "stats", "--by", "actor")
    assert stats.returncode == 0, stats.stderr
    assert "[/x]" in stats.stdout
    refused = run(server, tenant.viewer, "events", "list", "--group", "[/]")
    assert refused.returncode == 1
    assert "[/]" in refused.stderr


def test_a_piped_table_keeps_ids_whole_without_columns(server: Server, tenant: Tenant) -> None:
    """Piped, with no COLUMNS set, the table is not cut to 80 columns: a long id is whole."""
    long_id = "order-" + "0123456789" * 6
    emit(server, tenant.owner, ev(tenant.root, long_id))
    env = tidings_env(None, TIDINGS_URL=server.url, TIDINGS_TOKEN=tenant.viewer)
    del env["COLUMNS"]
    done = subprocess.run(
        [TIDINGS, "events", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert long_id in done.stdout


@pytest.mark.parametrize("columns", ["80", "132"])
def test_a_narrow_terminal_folds_the_table_but_keeps_ids_whole(
    server: Server, tenant: Tenant, columns: str
) -> None:
    """In a terminal of 80 or 132 columns the id (there to be copied into `events get`) is
    whole on one line; the other columns fold onto more lines rather than lose their ends."""
    event_id = "01a21b2c-0076-7eee-9abc-0123456789ab"
    emit(server, tenant.owner, ev(tenant.team, event_id, actor="alice@example.com"))
    done = run_process(server, tenant.viewer, "events", "list", COLUMNS=columns)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= int(columns)
    assert any(event_id in line for line in lines)
    assert "…" not in done.stdout
    assert "alice@example.com" in "".join(
        cell.strip() for line in lines for cell in line.split("│")[4:5]
    )


@pytest.mark.parametrize(("columns", "id_length"), [("132", 130), ("50", 36)])
def test_an_id_too_long_to_keep_whole_folds_and_every_column_still_shows(
    server: Server, tenant: Tenant, columns: str, id_length: int
) -> None:
    """Where the id cannot stand whole beside the other columns, it folds too: no column is
    squeezed to nothing (the actor is still there, whole once its lines are joined)."""
    event_id = ("0123456789" * 13)[:id_length]
    emit(server, tenant.owner, ev(tenant.team, event_id, actor="alice@example.com"))
    args = ("events", "list", "--order", "desc", "--limit", "1")
    done = run_process(server, tenant.viewer, *args, COLUMNS=columns)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("│")]
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines]
    joined = ["".join(row[i] for row in cells) for i in range(len(cells[0]))]
    assert joined[3] == "alice@example.com"  # actor
    assert joined[5] == event_id
    assert all(len(cell) > 0 for cell in (joined[0], joined[1], joined[4]))  # time, type, group

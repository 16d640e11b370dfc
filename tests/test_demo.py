"""`tidings demo`: it runs, reports what it emitted, leaves a queryable database with --once, and
removes it when stopped while serving."""

from __future__ import annotations

import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import TIDINGS, Server, free_port, serving, taken_port, tidings_env
from tidings.catalog import builtin_types

LABELS = {
    "tenant root": "root",
    "team 'platform'": "platform",
    "team 'payments'": "payments",
    "cluster under 'platform'": "cluster",
}
UID = r"[0-9a-f]{40}"
UIDP = re.compile(rf"{UID}(?:/[0-9a-f]{{16}})*")
# Texts of the Chainguard documents that stand for identifiers: none may reach the store.
PLACEHOLDER = re.compile(
    r"UIDP|\bUID\b|identifier|identity that triggered|cloudevent generated|namespace-UID|cluster-id"
)
TIMEOUT = 60


@dataclass
class Demo:
    """What `tidings demo --once` printed, parsed."""

    returncode: int
    stdout: str
    stderr: str
    database: Path | None = None
    owner: str = ""
    payments_viewer: str = ""
    groups: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def parse(result: subprocess.CompletedProcess[str]) -> Demo:
    """The demo's report: its database, tokens, groups and event counts."""
    demo = Demo(result.returncode, result.stdout, result.stderr)
    text = result.stdout
    if found := re.search(r"database: (\S+)", text):
        demo.database = Path(found[1])
    if found := re.search(r"export TIDINGS_TOKEN=(tdg_\S+)", text):
        demo.owner = found[1]
    if found := re.search(r"TIDINGS_TOKEN=(tdg_\S+) tidings events list\W+# a viewer", text):
        demo.payments_viewer = found[1]
    labels = "|".join(re.escape(label) for label in LABELS)
    for path, label, count in re.findall(rf"({UIDP.pattern})\W+({labels})\W+(\d+)", text):
        demo.groups[LABELS[label]] = path
        demo.counts[LABELS[label]] = int(count)
    return demo


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    """One run of `tidings demo --once` on a free port; its temporary directory removed after."""
    result = subprocess.run(
        [TIDINGS, "demo", "--once", "--port", str(free_port())],
        env=tidings_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    ran = parse(result)
    try:
        yield ran
    finally:
        if ran.database is not None and ran.database.parent.name.startswith("tidings-demo-"):
            shutil.rmtree(ran.database.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def server(demo: Demo) -> Iterator[Server]:
    """`tidings serve` on the database the demo left behind."""
    assert demo.database is not None, demo.stdout + demo.stderr
    with serving(demo.database) as running:
        yield running


def get(server: Server, token: str, path: str, **params: Any) -> httpx.Response:
    """GET an API path with a token."""
    return httpx.get(
        f"{server.url}{path}",
        params=params,
        headers={"authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
        trust_env=False,
    )


def every_event(server: Server, token: str, **params: Any) -> list[dict[str, Any]]:
    """Every event the token sees, following the cursor across pages."""
    events: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        page = get(
            server,
            token,
            "/v1/events",
            limit=100,
            **params,
            **({"cursor": cursor} if cursor else {}),
        )
        assert page.status_code == 200, page.text
        body = page.json()
        events.extend(body["events"])
        if not body["has_more"]:
            return events
        cursor = body["next_cursor"]
    raise AssertionError("more than 100 pages")


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value: keys and leaves."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def test_demo_once_exits_zero(demo: Demo) -> None:
    """`tidings demo --once` finishes by itself with exit code 0 and no error output."""
    assert demo.returncode == 0, demo.stderr
    assert "Traceback" not in demo.stderr


def test_demo_reports_62_emitted_events(demo: Demo) -> None:
    """The report says 62 events, and its per-group counts add up to 62."""
    assert "Emitted 62 events" in demo.stdout
    assert set(demo.counts) == set(LABELS.values())
    assert sum(demo.counts.values()) == 62


def test_demo_prints_its_database_and_tokens(demo: Demo) -> None:
    """The report names an existing database file, an owner and a payments-viewer token."""
    assert demo.database is not None
    assert demo.database.is_file()
    assert demo.owner.startswith("tdg_")
    assert demo.payments_viewer.startswith("tdg_")
    assert demo.owner != demo.payments_viewer


def test_demo_group_tree_is_a_root_two_teams_and_a_cluster(demo: Demo) -> None:
    """platform and payments are children of the root; the cluster is a child of platform."""
    root = demo.groups["root"]
    assert re.fullmatch(UID, root)
    assert re.fullmatch(rf"{root}/[0-9a-f]{{16}}", demo.groups["platform"])
    assert re.fullmatch(rf"{root}/[0-9a-f]{{16}}", demo.groups["payments"])
    assert re.fullmatch(rf"{demo.groups['platform']}/[0-9a-f]{{16}}", demo.groups["cluster"])


def test_demo_events_are_stored_and_queryable(demo: Demo, server: Server) -> None:
    """The owner token lists 62 stored events, as many per group as the report says."""
    events = every_event(server, demo.owner)
    assert len(events) == 62
    by_group = Counter(event["group"] for event in events)
    assert by_group == Counter({demo.groups[name]: n for name, n in demo.counts.items() if n})


def test_demo_events_cover_every_builtin_type(demo: Demo, server: Server) -> None:
    """The 62 examples span all 46 built-in types."""
    types = {event["type"] for event in every_event(server, demo.owner)}
    assert types == set(builtin_types())


def test_demo_event_can_be_got_by_id(demo: Demo, server: Server) -> None:
    """An event from the list is the same when got by its id."""
    listed = every_event(server, demo.owner)[-1]
    response = get(server, demo.owner, f"/v1/events/{listed['id']}")
    assert response.status_code == 200
    assert response.json() == listed


def test_payments_viewer_sees_only_the_payments_subtree(demo: Demo, server: Server) -> None:
    """The payments-viewer token lists exactly the events of the payments group."""
    payments = demo.groups["payments"]
    seen = every_event(server, demo.payments_viewer)
    assert len(seen) == demo.counts["payments"] > 0
    assert all(
        event["group"] == payments or event["group"].startswith(payments + "/") for event in seen
    )


def test_payments_viewer_cannot_reach_other_groups(demo: Demo, server: Server) -> None:
    """Listing the platform team or getting a root event is refused to the payments viewer."""
    listing = get(server, demo.payments_viewer, "/v1/events", group=demo.groups["platform"])
    assert listing.status_code == 403
    outside = next(
        event for event in every_event(server, demo.owner) if event["group"] == demo.groups["root"]
    )
    assert get(server, demo.payments_viewer, f"/v1/events/{outside['id']}").status_code == 404


def test_payments_viewer_may_not_emit(demo: Demo, server: Server) -> None:
    """A viewer token is refused ingest."""
    response = httpx.post(
        f"{server.url}/v1/events",
        json={
            "specversion": "1.0",
            "source": "s",
            "type": "t",
            "group": demo.groups["payments"],
            "data": {"actor": {"subject": "u"}, "body": {}},
        },
        headers={"authorization": f"Bearer {demo.payments_viewer}"},
        timeout=TIMEOUT,
        trust_env=False,
    )
    assert response.status_code == 403


def test_demo_groups_subjects_and_actors_are_real_identifiers(demo: Demo, server: Server) -> None:
    """Each event's group is a demo group, its subject a UIDP under it, its actor a UID."""
    for event in every_event(server, demo.owner):
        assert event["group"] in demo.groups.values()
        assert UIDP.fullmatch(event["subject"]), event["subject"]
        assert event["subject"].startswith(event["group"] + "/")
        assert re.fullmatch(UID, event["data"]["actor"]["subject"])


def test_demo_events_keep_no_placeholder_texts(demo: Demo, server: Server) -> None:
    """No stored event still holds a placeholder of the documents ('UID of parent group', ...)."""
    leftovers = {
        (event["type"], text)
        for event in every_event(server, demo.owner)
        for text in strings(event)
        if PLACEHOLDER.search(text)
    }
    assert leftovers == set()


def test_a_served_demo_removes_its_database_when_interrupted(tmp_path: Path) -> None:
    """Served (no --once), the demo stops on SIGTERM (as on Ctrl-C) and removes its database."""
    env = tidings_env() | {"TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(
        [TIDINGS, "demo", "--port", str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        stdout, stderr = process.stdout, process.stderr
        assert stdout is not None
        assert stderr is not None
        reader = threading.Thread(target=lambda: [lines.put(line) for line in stdout])
        reader.start()
        try:
            deadline = time.monotonic() + TIMEOUT
            while "Serving until you press Ctrl-C" not in lines.get(
                timeout=max(deadline - time.monotonic(), 0.1)
            ):
                pass
            assert process.poll() is None
            assert [path.name[:13] for path in tmp_path.iterdir()] == ["tidings-demo-"]
            process.send_signal(signal.SIGTERM)
            process.wait(TIMEOUT)
        finally:
            process.kill()
            reader.join(TIMEOUT)
        errors = stderr.read()
    rest = "".join(lines.queue)
    assert process.returncode == 0, errors
    assert "Stopped; the demo's database" in rest
    assert "is removed" in rest
    assert list(tmp_path.iterdir()) == []


def test_a_demo_on_a_taken_port_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    """A port in use is a one-line error naming --port, exit code 1, and no database made."""
    with taken_port() as port:
        result = subprocess.run(
            [TIDINGS, "demo", "--port", str(port)],
            env=tidings_env() | {"TMPDIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: port {port} is taken")
    assert "choose another with --port" in result.stderr
    assert result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []

"""`tidings demo`: the service on a temporary database, filled with the Chainguard examples.

Every example event of the Chainguard documents is emitted through the API, with
real UIDPs in place of the documents' placeholder texts, across a small group
tree; then the demo shows what it did and how to query it.
"""

from __future__ import annotations

import contextlib
import copy
import random
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tidings import groups
from tidings.api import create_app
from tidings.catalog import chainguard_examples
from tidings.client import Client
from tidings.config import Settings
from tidings.server import uvicorn_config
from tidings.timestamps import from_ns

_PLACEHOLDER = re.compile(r"UIDP|\bUID\b|identifier|exact UIDP")


class _Tree:
    """The demo's tenant: a root with two teams and a cluster below one of them."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.root = groups.new_root()
        self.platform = groups.new_child(self.root)
        self.payments = groups.new_child(self.root)
        self.cluster = groups.new_child(self.platform)
        self.actors = [groups.new_root() for _ in range(3)]

    @property
    def all(self) -> list[str]:
        return [self.root, self.platform, self.payments, self.cluster]

    def uidp_under(self, group: str) -> str:
        return f"{group}/{self.rng.randbytes(8).hex()}"


def _realistic(example: dict[str, Any], tree: _Tree, index: int, now_ns: int) -> dict[str, Any]:
    """The example as an event, its placeholder texts replaced by real identifiers."""
    group = tree.rng.choice(tree.all)
    data = copy.deepcopy(example["data"])
    data["actor"]["subject"] = tree.rng.choice(tree.actors)

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        if isinstance(value, str) and _PLACEHOLDER.search(value):
            return tree.uidp_under(group)
        return value

    data["body"] = fill(data["body"])
    source = example["ce_source"].replace("namespace-UID", tree.rng.randbytes(8).hex())
    source = source.replace("cluster-id", tree.rng.randbytes(8).hex())
    return {
        "specversion": "1.0",
        "type": example["ce_type"],
        "source": source,
        "subject": tree.uidp_under(group),
        "time": from_ns(
            now_ns - (62 - index) * 7_000_000_000 + tree.rng.randrange(10**9), 9
        ).render(),
        "group": group,
        "data": data,
    }


class DemoNotStarted(Exception):
    """The demo's service did not start (most often: its port is taken)."""


def _start(settings: Settings, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn_config(create_app(settings), "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise DemoNotStarted(
                f"the demo service did not start on port {port}; if it is taken, choose"
                " another with --port"
            )
        time.sleep(0.05)
    return server, thread


def _bootstrap(database: Path, tree: _Tree) -> dict[str, str]:
    """Create the demo's groups and tokens straight in the database."""
    import asyncio

    from tidings.model import Group
    from tidings.storage.sqlite import SQLiteStorage
    from tidings.tokens import new_token

    async def work() -> dict[str, str]:
        storage = SQLiteStorage(str(database))
        await storage.open()
        try:
            now = time.time_ns()
            names = {
                tree.root: "acme",
                tree.platform: "platform",
                tree.payments: "payments",
                tree.cluster: "prod-cluster",
            }
            for path, name in names.items():
                await storage.create_group(Group(path=path, name=name, created_ns=now))
            made = {}
            for label, group, roles in (
                ("owner", tree.root, ["owner"]),
                ("producer", tree.root, ["producer"]),
                ("payments-viewer", tree.payments, ["viewer"]),
            ):
                token, secret = new_token(group, roles, label, None, None, now)
                await storage.create_token(token)
                made[label] = secret
            return made
        finally:
            await storage.close()

    return asyncio.run(work())


def run_demo(port: int, once: bool, console: Console, seed: int = 7) -> dict[str, Any]:
    """Run the demo; serve until interrupted unless `once`. Returns what it made.

    Served, the demo stops on Ctrl-C or SIGTERM (at any point) and removes its database; with
    `once` the database is left for the caller to query (and remove)."""
    _check_port_free(port)
    workdir = Path(tempfile.mkdtemp(prefix="tidings-demo-"))
    previous = None if once else signal.signal(signal.SIGTERM, signal.default_int_handler)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    kept = False
    try:
        database = workdir / "tidings.db"
        tree = _Tree(random.Random(seed))
        made_tokens = _bootstrap(database, tree)
        server, thread = _start(Settings(database_url=f"sqlite:///{database}"), port)
        result = _fill(console, f"http://127.0.0.1:{port}", tree, made_tokens, database)
        if once:
            kept = True
            return result
        with contextlib.suppress(KeyboardInterrupt):  # from the moment it says so
            console.print("\nServing until you press Ctrl-C.")
            while not server.should_exit:
                time.sleep(0.5)
        return result
    finally:
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(15)
        if not kept and (thread is None or not thread.is_alive()):
            shutil.rmtree(workdir, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if thread is not None and not once:
            state = "kept" if workdir.exists() else "removed"
            console.print(f"Stopped; the demo's database ({workdir}) is {state}.")


def _check_port_free(port: int) -> None:
    """Refuse a port something listens on before making anything (the server checks again)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoNotStarted(
                f"port {port} is taken ({exc.strerror}); choose another with --port"
            ) from None


def _fill(
    console: Console, url: str, tree: _Tree, made_tokens: dict[str, str], database: Path
) -> dict[str, Any]:
    """Emit every Chainguard example through the API, report it, and return what was made."""
    producer = Client(url, made_tokens["producer"])
    now = time.time_ns()
    by_group: Counter[str] = Counter()
    try:
        for index, example in enumerate(chainguard_examples()):
            stored = producer.emit(_realistic(example, tree, index, now))
            by_group[stored["group"]] += 1
    finally:
        producer.close()
    _report(console, url, tree, made_tokens, by_group, database)
    return {
        "url": url,
        "database": str(database),
        "tokens": made_tokens,
        "root": tree.root,
        "payments": tree.payments,
        "emitted": sum(by_group.values()),
    }


def _report(
    console: Console,
    url: str,
    tree: _Tree,
    made_tokens: dict[str, str],
    by_group: Counter[str],
    database: Path,
) -> None:
    console.rule(Text("tidings demo", style="bold"))
    console.print(f"Service: {url}   database: {database}", soft_wrap=True)
    table = Table("group", "role in the demo", "events")
    table.columns[0].overflow = "fold"
    for path, label in (
        (tree.root, "tenant root"),
        (tree.platform, "team 'platform'"),
        (tree.payments, "team 'payments'"),
        (tree.cluster, "cluster under 'platform'"),
    ):
        table.add_row(path, label, str(by_group[path]))
    console.print(table)
    console.print(
        f"Emitted {sum(by_group.values())} events: every example of the Chainguard documents.\n"
    )
    console.print(
        "Try it (in another terminal; `tidings` is .venv/bin/tidings after make):", style="bold"
    )
    commands = [
        f"export TIDINGS_URL={url}",
        f"export TIDINGS_TOKEN={made_tokens['owner']}",
        "tidings events list --type 'dev.chainguard.api.iam.*'",
        f"tidings events list --group {tree.platform} --order desc",
        "tidings events stats --by type --chart",
        f"curl -s -H \"Authorization: Bearer $TIDINGS_TOKEN\" '{url}/v1/events?limit=2'",
        f"TIDINGS_TOKEN={made_tokens['payments-viewer']} tidings events list   "
        "# a viewer of 'payments' sees only its subtree",
    ]
    for command in commands:
        # Whole lines, never wrapped: they are for copying.
        console.print(f"  {command}", highlight=False, soft_wrap=True)

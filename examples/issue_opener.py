"""A tidings receiver that opens an issue when a policy validation degrades.

After Chainguard's `github-issue-opener` sample: on every
`dev.chainguard.policy.validation.changed.v1` event, each policy whose `change` is
`degraded` becomes an issue in an issue tracker with GitHub's REST API
(`POST {TRACKER_URL}/repos/{TRACKER_REPO}/issues`). Standard library only, besides
`tidings.receiver`: a WSGI app (`tidings.receiver.wsgi`), served by `wsgiref` here or by
any WSGI server (gunicorn, uWSGI, ...) in production.

    TIDINGS_ISSUER=https://tidings.example.com \\
    TIDINGS_GROUP=0475f6baca584a8964a6bce6b74dbe78dd8805b6 \\
    TRACKER_REPO=acme/clusters TRACKER_TOKEN=ghp_... \\
    python examples/issue_opener.py --port 8001

Deliveries come at least once: the same event can arrive twice (a retry, or two
subscriptions that both match), so events are deduplicated on `(Ce-Source, Ce-Id)`, in
memory here (use your database in production). A tracker failure answers 502, and tidings
retries the delivery later.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tidings.receiver import Event, Verifier
from tidings.receiver.wsgi import WSGIReceiver

POLICY_CHANGED = "dev.chainguard.policy.validation.changed.v1"
DEGRADED = "degraded"


def degraded_policies(event: Event) -> list[tuple[str, dict[str, Any]]]:
    """The policies of a validation change whose result degraded, by name."""
    if event.type != POLICY_CHANGED:
        return []
    policies = event.body.get("policies")
    if not isinstance(policies, dict):
        return []
    return [
        (name, result)
        for name, result in sorted(policies.items())
        if isinstance(result, dict) and result.get("change") == DEGRADED
    ]


def issue_for(event: Event, policy: str, result: dict[str, Any]) -> dict[str, Any]:
    """The issue to open for one degraded policy."""
    image, cluster = event.body.get("image_id", "?"), event.body.get("cluster_id", "?")
    lines = [
        f"Policy `{policy}` no longer passes for image `{image}` in cluster `{cluster}`.",
        "",
        f"- last checked: {result.get('last_checked', '?')}",
        f"- valid: {result.get('valid', '?')}",
        f"- event: `{event.id}` from `{event.source}` at {event.time or '?'}",
    ]
    if result.get("diagnostic"):
        lines += ["", "```", str(result["diagnostic"]), "```"]
    return {
        "title": f"Policy {policy} degraded for {image}",
        "body": "\n".join(lines),
        "labels": ["policy-violation"],
    }


class IssueOpener:
    """Opens the issues of each new event; remembers the events it has handled."""

    def __init__(self, tracker_url: str, repo: str, token: str, remember: int = 10_000) -> None:
        self.issues_url = f"{tracker_url.rstrip('/')}/repos/{repo}/issues"
        self.token = token
        self.remember = remember
        self.handled: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> int:
        key = (event.source, event.id)
        with self.lock:  # one event at a time: a duplicate arriving meanwhile waits, then skips
            if key in self.handled:
                return 200
            for policy, result in degraded_policies(event):
                if not self.open_issue(issue_for(event, policy, result)):
                    return 502
            self.handled[key] = None
            while len(self.handled) > self.remember:
                self.handled.popitem(last=False)
        return 200

    def open_issue(self, issue: dict[str, Any]) -> bool:
        """POST the issue to the tracker; whether it was created."""
        request = urllib.request.Request(  # noqa: S310 (the operator's tracker URL)
            self.issues_url,
            data=json.dumps(issue).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/vnd.github+json",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                status: int = answer.status
                return 200 <= status < 300
        except (urllib.error.URLError, OSError) as exc:
            print(f"cannot open the issue: {exc}", file=sys.stderr, flush=True)
            return False


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, a thread per request."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """No access log."""

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""


def main() -> None:
    """Read the settings from the environment and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8001")))
    args = parser.parse_args()
    try:
        issuer, groups = os.environ["TIDINGS_ISSUER"], os.environ["TIDINGS_GROUP"].split(",")
        repo, token = os.environ["TRACKER_REPO"], os.environ["TRACKER_TOKEN"]
    except KeyError as missing:
        sys.exit(f"set {missing.args[0]} (see the docstring)")
    tracker = os.environ.get("TRACKER_URL", "https://api.github.com")
    app = WSGIReceiver(Verifier(issuer, groups), IssueOpener(tracker, repo, token))
    with make_server(
        args.host, args.port, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    ) as server:
        print(
            f"issue opener on http://{args.host}:{server.server_port}/", file=sys.stderr, flush=True
        )
        server.serve_forever()


if __name__ == "__main__":
    main()

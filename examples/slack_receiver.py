"""A tidings receiver that posts a Slack message for every event it receives.

After Chainguard's `slack-webhook` sample: verify the delivery's OIDC token, then tell a
Slack channel what happened. Built on Starlette with `tidings.receiver.starlette`; the key
fetches run off the event loop.

    TIDINGS_ISSUER=https://tidings.example.com \\
    TIDINGS_GROUP=0475f6baca584a8964a6bce6b74dbe78dd8805b6 \\
    SLACK_WEBHOOK_URL=https://hooks.slack.com/services/T000/B000/XXXX \\
    python examples/slack_receiver.py --port 8000

then subscribe it: `tidings subscriptions create --parent "$TIDINGS_GROUP" https://<host>/`.
`TIDINGS_GROUP` may list several groups, separated by commas. A Slack failure answers 502,
so tidings retries the delivery later.

(tidings can also post to Slack itself: a subscription of kind `slack`. This example shows
how to do it, or anything else, in your own code.)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.receiver import Event, Verifier
from tidings.receiver.starlette import receiver_endpoint


def slack_message(event: Event) -> dict[str, Any]:
    """A Slack incoming-webhook message: what happened, to what, by whom, and the body's fields."""
    summary = f"{event.type} by {event.actor.subject}"
    if event.subject:
        summary += f" on {event.subject}"
    facts = [("Type", event.type), ("Group", event.group), ("Actor", event.actor.subject)]
    if event.time:
        facts.append(("Time", event.time))
    facts += [
        (key, str(value))
        for key, value in sorted(event.body.items())
        if isinstance(value, str | int | float | bool)
    ]
    return {
        "text": summary,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{summary}*"}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{value[:300]}"}
                    for name, value in facts[:10]
                ],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"{event.source} · {event.id}"}],
            },
        ],
    }


def create_app(verifier: Verifier, slack_url: str) -> Starlette:
    """The receiver: every verified event becomes a Slack message."""
    client = httpx.AsyncClient(timeout=10.0)

    async def post_to_slack(event: Event) -> Response:
        try:
            answer = await client.post(slack_url, json=slack_message(event))
        except httpx.HTTPError as exc:
            return JSONResponse({"error": f"Slack is unreachable: {exc}"}, status_code=502)
        if answer.status_code >= 300:
            return JSONResponse({"error": f"Slack answered {answer.status_code}"}, status_code=502)
        return Response(status_code=204)

    endpoint = receiver_endpoint(verifier, post_to_slack)
    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["POST"])])


def main() -> None:
    """Read the settings from the environment and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    try:
        issuer, groups = os.environ["TIDINGS_ISSUER"], os.environ["TIDINGS_GROUP"].split(",")
        slack_url = os.environ["SLACK_WEBHOOK_URL"]
    except KeyError as missing:
        sys.exit(f"set {missing.args[0]} (see the docstring)")
    app = create_app(Verifier(issuer, groups), slack_url)
    print(f"slack receiver on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

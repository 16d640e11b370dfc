"""`tidings listen`: a local receiver for developers, like `stripe listen`.

It serves a port, verifies every delivery with `tidings.receiver` (the issuer's
token, for the given groups), prints each verified event (readably, or as JSON
lines with `--json`) and can forward it, headers and body unchanged, to another
local URL (`--forward`). Refused requests are answered with their status
(401/403/...) and reported on stderr; they are never forwarded.

    tidings listen --group "$GROUP" --forward http://127.0.0.1:3000/hook

Point a subscription at it (`tidings subscriptions create --parent "$GROUP"
http://127.0.0.1:4242/`), with `TIDINGS_ALLOW_PRIVATE_SINKS=true` on the server.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.json import JSON
from rich.markup import escape
from rich.text import Text

from tidings.receiver import Event, VerificationError, Verifier

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["DEFAULT_PORT", "listen_app", "listen_command", "listener"]

DEFAULT_PORT = 4242
DEFAULT_ISSUER = "http://127.0.0.1:8080"
# Not passed on when forwarding: hop-by-hop headers, and what httpx sets itself.
_NOT_FORWARDED = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "accept-encoding",
    }
)


class Printer:
    """Shows verified events on stdout and everything else on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def event(self, event: Event) -> None:
        """One verified event."""
        if self.as_json:
            print(json.dumps(event.to_cloudevent(), separators=(",", ":")), flush=True)
            return
        self.out.print(
            f"[bold green]✓[/bold green] {escape(event.time or '-')}  [bold]{escape(event.type)}[/bold]"
            f"  {escape(event.id)}"
        )
        details = [f"group {event.group}", f"actor {event.actor.subject}"]
        if event.subject:
            details.insert(1, f"subject {event.subject}")
        self.out.print("  " + escape("  ·  ".join(details)), style="dim")
        body = JSON(json.dumps(event.body), indent=2).text
        self.out.print(Text("\n").join(Text("  ") + line for line in body.split("\n")))

    def refused(self, error: VerificationError, client: str) -> None:
        """A request that did not verify."""
        self.err.print(
            f"[bold red]✗[/bold red] {error.status} {error.code} from {escape(client)}: "
            f"{escape(error.message)}"
        )

    def forwarded(self, url: str, status: int | None, problem: str | None = None) -> None:
        """What the forward target answered."""
        outcome = f"{status}" if status is not None else f"failed: {problem}"
        self.err.print(f"  → forwarded to {escape(url)}: {escape(outcome)}", style="dim")


def listener(verifier: Verifier, printer: Printer, forward: str | None) -> Starlette:
    """The ASGI app of `tidings listen`."""
    # Imported here, not when the `tidings` command starts.
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from tidings.receiver.starlette import error_response, verify_request

    client = httpx.AsyncClient(timeout=15.0, trust_env=False, follow_redirects=False)

    async def receive(request: Request) -> Response:
        if request.method != "POST":
            return JSONResponse(
                {
                    "listening": True,
                    "issuer": verifier.issuer,
                    "groups": sorted(verifier.groups),
                }
            )
        try:
            event = await verify_request(verifier, request)
        except VerificationError as exc:
            printer.refused(exc, request.client.host if request.client else "-")
            return error_response(exc)
        printer.event(event)
        if forward is None:
            return Response(status_code=204)
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in _NOT_FORWARDED
        }
        try:
            answer = await client.post(forward, headers=headers, content=event.raw_body)
        except httpx.HTTPError as exc:
            printer.forwarded(forward, None, str(exc) or type(exc).__name__)
            return JSONResponse(
                {"error": {"code": "forward_failed", "message": str(exc)}}, status_code=502
            )
        printer.forwarded(forward, answer.status_code)
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with client:
            yield

    methods = ["GET", "POST", "HEAD"]
    return Starlette(
        routes=[
            Route("/", receive, methods=methods),
            Route("/{path:path}", receive, methods=methods),
        ],
        lifespan=lifespan,
    )


def listen_command(
    group: Annotated[
        list[str],
        typer.Option(
            "--group",
            help="Accept deliveries to this group (the subscription's parent); repeatable.",
        ),
    ],
    issuer: Annotated[
        str,
        typer.Option(
            envvar=["TIDINGS_ISSUER", "TIDINGS_URL"],
            help="The issuer URL tokens must come from: the server's own URL unless it sets"
            " TIDINGS_ISSUER.",
        ),
    ] = DEFAULT_ISSUER,
    port: Annotated[
        int, typer.Option(help="Port to listen on (0: any free port).", min=0, max=65535)
    ] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    forward: Annotated[
        str | None,
        typer.Option(
            "--forward",
            "--forward-to",
            help="Forward each verified delivery, unchanged, to this URL.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print events as JSON lines (CloudEvents JSON).")
    ] = False,
    audience: Annotated[str, typer.Option(help="The token audience to expect.")] = "customer",
    signing_secret: Annotated[
        str | None,
        typer.Option(
            envvar="TIDINGS_SIGNING_SECRET",
            help="Also require the subscription's Standard Webhooks signature (whsec_...).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Receive deliveries locally: verify each one, print it, and optionally forward it."""
    printer = Printer(as_json)
    try:
        verifier = Verifier(issuer, group, audience=audience, signing_secret=signing_secret)
    except ValueError as exc:
        printer.err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until the server accepts them
    except OSError as exc:
        sock.close()
        printer.err.print(f"[red]error:[/red] cannot listen on {host}:{port}: {exc}")
        raise typer.Exit(1) from exc
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    groups = ", ".join(sorted(verifier.groups))
    printer.err.print(
        f"Ready: listening on http://{shown}:{bound}/ for deliveries from {escape(issuer)} "
        f"to {escape(groups)}"
        + (f", forwarding to {escape(forward)}" if forward else "")
        + ". Press Ctrl+C to stop."
    )
    app = listener(verifier, printer, forward)
    import uvicorn

    config = uvicorn.Config(
        app, log_config=None, log_level="warning", access_log=False, server_header=False
    )
    uvicorn.Server(config).run(sockets=[sock])


listen_app = typer.Typer(add_completion=False)
listen_app.command()(listen_command)


def main(argv: Any = None) -> None:
    """Run `tidings listen` on its own (`python -m tidings.listen_cli`)."""
    listen_app(argv)


if __name__ == "__main__":  # pragma: no cover
    main()

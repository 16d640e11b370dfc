"""A small client of the tidings HTTP API, used by the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from tidings import __version__


class ApiError(Exception):
    """The API answered with an error."""

    def __init__(self, status: int, code: str, message: str, details: list[Any]):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


def _error_of(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's `{"code", "message", "details"}` if it is tidings' error format."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(error, dict) or "code" not in error or "message" not in error:
        return None
    details = error.get("details")
    return {**error, "details": details if isinstance(details, list) else []}


def _gist(response: httpx.Response) -> str:
    """A short, one-line gist of an answer's body (an HTML error page, say)."""
    text = " ".join(response.text.split()) or "(no body)"
    if len(text) > 200:
        text = text[:200] + "…"
    if response.is_redirect:
        text += f" (redirected to {response.headers['location']})"
    return text


class Client:
    """Calls the API at `url` with a bearer `token`."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0):
        headers = {"user-agent": f"tidings-cli/{__version__}"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, trust_env=False
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded JSON answer or raise ApiError (also for an answer
        no tidings API gives: a redirect, or a body that is not JSON)."""
        response = self._http.request(method, path, **kwargs)
        status = response.status_code
        if not 200 <= status < 300:
            error = _error_of(response)
            if error is None:
                raise ApiError(status, "http_error", _gist(response), [])
            raise ApiError(status, str(error["code"]), str(error["message"]), error["details"])
        if status == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                status,
                "not_json",
                f"the answer is not JSON, so not the tidings API's: {_gist(response)}",
                [],
            ) from None

    def emit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Ingest one event; return the stored event."""
        result: dict[str, Any] = self.request("POST", "/v1/events", json=event)
        return result

    def list_events(self, params: dict[str, Any]) -> dict[str, Any]:
        """One page of events."""
        result: dict[str, Any] = self.request("GET", "/v1/events", params=params)
        return result

    def pages(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every page from the first, following next_cursor while has_more."""
        params = dict(params)
        while True:
            page = self.list_events(params)
            yield page
            if not page["has_more"]:
                return
            params["cursor"] = page["next_cursor"]

    def get_event(self, event_id: str, source: str | None = None) -> dict[str, Any]:
        """One event by id."""
        params = {"source": source} if source else {}
        result: dict[str, Any] = self.request(
            "GET", f"/v1/events/{quote(event_id, safe='')}", params=params
        )
        return result

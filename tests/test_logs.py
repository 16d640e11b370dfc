"""Logging: an error's traceback is in the line, in both formats, from tidings' own loggers and
from the standard library's (uvicorn's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_LOG_TWO_ERRORS = """
import logging, structlog
from tidings.logs import configure
configure({log_format!r})
try:
    {{}}["missing-key"]
except KeyError:
    structlog.get_logger("tidings.api").exception("unhandled error", path="/v1/x")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
"""


def _stderr(log_format: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _LOG_TWO_ERRORS.format(log_format=log_format)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr


def test_json_lines_carry_the_traceback() -> None:
    own, foreign = (json.loads(line) for line in _stderr("json").splitlines())
    assert own["event"] == "unhandled error"
    assert own["path"] == "/v1/x"
    assert own["exception"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing-key'" in own["exception"]
    assert "exc_info" not in own
    assert foreign["logger"] == "uvicorn.error"
    assert "ZeroDivisionError: division by zero" in foreign["exception"]


@pytest.mark.parametrize("error", ["KeyError: 'missing-key'", "ZeroDivisionError"])
def test_console_lines_carry_the_traceback(error: str) -> None:
    output = _stderr("console")
    assert error in output
    assert output.count("Traceback (most recent call last):") == 2

"""The HTTP API (v1)."""

from tidings.api.app import create_app

__all__ = ["create_app"]

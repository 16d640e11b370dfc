"""Settings, read once from `TIDINGS_*` environment variables at the edge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from tidings.catalog import CatalogFile, load_catalog_file
from tidings.delivery.schedule import Schedule, parse_schedule

DEFAULT_DATABASE_URL = "sqlite:///tidings.db"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything tidings can be told; the comment names each field's variable."""

    database_url: str = DEFAULT_DATABASE_URL  # TIDINGS_DATABASE_URL
    sqlite_synchronous: str = "FULL"  # TIDINGS_SQLITE_SYNCHRONOUS: FULL or NORMAL
    pool_min: int = 2  # TIDINGS_DB_POOL_MIN: PostgreSQL connections kept open per process
    pool_max: int = 16  # TIDINGS_DB_POOL_MAX: PostgreSQL connections at most per process
    max_event_bytes: int = 1 << 20  # a single event
    max_batch_bytes: int = 16 << 20  # a batch request
    max_batch_events: int = 1000
    public_url: str = (
        "http://127.0.0.1:8080"  # the server's own base URL (from serve's --host/--port)
    )
    issuer: str | None = None  # TIDINGS_ISSUER: the public issuer URL of delivery tokens
    key_encryption_key: bytes | None = field(
        default=None, repr=False
    )  # TIDINGS_KEY_ENCRYPTION_KEY (Fernet)
    key_rotation_delay_s: int = 900  # TIDINGS_KEY_ROTATION_DELAY
    allow_private_sinks: bool = False  # TIDINGS_ALLOW_PRIVATE_SINKS
    run_worker: bool = True  # `serve --no-worker` turns it off
    retry_schedule: Schedule = field(
        default_factory=Schedule
    )  # TIDINGS_RETRY_SCHEDULE, e.g. 0,5s,5m
    delivery_lease_s: float = 60.0  # TIDINGS_DELIVERY_LEASE
    delivery_concurrency: int = 128  # TIDINGS_DELIVERY_CONCURRENCY
    delivery_per_sink: int = 16  # TIDINGS_DELIVERY_PER_SINK
    delivery_connect_timeout_s: float = 5.0  # TIDINGS_DELIVERY_CONNECT_TIMEOUT
    delivery_timeout_s: float = 15.0  # TIDINGS_DELIVERY_TIMEOUT
    delivery_poll_s: float = 1.0  # TIDINGS_DELIVERY_POLL
    retention_days: float = 90.0  # TIDINGS_RETENTION_DAYS
    maintenance_interval_s: float = 3600.0  # TIDINGS_MAINTENANCE_INTERVAL: how often retention runs
    housekeeping: bool = True  # `serve` runs retention; `tidings worker` does not
    catalog_file: CatalogFile | None = None  # TIDINGS_CATALOG: a YAML or JSON file of event types

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read the settings from the environment (or a given mapping); `overrides` win."""
        env = os.environ if env is None else env
        synchronous = env.get("TIDINGS_SQLITE_SYNCHRONOUS", "FULL").upper()
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("TIDINGS_SQLITE_SYNCHRONOUS must be FULL, NORMAL or EXTRA")
        values: dict[str, object] = {
            "database_url": env.get("TIDINGS_DATABASE_URL") or DEFAULT_DATABASE_URL,
            "sqlite_synchronous": synchronous,
            "issuer": env.get("TIDINGS_ISSUER") or None,
            "key_encryption_key": (env.get("TIDINGS_KEY_ENCRYPTION_KEY") or "").encode() or None,
            "allow_private_sinks": _flag(env, "TIDINGS_ALLOW_PRIVATE_SINKS"),
        }
        numbers = {
            "key_rotation_delay_s": ("TIDINGS_KEY_ROTATION_DELAY", int),
            "pool_min": ("TIDINGS_DB_POOL_MIN", int),
            "pool_max": ("TIDINGS_DB_POOL_MAX", int),
            "delivery_lease_s": ("TIDINGS_DELIVERY_LEASE", float),
            "delivery_concurrency": ("TIDINGS_DELIVERY_CONCURRENCY", int),
            "delivery_per_sink": ("TIDINGS_DELIVERY_PER_SINK", int),
            "delivery_connect_timeout_s": ("TIDINGS_DELIVERY_CONNECT_TIMEOUT", float),
            "delivery_timeout_s": ("TIDINGS_DELIVERY_TIMEOUT", float),
            "delivery_poll_s": ("TIDINGS_DELIVERY_POLL", float),
            "retention_days": ("TIDINGS_RETENTION_DAYS", float),
            "maintenance_interval_s": ("TIDINGS_MAINTENANCE_INTERVAL", float),
        }
        for name, (variable, kind) in numbers.items():
            if env.get(variable):
                try:
                    number = kind(env[variable])
                except ValueError as exc:
                    raise ValueError(f"{variable} must be a number, got {env[variable]!r}") from exc
                if number <= 0:
                    raise ValueError(f"{variable} must be positive, got {env[variable]!r}")
                values[name] = number
        if env.get("TIDINGS_CATALOG"):
            values["catalog_file"] = load_catalog_file(env["TIDINGS_CATALOG"])
        if env.get("TIDINGS_RETRY_SCHEDULE"):
            values["retry_schedule"] = parse_schedule(env["TIDINGS_RETRY_SCHEDULE"])
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")

"""Schema migrations: numbered `.sql` files per backend, applied in order, once."""

from __future__ import annotations

from importlib import resources


def migration_files(backend: str) -> list[tuple[str, str]]:
    """`(name, sql)` of every migration of `backend`, in order."""
    folder = resources.files("tidings.storage.sql").joinpath(backend)
    return sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )

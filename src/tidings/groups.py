"""Groups: the nodes of a tenant tree, named by slash-separated paths.

tidings mints groups as UIDPs (Chainguard's "UID path"): a root is a UID of 20
random bytes in lowercase hex, a child appends `/` and an SUID of 8 random bytes.
Any path of lowercase segments is accepted, so a platform can use its own ids.

A group sees itself and its descendants. Subtree tests compare whole segments:
`a/b` contains `a/b/c` but neither `a/bc` nor `a`.
"""

from __future__ import annotations

import functools
import re
import secrets

from tidings.errors import BadRequest

MAX_DEPTH = 16
_SEGMENT = r"[a-z0-9][a-z0-9_-]{0,63}"
_GROUP = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,{MAX_DEPTH - 1}}}")
_SEGMENT_RE = re.compile(_SEGMENT)


def is_group(path: str) -> bool:
    """Whether `path` is a well-formed group path."""
    return _GROUP.fullmatch(path) is not None


def parse_group(path: object, what: str = "group") -> str:
    """Return `path` if it is a well-formed group path, else raise BadRequest."""
    if not isinstance(path, str) or not is_group(path):
        raise BadRequest(
            f"{what} must be a path of 1 to {MAX_DEPTH} lowercase segments "
            f"matching [a-z0-9][a-z0-9_-]{{0,63}} separated by '/', got {path!r}"
        )
    return path


def is_segment(name: str) -> bool:
    """Whether `name` is a single well-formed path segment."""
    return _SEGMENT_RE.fullmatch(name) is not None


def new_root() -> str:
    """Mint a root group: a UID of 20 random bytes as 40 hex characters."""
    return secrets.token_hex(20)


def new_child(parent: str) -> str:
    """Mint a child of `parent`: the parent, `/`, and an SUID of 8 random bytes."""
    child = f"{parent}/{secrets.token_hex(8)}"
    if depth(child) > MAX_DEPTH:
        raise BadRequest(f"groups may be at most {MAX_DEPTH} deep; {parent!r} has no room below")
    return child


def depth(path: str) -> int:
    """The number of segments in `path`."""
    return path.count("/") + 1


def root_of(path: str) -> str:
    """The tenant (root group) that `path` belongs to."""
    return path.split("/", 1)[0]


def contains(ancestor: str, path: str) -> bool:
    """Whether `path` is `ancestor` or lies below it."""
    return path == ancestor or path.startswith(ancestor + "/")


@functools.lru_cache(maxsize=65_536)
def ancestors(path: str) -> tuple[str, ...]:
    """`path` and every group above it, from the root down (remembered: every event asks)."""
    parts = path.split("/")
    return tuple("/".join(parts[: i + 1]) for i in range(len(parts)))


def subtree_bounds(path: str) -> tuple[str, str]:
    """The half-open range `[low, high)` of the paths strictly below `path`.

    `'/'` sorts just before `'0'`, so every descendant `path + '/...'` lies in
    `[path + '/', path + '0')` and no sibling such as `path + '_x'` does.
    """
    return path + "/", path + "0"

"""What the backends index for each event: the groups that see it and the text that finds it."""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable
from typing import Any

from tidings import groups
from tidings.model import EventInput

# What both backends index and search as words: runs of letters and digits.
WORD = re.compile(r"\w+")
# The same words of ASCII text, found by bytes.translate (four times as fast as the regex):
# every byte that is not a word character becomes a space.
_ASCII_WORD_BYTES = frozenset((string.ascii_letters + string.digits + "_").encode())
_ASCII_SPACES = bytes(byte if byte in _ASCII_WORD_BYTES else 32 for byte in range(256))


def visible_scopes(event: EventInput) -> tuple[str, ...]:
    """The groups below the root that see the event: its own ancestors and the allowed groups'."""
    if event.allowed_groups:
        return tuple(scopes_of(event.group, event.allowed_groups))
    return _own_scopes(event.group)


@functools.lru_cache(maxsize=65_536)  # as many groups as groups.ancestors remembers
def _own_scopes(group: str) -> tuple[str, ...]:
    return tuple(scopes_of(group, ()))


def scopes_of(group: str, allowed_groups: Iterable[str]) -> list[str]:
    """The groups below the root that see an event of `group` shared with `allowed_groups`."""
    scopes = set(groups.ancestors(group)[1:])
    for allowed in allowed_groups:
        scopes.update(groups.ancestors(allowed)[1:])
    return sorted(scopes)


def _strings(value: Any) -> list[str]:
    """The strings and numbers in a JSON value, depth first, as text (a loop: nested generators
    cost twice as much)."""
    found: list[str] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(reversed(item.values()))
        elif isinstance(item, list):
            pending.extend(reversed(item))
        elif isinstance(item, str):
            found.append(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            found.append(str(item))
    return found


def searchable_text(event: EventInput, distinct: bool = False) -> str:
    """What `q` searches in `event`: type, subject, actor, description and the body's values
    (each word once if `distinct`)."""
    return search_text(
        event.type,
        event.subject,
        event.actor,
        event.extensions.get("description"),
        event.data.get("body", {}),
        distinct,
    )


def search_text(
    type_: str,
    subject: str | None,
    actor: str | None,
    description: object,
    body: object,
    distinct: bool = False,
) -> str:
    """The words `q` searches, from an event's type, subject, actor, description and body."""
    parts = [type_, subject or "", actor or "", "" if description is None else str(description)]
    parts.extend(_strings(body))
    return words(" ".join(parts), distinct)


# The most an event's search text holds, in UTF-8 bytes; the words past it are not searched.
# PostgreSQL's tsvector of a text is at most 1 MiB and takes up to 3.3 times the text's bytes
# (distinct words of two or three characters, each with its position): 256 KiB stays below,
# so that an event of many distinct words is stored by both backends alike.
SEARCH_TEXT_LIMIT = 256 * 1024


def words(text: str, distinct: bool = False) -> str:
    """The words of `text` (runs of WORD), one space apart; each once, in their first order,
    if `distinct`; the first SEARCH_TEXT_LIMIT bytes of them, cut between two words. A search
    matches words (an `&` of prefixes, never a phrase), so an index need not hold repeats (a
    group's path and a time often recur in an event's body)."""
    if text.isascii():
        found: list[bytes] = text.encode().translate(_ASCII_SPACES).split()
        joined = b" ".join(dict.fromkeys(found) if distinct else found)
    else:
        matched: list[str] = WORD.findall(text)
        joined = " ".join(dict.fromkeys(matched) if distinct else matched).encode()
    if len(joined) > SEARCH_TEXT_LIMIT:  # a space is one byte: the cut falls between words
        head, space, _ = joined[: SEARCH_TEXT_LIMIT + 1].rpartition(b" ")
        joined = head if space else b""  # one word longer than the limit: none is kept
    return joined.decode()

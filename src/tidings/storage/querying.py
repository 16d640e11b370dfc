"""The SQL of event queries, shared by the backends: filters, visibility, lists, counts and stats.

A backend supplies its dialect: the placeholder, how a scope is selected, how
positions compare, and how text is searched. Everything else is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from tidings import groups
from tidings.model import EventQuery
from tidings.storage.indexing import WORD

EVENT_COLUMNS = "e.id, e.source, e.type, e.group_path, e.attributes, e.data"
GROUP_BY_COLUMNS = {
    "type": "e.type",
    "group": "e.group_path",
    "actor": "e.actor",
    "source": "e.source",
    "subject": "e.subject",
}
INTERVALS = {"hour": 3_600_000_000_000, "day": 86_400_000_000_000}
_MIN_NS = -(2**63)  # the earliest time stored (a bigint of nanoseconds)


_TOP = chr(0x10FFFF)


def prefix_range(prefix: str) -> tuple[str, str]:
    """The half-open string range of everything that starts with `prefix`.

    The bound is the prefix with its last character raised by one code point;
    trailing U+10FFFF have no successor and are dropped first, and the surrogates
    (never in stored text, and not encodable) are stepped over.
    """
    stem = prefix.rstrip(_TOP)
    if not stem:  # nothing follows U+10FFFF...: bound by a text longer than any stored one
        return prefix, _TOP * (len(prefix) + 1025)  # subjects and types are at most 1024 long
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000
    return prefix, stem[:-1] + chr(following)


class EventSQL:
    """Builds the SQL of event queries; subclasses set the dialect."""

    p = "?"
    # What a row of an event holds after its position columns (a backend may read more).
    event_columns = EVENT_COLUMNS

    def position_columns(self, alias: str) -> list[str]:
        """The columns of the ingest order, for a table alias (`e` or `s`)."""
        raise NotImplementedError

    def after(self, columns: list[str], position: int, descending: bool) -> tuple[str, list[Any]]:
        """The condition for rows after (or, descending, before) a position."""
        raise NotImplementedError

    def text_match(self) -> str:
        """A condition on `e` that matches a full-text query given as one parameter."""
        raise NotImplementedError

    def text_query(self, words: list[str]) -> str:
        """The full-text query (the parameter of `text_match`) finding events with every word as a prefix."""
        raise NotImplementedError

    def visible_now(self, alias: str) -> str:
        """A condition keeping only rows every reader can see in order (empty: all committed rows)."""
        return ""

    def scoped(self, scope: str) -> tuple[str, list[Any], list[str]]:
        """FROM and WHERE of the events visible from `scope`, and the order columns."""
        p = self.p
        tenant = groups.root_of(scope)
        if scope == tenant:
            return (
                f"FROM events e WHERE e.tenant = {p}{self.visible_now('e')}",
                [tenant],
                self.position_columns("e"),
            )
        return (
            f"FROM event_scopes s JOIN events e ON {self.scope_join()}"
            f" WHERE {self.scope_is('s')}{self.visible_now('s')}",
            [scope],
            self.position_columns("s"),
        )

    def scope_is(self, alias: str) -> str:
        """The condition that the scope rows `alias` are those of the group given as one parameter."""
        return f"{alias}.scope = {self.p}"

    def scope_join(self) -> str:
        """How a scope row joins its event."""
        raise NotImplementedError

    def in_scope(self, scope: str) -> tuple[str, list[Any]]:
        """A condition that the event `e` is seen from `scope` (below the root), and its parameters."""
        raise NotImplementedError

    # How the events found by id are ordered in SQL (empty: by the caller).
    find_order = ""

    def viewer_may_see(self) -> str:
        """The condition that the viewer, its roles given as one parameter, may see `e`."""
        return f" AND (e.roles_mask = 0 OR (e.roles_mask & {self.p}) != 0)"

    def find_sql(
        self, scope: str, event_id: str, source: str | None, viewer_roles: int, limit: int
    ) -> tuple[str, list[Any]]:
        """The SQL of the events visible from `scope` with a CloudEvents id (and source):
        the position columns, then `event_columns`."""
        p = self.p
        tenant = groups.root_of(scope)
        columns = ", ".join(self.position_columns("e"))
        sql = f"SELECT {columns}, {self.event_columns} FROM events e WHERE e.tenant = {p} AND e.id = {p}"
        params: list[Any] = [tenant, event_id]
        if scope != tenant:
            condition, more = self.in_scope(scope)
            sql += f" AND {condition}"
            params.extend(more)
        sql += self.viewer_may_see()
        params.append(viewer_roles)
        if source is not None:
            sql += f" AND e.source = {p}"
            params.append(source)
        sql += f"{self.find_order} LIMIT {p}"
        params.append(limit)
        return sql, params

    def scope_filters(self, query: EventQuery) -> tuple[str, list[Any]]:
        """Extra terms on the scope rows `s` of a subtree query (empty: none)."""
        return "", []

    def filters(self, query: EventQuery, order_columns: list[str]) -> tuple[str, list[Any]]:
        """The WHERE terms of a query's filters, after the scope's."""
        p = self.p
        sql = self.viewer_may_see()
        params: list[Any] = [query.viewer_roles]
        if query.scope != groups.root_of(query.scope):
            scope_sql, scope_params = self.scope_filters(query)
            sql += scope_sql
            params.extend(scope_params)
        type_terms = []
        if query.types:
            type_terms.append(f"e.type IN ({', '.join([p] * len(query.types))})")
            params.extend(query.types)
        for prefix in query.type_prefixes:
            type_terms.append(f"(e.type >= {p} AND e.type < {p})")
            params.extend(prefix_range(prefix))
        if type_terms:
            sql += " AND (" + " OR ".join(type_terms) + ")"
        for column, value in (
            ("e.source", query.source),
            ("e.subject", query.subject),
            ("e.actor", query.actor),
            ("e.eventkey", query.eventkey),
        ):
            if value is not None:
                sql += f" AND {column} = {p}"
                params.append(value)
        if query.subject_prefix:
            sql += f" AND e.subject >= {p} AND e.subject < {p}"
            params.extend(prefix_range(query.subject_prefix))
        elif query.subject_prefix == "":
            sql += " AND e.subject IS NOT NULL"
        if query.since_ns is not None:
            sql += f" AND e.time_ns >= {p}"
            params.append(query.since_ns)
        if query.until_ns is not None:
            sql += f" AND e.time_ns < {p}"
            params.append(query.until_ns)
        if query.text is not None:
            sql += f" AND {self.text_match()}"
            params.append(self.text_query(WORD.findall(query.text)))
        if query.after is not None:
            condition, more = self.after(order_columns, query.after, query.descending)
            sql += f" AND {condition}"
            params.extend(more)
        return sql, params

    def list_sql(self, query: EventQuery) -> tuple[str, list[Any]]:
        """A page of events: the position columns, then `event_columns`."""
        source, params, order = self.scoped(query.scope)
        where, more = self.filters(query, order)
        direction = "DESC" if query.descending else "ASC"
        ordering = ", ".join(f"{column} {direction}" for column in order)
        sql = f"SELECT {', '.join(order)}, {self.event_columns} {source}{where} ORDER BY {ordering} LIMIT {self.p}"
        return sql, [*params, *more, query.limit]

    def count_sql(self, query: EventQuery) -> tuple[str, list[Any]]:
        """Every event a query matches, counted (its cursor and limit ignored)."""
        source, params, order = self.scoped(query.scope)
        where, more = self.filters(replace(query, after=None), order)
        return f"SELECT count(*) {source}{where}", [*params, *more]

    def stats_sql(
        self, query: EventQuery, group_by: Sequence[str], interval: str | None
    ) -> tuple[str, list[Any]]:
        """Counts per `group_by` fields and time bucket, most first."""
        sql, params, keys = self.counts_sql(query, group_by, interval)
        return f"{sql}{self.most_first(keys)} LIMIT {self.p}", [*params, query.limit]

    @staticmethod
    def most_first(keys: int) -> str:
        """The ORDER BY of stats rows of `keys` key columns and a count: most first, then by key."""
        numbers = ", ".join(str(i + 1) for i in range(keys))
        return f" ORDER BY {keys + 1} DESC" + (f", {numbers}" if keys else "")

    def counts_sql(
        self, query: EventQuery, group_by: Sequence[str], interval: str | None
    ) -> tuple[str, list[Any], int]:
        """The stats rows unordered: the key columns, then the count; and how many keys."""
        source, params, order = self.scoped(query.scope)
        where, more = self.filters(query, order)
        keys = [GROUP_BY_COLUMNS[name] for name in group_by]
        if interval is not None:
            width = INTERVALS[interval]
            # Floored (division truncates toward zero): a time before 1970 is in its own bucket.
            # The bucket of the earliest stored times begins before what 64 bits hold: it is
            # shown as beginning at the earliest time instead, never computed (it would overflow).
            first = -(-_MIN_NS // width) * width  # the earliest bucket that begins in range
            keys.append(
                # The smallest bigint written as a sum: as one literal, it would parse as a
                # larger type (numeric, real) and the whole CASE with it.
                f"CASE WHEN e.time_ns < {first} THEN ({_MIN_NS + 1} - 1)"
                f" WHEN e.time_ns < 0 THEN ((e.time_ns + 1) / {width} - 1) * {width}"
                f" ELSE (e.time_ns / {width}) * {width} END"
            )
        numbers = ", ".join(str(i + 1) for i in range(len(keys)))
        select = "".join(f"{key}, " for key in keys)
        grouping = f" GROUP BY {numbers}" if keys else ""
        return f"SELECT {select}count(*) {source}{where}{grouping}", [*params, *more], len(keys)

"""What every benchmark prints at the end: a table of its figures, then each figure's notes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def print_table(
    headers: Sequence[str], cells: Sequence[Sequence[str]], notes: Sequence[tuple[str, list[str]]]
) -> None:
    """The table of `cells` under `headers`, each column as wide as its widest value, then the
    notes of each figure (`(figure, notes)`), each marked with the figure's number."""
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True))

    print()
    print(line(headers))
    print(line(["-" * width for width in widths]))
    for cell in cells:
        print(line(cell))
    print()
    for figure, figure_notes in notes:
        for note in figure_notes:
            print(f"  {figure.split(' ', 1)[0]} {note}")


_DAMON = Path("/sys/kernel/mm/damon/admin/kdamonds")


def _read(path: Path) -> str:
    return path.read_text().strip()


def page_cache_reclaim() -> str | None:
    """What the kernel's proactive reclaim (a running DAMON `pageout` scheme) does to the page
    cache, if it does anything: such a host evicts file pages left idle, so a database's pages
    stay in memory only in its own buffers or while they are read. None when nothing runs."""
    found = []
    for scheme in sorted(_DAMON.glob("*/contexts/*/schemes/*")):
        context = scheme.parent.parent
        try:
            if (
                _read(context.parent.parent / "state") != "on"
                or _read(scheme / "action") != "pageout"
            ):
                continue
            aggregation_us = int(_read(context / "monitoring_attrs/intervals/aggr_us"))
            idle_s = int(_read(scheme / "access_pattern/age/min")) * aggregation_us / 1e6
            quota = int(_read(scheme / "quotas/bytes"))
            interval_ms = int(_read(scheme / "quotas/reset_interval_ms"))
        except (OSError, ValueError):
            continue
        rate = (
            f", up to {quota / 2**20 * 1000 / interval_ms:,.0f} MiB/s"
            if quota and interval_ms
            else ""
        )
        found.append(f"pages left idle for {idle_s:.0f} s{rate}")
    if not found:
        return None
    return "the kernel evicts page cache proactively (DAMON pageout: " + "; ".join(found) + ")"

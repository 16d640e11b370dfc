"""What every benchmark prints at the end: a table of its figures, then each figure's notes."""

from __future__ import annotations

from collections.abc import Sequence


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

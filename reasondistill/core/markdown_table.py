"""The one Markdown table writer: every table the stages print or write goes through it."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], numeric: Sequence[int] = ()
) -> str:
    """A GitHub Markdown table; cells are written with `str` (format numbers before), the columns whose
    indices are in `numeric` right-aligned. A row of the wrong width is a bug, so it raises."""
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---:" if i in numeric else "---" for i in range(len(header))) + " |",
    ]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells for {len(header)} columns: {row}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)

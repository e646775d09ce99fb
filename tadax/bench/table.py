"""The one output format of every benchmark mode: a markdown table, and time summaries."""

import statistics
from typing import Sequence


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; every row must have one cell per header."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)} has {len(row)} cells for {len(headers)} headers")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def min_median(seconds: Sequence[float]) -> str:
    """`'1.234 / 1.31 s'`: the fastest and the median of a round of runs, 4 significant digits."""
    return f"{min(seconds):.4g} / {statistics.median(seconds):.4g} s"

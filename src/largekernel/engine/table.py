"""Plain-text tables for the command line."""
from __future__ import annotations

from typing import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart; columns in `right` right-aligned."""
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(x).rjust(w) if c in right else str(x).ljust(w)
                         for c, (x, w) in enumerate(zip(cells, widths))).rstrip() + "\n"

    return "".join(line(r) for r in [header, *rows])

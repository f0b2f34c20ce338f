"""How the `compplan` commands print: JSON documents, aligned tables and sizes in MiB.

The commands compute in the packages and only render here, so that what a command prints is the
same whatever computed it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

__all__ = ["mib", "print_json", "table"]


def print_json(data: object) -> None:
    """Print `data` as indented JSON on stdout."""
    print(json.dumps(data, indent=2))


def table(
    rows: Sequence[Sequence[object]], header: Sequence[str], right: Collection[int] = frozenset()
) -> str:
    """An aligned text table: the header, a rule, then one line per row.

    Args:
        rows: cells, one sequence per row, as many as `header` has.
        header: column titles.
        right: indices of the columns to right-align (numbers).
    """
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[object]) -> str:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def mib(n_bytes: float) -> str:
    """Bytes as MiB (2^20 bytes) with three decimals: "1.540 MiB"."""
    return f"{n_bytes / 2**20:.3f} MiB"

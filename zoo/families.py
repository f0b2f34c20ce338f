"""Small models of public architecture families, for trying compplan on designs nobody here wrote.

`ENTRIES` lists their zoo entries.
"""

from __future__ import annotations

from zoo._entry import ZooEntry

__all__ = ["ENTRIES"]

ENTRIES: tuple[ZooEntry, ...] = ()

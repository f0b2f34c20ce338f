"""all-MiniLM-L6-v2, the pretrained sentence encoder, as a zoo model.

`ENTRIES` lists its zoo entry.
"""

from __future__ import annotations

from zoo._entry import ZooEntry

__all__ = ["ENTRIES"]

ENTRIES: tuple[ZooEntry, ...] = ()

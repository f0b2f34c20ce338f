"""`PlanError`: the one error type for a plan, a knob or a search space that is wrong.

It lives in its own module, below `search_spaces.plan` and the compression units, because both
raise it and the plan imports the units.
"""

from __future__ import annotations

__all__ = ["PlanError"]


class PlanError(ValueError):
    """A plan that is malformed, or does not fit the model; the message says what to change."""

    def __init__(self, message: str, *, layer: str | None = None, field: str | None = None):
        where = []
        if layer is not None:
            where.append(f"layer '{layer}'")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(": ".join([*where, message]))
        self.layer = layer
        self.field = field

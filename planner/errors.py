"""The planner's errors: each message says what to change (the CLI prints it as one line)."""

from __future__ import annotations

from search_spaces.plan import PlanError

__all__ = ["PlannerError"]


class PlannerError(PlanError):
    """A search that cannot start or go on: a bad setting, storage URL, study or backend."""

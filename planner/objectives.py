"""The `Objective` protocol that refinement and learning-rate tuning score plans with, and the
proxy as one.

Two fidelities satisfy it (DESIGN.md, Search): the proxy (`ProxyScore`: predicted distortion,
microseconds a plan, lower is better) and the real objective (`planner.real.RealObjective`:
apply, fine-tune, score on validation data, seconds to minutes a plan, higher is better). A stage
that takes an `Objective` reads its `direction` to know which way is better, and may stop a run
early through `report`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from search_spaces.plan import Plan

if TYPE_CHECKING:
    from planner.problem import Problem

__all__ = ["Objective", "Outcome", "ProxyScore", "Report"]

# `report(step, value) -> stop?`: step 0 right after applying, step e after epoch e.
Report = Callable[[int, float], bool]


@dataclass(frozen=True)
class Outcome:
    """An objective's value after each step (step 0 first), and whether `report` stopped it."""

    values: tuple[float, ...]
    pruned: bool = False

    @property
    def value(self) -> float:
        """The value at the last step run."""
        return self.values[-1]


@runtime_checkable
class Objective(Protocol):
    """Scores a plan.

    Attributes:
        direction: "minimize" or "maximize": which way is better.
        metric: the value's name, for messages and tables ("proxy", "accuracy", ...).
    """

    direction: str
    metric: str

    def __call__(self, plan: Plan, report: Report | None = None) -> Outcome:
        """Score `plan`, calling `report(step, value)` after each step when given; stop early
        (`Outcome.pruned`) when it returns True."""
        ...


class ProxyScore:
    """The proxy as an `Objective`: the problem's predicted distortion of a plan, one step."""

    direction = "minimize"
    metric = "proxy"

    def __init__(self, problem: Problem):
        self.problem = problem

    def __call__(self, plan: Plan, report: Report | None = None) -> Outcome:
        value = self.problem.proxy.value(plan)
        pruned = report is not None and report(0, value)
        return Outcome((value,), pruned=pruned)

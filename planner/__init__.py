"""Planning: the budget-constrained search for a model's per-layer plan, presets, and the
`compplan` CLI.

    from planner import Planner, SearchConfig, SearchResult

The plan types are defined in `search_spaces.plan` (the size predictor and the engine read them
too) and re-exported here, where users look for them.
"""

from planner.config import RaySettings, RealSettings, SearchConfig
from planner.errors import PlannerError
from planner.knob_restrictions import SearchKnobs
from planner.presets import PRESET_HELP, make_preset
from planner.results import SearchResult
from planner.search import Planner, SearchOutcome
from search_spaces.plan import Budget, LayerPlan, Plan, PlanError, validate_plan

__all__ = [
    "PRESET_HELP",
    "Budget",
    "LayerPlan",
    "Plan",
    "PlanError",
    "Planner",
    "PlannerError",
    "RaySettings",
    "RealSettings",
    "SearchConfig",
    "SearchKnobs",
    "SearchOutcome",
    "SearchResult",
    "make_preset",
    "validate_plan",
]

"""Planning: plans and budgets, presets, and the `compplan` CLI.

The plan types are defined in `search_spaces.plan` (the size predictor and the engine read them
too) and re-exported here, where users look for them.
"""

from planner.presets import PRESET_HELP, make_preset
from search_spaces.plan import Budget, LayerPlan, Plan, PlanError, validate_plan

__all__ = [
    "PRESET_HELP",
    "Budget",
    "LayerPlan",
    "Plan",
    "PlanError",
    "make_preset",
    "validate_plan",
]

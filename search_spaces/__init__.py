"""Model discovery, plans and the knobs of the search.

`discover(model, example_inputs)` reads any `nn.Module` into a `ModelGraph`; `Plan` and `LayerPlan`
say what to do to each layer, with the typed configs of the compression units registered in
`search_spaces.methods` (`VQConfig`, `BitsConfig`, `N2UQConfig`, ...); `SearchSpace` lists the
valid choices per layer and converts them to Optuna distributions.
"""

from search_spaces.discover import COMPRESSIBLE_TYPES, DiscoveryError, discover
from search_spaces.graph import CouplingGroup, InputTie, KeptModule, LayerSpec, ModelGraph
from search_spaces.methods import BitsConfig, N2UQConfig, VQConfig
from search_spaces.plan import (
    SCHEMA_VERSION,
    Budget,
    LayerPlan,
    Plan,
    PlanError,
    group_keeps,
    pruned_channels,
    validate_plan,
)
from search_spaces.space import Knobs, LayerChoices, SearchSpace

__all__ = [
    "COMPRESSIBLE_TYPES",
    "SCHEMA_VERSION",
    "BitsConfig",
    "Budget",
    "CouplingGroup",
    "DiscoveryError",
    "InputTie",
    "KeptModule",
    "Knobs",
    "LayerChoices",
    "LayerPlan",
    "LayerSpec",
    "ModelGraph",
    "N2UQConfig",
    "Plan",
    "PlanError",
    "SearchSpace",
    "VQConfig",
    "discover",
    "group_keeps",
    "pruned_channels",
    "validate_plan",
]

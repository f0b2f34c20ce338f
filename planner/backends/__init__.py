"""Search backends: where a problem's trials run (`SearchBackend`), and reading a study's config.

- `OptunaBackend`: trials in this process, kept in an Optuna storage that workers share;
- `RayBackend`: trials on a Ray cluster, scheduled by Ray Tune.
"""

from planner.backends._base import (
    Progress,
    Proposal,
    SearchBackend,
    directions,
    exact_seed,
    make_repair,
    make_sampler,
    score_proposal,
)
from planner.backends.optuna_backend import CONFIG_ATTR, OptunaBackend, read_study_config
from planner.backends.ray_backend import RayBackend, check_address

__all__ = [
    "CONFIG_ATTR",
    "OptunaBackend",
    "Progress",
    "Proposal",
    "RayBackend",
    "SearchBackend",
    "check_address",
    "directions",
    "exact_seed",
    "make_repair",
    "make_sampler",
    "read_study_config",
    "score_proposal",
]

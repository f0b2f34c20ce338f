"""Latency: profiling deployed plans and single layers, and predictors fit on the records.

- `profile(model, ...)` → records (a DataFrame; `save_records` / `load_records`, parquet or CSV);
- `FlopsPredictor`, `LookupTablePredictor`, `LatencyNetwork`: `fit(records)`,
  `predict(graph, plans)` in ms, `save(path)`; `load_predictor(path)` reads any of them;
- `fit_predictor(records, kind, holdout=...)` → `FitReport`: the fit with its score on held-out
  plans (`holdout_split` keeps a held-out plan's layer records out of training too);
- `ProfileSummary.of(records)`: what a set of records holds, as `compplan profile` prints it.
"""

from predictors.latency.features import FEATURE_NAMES, LatencyBatch, LayerConfigs, features
from predictors.latency.fitting import FitReport, HoldoutScore, fit_predictor, holdout_split
from predictors.latency.models import (
    PREDICTOR_KINDS,
    FlopsPredictor,
    LatencyNetwork,
    LatencyPredictor,
    LookupTablePredictor,
    PredictorError,
    load_predictor,
    make_predictor,
    predictor_from_document,
    record_graphs,
)
from predictors.latency.profiling import ProfileError, profile, profile_layers
from predictors.latency.records import (
    ProfileSummary,
    RecordsError,
    check_records_path,
    load_records,
    save_records,
)
from predictors.latency.sampling import (
    int8_region_plans,
    kernel_mix_plans,
    random_plans,
    structured_plans,
    synthetic_layer_configs,
)

__all__ = [
    "FEATURE_NAMES",
    "PREDICTOR_KINDS",
    "FitReport",
    "FlopsPredictor",
    "HoldoutScore",
    "LatencyBatch",
    "LatencyNetwork",
    "LatencyPredictor",
    "LayerConfigs",
    "LookupTablePredictor",
    "PredictorError",
    "ProfileError",
    "ProfileSummary",
    "RecordsError",
    "check_records_path",
    "features",
    "fit_predictor",
    "holdout_split",
    "int8_region_plans",
    "kernel_mix_plans",
    "load_predictor",
    "load_records",
    "make_predictor",
    "predictor_from_document",
    "profile",
    "profile_layers",
    "random_plans",
    "record_graphs",
    "save_records",
    "structured_plans",
    "synthetic_layer_configs",
]

"""Latency: profiling deployed plans and single layers, and predictors fit on the records.

- `profile(model, ...)` → records (a DataFrame; `save_records` / `load_records`, parquet or CSV);
- `FlopsPredictor`, `LookupTablePredictor`, `LatencyNetwork`: `fit(records)`,
  `predict(graph, plans)` in ms, `save(path)`; `load_predictor(path)` reads any of them.
"""

from predictors.latency.features import FEATURE_NAMES, LatencyBatch, LayerConfigs, features
from predictors.latency.models import (
    PREDICTOR_KINDS,
    FlopsPredictor,
    LatencyNetwork,
    LatencyPredictor,
    LookupTablePredictor,
    PredictorError,
    load_predictor,
    predictor_from_document,
    make_predictor,
    record_graphs,
)
from predictors.latency.profiling import (
    ProfileError,
    profile,
    profile_layers,
    random_plans,
    synthetic_layer_configs,
)
from predictors.latency.records import (
    RecordsError,
    check_records_path,
    load_records,
    save_records,
)

__all__ = [
    "FEATURE_NAMES",
    "PREDICTOR_KINDS",
    "FlopsPredictor",
    "LatencyBatch",
    "LatencyNetwork",
    "LatencyPredictor",
    "LayerConfigs",
    "LookupTablePredictor",
    "PredictorError",
    "ProfileError",
    "RecordsError",
    "check_records_path",
    "features",
    "load_predictor",
    "predictor_from_document",
    "load_records",
    "make_predictor",
    "profile",
    "profile_layers",
    "random_plans",
    "record_graphs",
    "save_records",
    "synthetic_layer_configs",
]

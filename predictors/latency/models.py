"""The latency predictors' registry: make one by kind, read a saved one back.

Three kinds share `LatencyPredictor`'s interface (`predictors.latency.predictor`): a FLOPs
baseline (`flops`), a lookup table (`lookup`) and the latency predictor network (`network`).
"""

from __future__ import annotations

from pathlib import Path

from predictors.latency.flops import FlopsPredictor
from predictors.latency.lookup import LookupTablePredictor
from predictors.latency.network import LatencyNetwork
from predictors.latency.predictor import FORMAT, READS, LatencyPredictor
from predictors.latency.training_sets import PredictorError, record_graphs

__all__ = [
    "PREDICTOR_KINDS",
    "FlopsPredictor",
    "LatencyNetwork",
    "LatencyPredictor",
    "LookupTablePredictor",
    "PredictorError",
    "load_predictor",
    "make_predictor",
    "predictor_from_document",
    "record_graphs",
]


PREDICTOR_KINDS = {cls.kind: cls for cls in (FlopsPredictor, LookupTablePredictor, LatencyNetwork)}


def make_predictor(kind: str, **options) -> LatencyPredictor:
    """A new, unfit predictor of `kind` ("flops", "lookup" or "network")."""
    try:
        return PREDICTOR_KINDS[kind](**options)
    except KeyError:
        raise PredictorError(
            f"unknown predictor kind '{kind}'; choose one of {', '.join(PREDICTOR_KINDS)}"
        ) from None


def load_predictor(path: str | Path) -> LatencyPredictor:
    """Read a predictor saved with `save`.

    Raises:
        PredictorError: the file is missing, not a compplan predictor, or from a newer version.
    """
    from search_spaces.input_file import InputFileError, read_json

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise PredictorError(
            f"{path}: no such predictor file (make one with `compplan fit-latency`)"
        )
    try:
        document = read_json(path, "predictor file")
    except InputFileError as error:
        raise PredictorError(f"{error} (make one with `compplan fit-latency`)") from None
    return predictor_from_document(document, source=str(path))


def predictor_from_document(document: object, *, source: str = "predictor") -> LatencyPredictor:
    """The predictor a `LatencyPredictor.to_document()` document describes.

    Raises:
        PredictorError: not a compplan predictor, from a newer version, or damaged; the message
            starts with `source`.
    """
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PredictorError(f"{source}: not a compplan latency predictor file")
    if document.get("version") not in READS:
        raise PredictorError(
            f"{source}: predictor file version {document.get('version')} is not supported "
            f"(this compplan reads versions {', '.join(map(str, READS))})"
        )
    kind = document.get("kind")
    if kind not in PREDICTOR_KINDS:
        raise PredictorError(f"{source}: unknown predictor kind {kind!r}")
    predictor = PREDICTOR_KINDS[kind]()
    try:
        predictor._load_state(document["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        if isinstance(error, PredictorError):
            raise
        raise PredictorError(f"{source}: the saved {kind} predictor is damaged ({error})") from None
    predictor.fingerprint = dict(document.get("fingerprint", {}))
    references = document.get("references", {})  # older files have none
    if not isinstance(references, dict) or not all(
        isinstance(v, int | float) and v > 0 for v in references.values()
    ):
        raise PredictorError(f"{source}: its reference latencies are damaged")
    predictor.references = {str(k): float(v) for k, v in references.items()}
    unit, unit_ms = document.get("unit", "latency_ms"), document.get("unit_ms", 1.0)
    if unit not in ("units", "latency_ms") or not isinstance(unit_ms, int | float) or unit_ms <= 0:
        raise PredictorError(f"{source}: its unit is damaged")
    predictor.unit, predictor.unit_ms = unit, float(unit_ms)
    predictor.fitted = True
    return predictor

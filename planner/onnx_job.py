"""Deploy: a `.cpz` from `compplan apply` exported to ONNX, and an ONNX file scored on its task.

    from planner.onnx_job import export_onnx_file
    report = export_onnx_file("digits.cpz", "digits.onnx")   # compplan export
    evaluate_export("digits.onnx")["score"]                  # compplan eval (planner.compress)

The export rebuilds the compressed model from the `.cpz` (`engine.load`, every check included),
sizes its plan with the size model (the predicted bytes), and writes the ONNX file
(`engine.onnx_export`) with the `.cpz`'s facts in its metadata: model spec, task, plan, input
shape, and each layer's expected kernel class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.export import ExportError, example_inputs, load, read_metadata
from engine.onnx_export import export_onnx
from predictors.size import size_report
from search_spaces.discover import discover
from search_spaces.model_spec import load_model
from search_spaces.output_file import check_output_path
from search_spaces.plan import Plan

__all__ = ["export_onnx_file", "file_latency_check", "onnx_structure_check"]

_CARRIED = ("model_spec", "task", "distill", "input_shape", "input_dtype")


def export_onnx_file(
    path: str | Path,
    out: str | Path,
    *,
    model_spec: str | None = None,
    trust_specs: bool = False,
) -> dict[str, Any]:
    """Export the `.cpz` at `path` to the ONNX file `out`.

    Args:
        path: a file written by `compplan apply`.
        out: the `.onnx` file to write.
        model_spec: the uncompressed model's spec (structure only); None: the file's.
        trust_specs: build the structure from a non-zoo spec the file records.

    Returns:
        The export report (`OnnxReport.to_dict()`) with `predicted_bytes` (the size model's
        bytes for the plan) and `source`.

    Raises:
        ExportError: the `.cpz` is refused (damaged, another model, a spec not trusted), or a
            layer's kind has no ONNX form.
        OutputFileError: `out` cannot be written.
    """
    check_output_path(out, "--out")
    meta = read_metadata(path)
    spec = model_spec or meta.get("model_spec")
    inputs = example_inputs(meta, f"{path} is damaged")
    structure = None
    if model_spec is not None:
        structure = load_model(model_spec, input_shape=meta.get("input_shape"), pretrained=False)
        structure = structure.module
    model = load(path, model=structure, trust_model_spec=trust_specs)
    plan = Plan.from_dict(meta["plan"])
    uncompressed = load_model(spec, input_shape=meta.get("input_shape"), pretrained=False).module
    graph = discover(uncompressed, inputs, model_name=spec or "the model")
    predicted = size_report(plan, graph).total_bits / 8
    facts = {key: meta.get(key) for key in _CARRIED}
    facts |= {"plan": meta["plan"], "fingerprint": graph.fingerprint}
    report = export_onnx(model, inputs, out, metadata=facts).to_dict()
    return {**report, "predicted_bytes": predicted, "source": str(path)}


def onnx_structure_check(path: str | Path, meta: dict, model_spec: str) -> None:
    """Refuse an ONNX file exported from another model than `model_spec` builds.

    Raises:
        ExportError: the file records another structure's fingerprint, or none.
    """
    from search_spaces import DiscoveryError

    recorded = meta.get("fingerprint")
    loaded = load_model(model_spec, input_shape=meta.get("input_shape"), pretrained=False)
    # Traced on inputs of the recorded shape and dtype, as the export was: load_model's own are
    # floats, which a model of token ids cannot take.
    inputs = example_inputs(meta, f"{path} is damaged")
    try:
        graph = discover(loaded.module, inputs, model_name=model_spec)
    except DiscoveryError:
        graph = None  # it does not even take the file's inputs
    if graph is None or recorded != graph.fingerprint:
        raise ExportError(
            f"{path} was exported from another model than {model_spec} (structure fingerprints "
            "differ); give the model it was exported from"
        )


def file_latency_check(
    cpz: str | Path, onnx: str | Path, *, threads: int = 1, rounds: int = 3
) -> dict[str, Any]:
    """The ONNX file exported from the `.cpz` at `cpz`, measured on ONNX Runtime against the
    uncompressed model's fp32 file (`planner.measure.measure_file_latency`), beside what the
    plan's search predicted and its budget (recorded in the plan's provenance as ms and the
    predictor's reference ms, compared here as ratios to the uncompressed model, since ms move
    with the machine).

    Returns:
        {"measured_ratio", "spread", "measured_ms" (this run's), "runtime": "onnxruntime",
        "predicted_ratio", "budget_ratio", "within"} (the last three None where the plan has
        no latency prediction or budget).
    """
    from planner.measure import measure_file_latency

    meta = read_metadata(cpz)
    plan = Plan.from_dict(meta["plan"])
    inputs = example_inputs(meta, f"{cpz} is damaged")
    spec = meta.get("model_spec")
    model = load_model(spec, input_shape=meta.get("input_shape"), pretrained=False).module
    timing = measure_file_latency(onnx, model, inputs, threads=threads, rounds=rounds)
    provenance = plan.provenance
    reference = provenance.get("reference_ms")
    predicted = provenance.get("latency_ms")
    budget = plan.budget.latency_ms
    priced_on = provenance.get("runtime")
    predicted_ratio = predicted / reference if predicted and reference else None
    budget_ratio = budget / reference if budget and reference else None
    return {
        "measured_ratio": timing.ratio,
        "spread": timing.spread,
        "measured_ms": timing.latency_ms,
        "runtime": "onnxruntime",
        "priced_on": priced_on,
        "predicted_ratio": predicted_ratio,
        "budget_ratio": budget_ratio,
        "within": None if budget_ratio is None else timing.ratio <= budget_ratio,
    }

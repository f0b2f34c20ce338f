"""Plans deployed on ONNX Runtime: bytes against the prediction, speed against ORT fp32, outputs
against the `.cpz`, the kernels that run.

    .venv/bin/python scripts/bench_onnx.py [--models zoo:resnet18 ...] [--plans bits:4 ...]
        [--repeats 3] [--out benchmarks/results/onnx.json]

For each model (zoo:resnet18 and zoo:mobilenet_v2 at 1x3x224x224, zoo:mnist1d, zoo:minilm on
token ids, and a model in a user's own file written to a temporary folder, `USER_MODEL`) and
each plan (presets, and a plan searched with the proxy under a size budget, with every layer
searchable where the protected ends alone exceed it): the plan is
applied (no fine-tuning; activation quantizers calibrated on the model's task inputs, or random
ones), exported to `.cpz` (`engine.export`) and to ONNX (`planner.onnx_job.export_onnx_file`),
and measured:
- the ONNX file's bytes, its stored tensors, its planned weights and its activation quantizers'
  parameters against the size model's prediction;
- its ORT latency as a ratio to the ORT fp32 file of the uncompressed model (1 thread, batch 1,
  `measure_relative`: interleaved blocks, `MIN_TIME_MS` of the reference per measurement),
  `--repeats` times: median and range;
- the ORT fp32 file against PyTorch eager on the same uncompressed model, the same way;
- output agreement between the ONNX file (onnxruntime) and the `.cpz` (compplan, in torch) on
  the task's test inputs (or 128 random ones): top-1 agreement (for class outputs) and mean
  cosine similarity (for embeddings), both reported;
- the kernel classes in the optimized graph (`engine.onnx_session`).
A plan that cannot be applied or exported is reported with its error. Prints a table and writes
benchmarks/results/onnx.json with the CPU model.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "onnx.json"
MODELS = ("zoo:resnet18", "zoo:mobilenet_v2", "zoo:mnist1d", "zoo:minilm", "user")
PLANS = ("pqf-small", "bits:4", "bits:8+act:8", "keep:0.5+bits:8+act:8", "searched")
SEARCH_BUDGET = "x16"  # the searched plan: the proxy's best under this size budget
SEARCH_TRIALS = 60
USER_MODEL = '''
"""A user's image classifier (MBConv-like blocks), seeded weights."""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c, expand=4):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return x + self.body(x)


def build():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
        Block(32), Block(32),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(),
        Block(64), Block(64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    return net.eval()
'''


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def load_spec(spec: str, folder: Path):
    """(spec as recorded, loaded model, task or None)."""
    from engine.task_spec import load_with_task

    if spec == "user":
        (folder / "usermodel.py").write_text(USER_MODEL)
        spec = f"{folder / 'usermodel.py'}:build"
        from search_spaces.model_spec import load_model

        return spec, load_model(spec, input_shape="1,3,96,96"), None
    loaded, _, task = load_with_task(spec, None)
    return spec, loaded, task


def test_inputs(loaded, task) -> torch.Tensor:
    """The task's test inputs (at most 256), else 128 inputs like the example's."""
    splits = getattr(task, "splits", None)
    if hasattr(splits, "test_x"):  # a zoo task
        return splits.test_x[:256]
    if isinstance(splits, dict):  # a task on the user's arrays
        return splits["test"][0][:256]
    first = loaded.example_inputs[0]
    if first.dtype.is_floating_point:
        return torch.randn(128, *first.shape[1:], generator=torch.Generator().manual_seed(0))
    return first.repeat(128, *[1] * (first.ndim - 1))  # token ids: the example's own


def calibration(loaded, task) -> torch.Tensor:
    if task is not None:
        return task.calibration()[:64]
    first = loaded.example_inputs[0]
    if first.dtype.is_floating_point:
        return torch.randn(64, *first.shape[1:], generator=torch.Generator().manual_seed(1))
    return first.repeat(64, *[1] * (first.ndim - 1))


def make_plan(name: str, spec: str, loaded, graph):
    from planner.presets import make_preset

    if name != "searched":
        return make_preset(graph, name, model=spec)
    from planner.budgets import BudgetError, parse_size
    from planner.config import SearchConfig
    from planner.search import Planner
    from search_spaces import Budget

    size = parse_size(SEARCH_BUDGET, graph.baseline_bits / 8)
    config = SearchConfig(model_spec=spec, budget=Budget(size_bytes=size), storage="memory", seed=0)
    try:
        planner = Planner(loaded.module, loaded.example_inputs, config, graph=graph)
    except BudgetError as error:  # the protected ends alone exceed it: free them, as it advises
        print(f"  searched: {error}; searching with --protect-ends no", flush=True)
        config = dataclasses.replace(config, protect_ends=False)
        planner = Planner(loaded.module, loaded.example_inputs, config, graph=graph)
    return planner.run(SEARCH_TRIALS).plan


def agreement(onnx_out: torch.Tensor, torch_out: torch.Tensor) -> dict:
    """Top-1 agreement over the last dimension (what it means for class outputs) and the mean
    cosine similarity per example (what it means for embeddings): both, for every model."""
    same = (onnx_out.argmax(-1) == torch_out.argmax(-1)).float().mean().item()
    cos = torch.nn.functional.cosine_similarity(
        onnx_out.flatten(1).double(), torch_out.flatten(1).double(), dim=1
    )
    return {"top1_agreement": same, "cosine": cos.mean().item()}


def ratio(module, reference, inputs, repeats: int) -> dict:
    from predictors.profile import MIN_TIME_MS, measure_relative

    ratios = [
        measure_relative(module, reference, inputs, threads=1, min_time_ms=MIN_TIME_MS).ratio
        for _ in range(repeats)
    ]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def output_of(value):
    from engine.distill import output_of as main_output

    return main_output(value)


def bench_model(spec_name: str, plans: list[str], repeats: int, folder: Path) -> dict:
    from engine.apply import ApplyConfig, apply_plan_
    from engine.deploy import deployed_structure
    from engine.export import export, load
    from engine.onnx_export import export_onnx
    from engine.onnx_session import onnx_session
    from planner.onnx_job import export_onnx_file
    from search_spaces import discover
    from search_spaces.plan import Plan

    spec, loaded, task = load_spec(spec_name, folder)
    graph = discover(loaded.module, loaded.example_inputs, model_name=spec)
    example = loaded.example_inputs[0]
    fp32_file = folder / f"{graph.fingerprint[7:15]}-fp32.onnx"
    uncompressed = deployed_structure(loaded.module, Plan(layers={}), loaded.example_inputs)
    fp32_report = export_onnx(uncompressed, example, fp32_file)
    fp32 = onnx_session(fp32_file, threads=1).module()
    result = {
        "spec": spec_name,
        "fp32_file_bytes": fp32_report.file_bytes,
        "ort_fp32_vs_eager": ratio(fp32, uncompressed, example, repeats),
        "plans": {},
    }
    print(f"{spec_name}: ORT fp32 / eager ×{result['ort_fp32_vs_eager']['median']:.3f}", flush=True)
    x_test = test_inputs(loaded, task)
    for name in plans:
        row: dict = {}
        start = time.perf_counter()
        try:
            plan = make_plan(name, spec, loaded, graph)
            model = copy.deepcopy(loaded.module)
            config = ApplyConfig(progress=False)
            apply_plan_(model, plan, calibration=calibration(loaded, task), config=config)
            cpz = folder / "plan.cpz"
            export(model, cpz, model_spec=spec)
            report = export_onnx_file(cpz, folder / "plan.onnx", trust_specs=True)
            session = onnx_session(folder / "plan.onnx", threads=1)
            compressed = load(cpz, trust_model_spec=True)
            with torch.no_grad():
                from engine.task import model_outputs

                onnx_out = model_outputs(session.module(), x_test)
                torch_out = model_outputs(compressed, x_test)
            row = {
                "file_bytes": report["file_bytes"],
                "payload_bytes": report["payload_bytes"],
                "planned_bytes": report["planned_bytes"],
                "quantizer_bytes": report["quantizer_bytes"],
                "predicted_bytes": report["predicted_bytes"],
                "fp32_over_file": fp32_report.file_bytes / report["file_bytes"],
                "ratio_to_ort_fp32": ratio(session.module(), fp32, example, repeats),
                **agreement(onnx_out, torch_out),
                "kernels": session.kernels,
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(f"  {name}: {row['file_bytes']:,} B (predicted {row['predicted_bytes']:,.0f}), "
                  f"×{row['ratio_to_ort_fp32']['median']:.3f} of ORT fp32, "
                  f"{ {k: v for k, v in row.items() if k in ('top1_agreement', 'cosine')} }, "
                  f"kernels {row['kernels']}", flush=True)  # fmt: skip
        except Exception as error:
            row = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
            print(f"  {name}: {row['error']}", flush=True)
            traceback.print_exc(limit=3)
        result["plans"][name] = row
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--plans", nargs="+", default=list(PLANS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory(prefix="compplan-bench-onnx-") as scratch:
        for spec in options.models:
            folder = Path(scratch) / spec.replace(":", "-")
            folder.mkdir()
            results.append(bench_model(spec, options.plans, options.repeats, folder))
    document = {
        "models": results,
        "repeats": options.repeats,
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    options.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

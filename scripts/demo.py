"""The main job, on its embedded default: the MNIST-1D model on this machine, under two budgets.

    make demo                      # sets up .venv, then runs this
    .venv/bin/python scripts/demo.py [--model zoo:digits] [--ratio 32] [--trials 300]
                                     [--storage URL] [--out out]

MNIST-1D (Greydanus 2020, generated offline) is the default because it does not saturate: at 32×
plans differ in test accuracy, where on digits every plan reaches about 99.6%.

1. Trains the zoo model on first use (`zoo:mnist1d`: about 25 s on a quiet 2-core CPU; cached
   afterwards in the user's cache directory, or COMPPLAN_CACHE_DIR) and reports its test
   accuracy.
2. Builds a latency predictor for this CPU on ONNX Runtime (the runtime the exported file runs
   on): profiles 30 plans (half random, half mixing int8 and fp32 layers) and the structured
   ones, each exported to ONNX and timed against the uncompressed model's file, and fits the
   latency network. The latency budget is the uncompressed model's latency there;
   `--latency-factor 0.6` asks for 40% faster, which int8 kernels and pruning reach.
3. Searches, on the proxy objective, the best plan within 1/`ratio` of the fp32 size and the
   latency budget (Optuna on SQLite, seeded by the exact solver), then fine-tunes the 4 best
   candidates for 2 epochs each and keeps the one with the best validation accuracy.
4. Applies it (k-means, 3 epochs of distillation) and exports it to out/<model>-planned.cpz.
5. Does the same for the uniform plan at the same size (within 1%: one setting on every layer,
   or two neighbouring ones, `planner.presets.uniform_mix_at_size`) and prints both test
   accuracies and predicted latencies side by side (the uniform plan prunes only where its size
   needs it, so it may miss the latency budget).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from planner import Planner, RealSettings
from planner.compress import CompressionJob
from planner.presets import uniform_mix_at_size
from predictors.latency import LatencyNetwork, profile
from predictors.size import size_report
from search_spaces import Budget, Plan, discover
from search_spaces.model_spec import load_model
from zoo.tasks import get_task


def _apply(model: str, plan: Plan, out: Path, name: str) -> dict:
    path = out / f"{model.removeprefix('zoo:')}-{name}.json"
    plan.save(path)
    job = CompressionJob(model, plan_path=path, out=path.with_suffix(".cpz"), progress=False)
    return {**job.run(), "file": str(path.with_suffix(".cpz"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:mnist1d", help="a zoo model with a task")
    parser.add_argument("--cache-dir", help="where the trained zoo model is cached")
    parser.add_argument("--out", default="out", help="folder for plans and models (default out)")
    parser.add_argument("--ratio", type=float, default=32.0, help="size budget: 1/RATIO of fp32")
    parser.add_argument("--trials", type=int, default=300, help="proxy trials (default 300)")
    what = "latency budget: this times the uncompressed model's predicted latency (default 1)"
    parser.add_argument("--latency-factor", type=float, default=1.0, help=what)
    parser.add_argument(
        "--storage", default="sqlite:///out/demo-studies.db", help="where the trials are kept"
    )
    args = parser.parse_args()
    if args.cache_dir:
        os.environ["COMPPLAN_CACHE_DIR"] = args.cache_dir
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    model = args.model
    loaded = load_model(model)
    if loaded.task is None:
        parser.error(f"{model} has no task; the demo compares test accuracies (zoo:mnist1d)")
    task = get_task(loaded.task)
    graph = discover(loaded.module, loaded.example_inputs, model_name=model)
    print(
        f"{model} ready in {time.perf_counter() - start:.1f} s: {len(graph.layers)} layers, "
        f"{graph.baseline_bits / 8 / 1024:,.1f} KiB at fp32, test accuracy "
        f"{task.score(loaded.module):.2%}"
    )

    print(
        "\nprofiling 30 plans and the structured ones on ONNX Runtime on this CPU, each "
        "exported and timed against the uncompressed model, for the latency predictor …",
        flush=True,
    )
    start = time.perf_counter()
    records = profile(model, samples=30, processes=1, progress=False, layers=False)
    latency = LatencyNetwork().fit(records)
    uncompressed, _ = latency.reference_ms(graph)  # measured with the records
    size = graph.baseline_bits / 8 / args.ratio
    budget = Budget(size_bytes=size, latency_ms=args.latency_factor * uncompressed)
    print(
        f"latency predictor built in {time.perf_counter() - start:.0f} s; uncompressed "
        f"{uncompressed:.3f} ms measured; budgets: {budget.size_bytes / 1024:.1f} KiB "
        f"(1/{args.ratio:g} of fp32) and {budget.latency_ms:.3f} ms (x{args.latency_factor:g})"
    )

    # One config, one call: the proxy search (seeded by the exact solver), then the 4 best
    # candidates and the balanced plans fine-tuned 2 epochs and scored on validation data.
    planner = Planner(
        loaded.module,
        loaded.example_inputs,
        graph=graph,
        task=task,
        latency=latency,
        model_spec=model,
        budget=budget,
        objective="real",
        real=RealSettings(epochs=2, candidates=4),
        storage=args.storage,
    )
    start = time.perf_counter()
    outcome = planner.run(args.trials)
    result, refined = outcome.result, outcome.refined
    best = result.best
    labels = list(refined["trials"]["user_attrs_candidate"])
    balanced = sum(label.startswith("balanced") for label in labels)
    print(
        f"\nsearch: {len(result.trials)} proxy trials (kept in {result.storage}, study "
        f"'{result.study_name}'); best proxy {best['value']:.4f} at "
        f"{best['size_bytes'] / 1024:.1f} KiB, {best['latency_ms']:.3f} ms predicted; then "
        f"{len(labels)} candidates ({balanced} balanced) fine-tuned 2 epochs, in "
        f"{time.perf_counter() - start:.0f} s together; best validation accuracy "
        f"{refined['value']:.2%} ({refined['candidate']})"
    )

    planned = outcome.plan
    planned_bytes = size_report(planned, graph).size_bytes
    uniform = uniform_mix_at_size(graph, planned_bytes, model=model)
    print("\napplying both plans: k-means, 3 epochs of distillation, export")
    rows = []
    for name, plan in (("planned", planned), ("uniform", uniform)):
        job = _apply(model, plan, out, name)
        rows.append((name, job))
    predicted_ms = latency.predict(graph, [planned, uniform])
    print(f"\n{'plan':<8} {'bytes':>9} {'ratio':>7} {'latency':>10} {'test accuracy':>14}  file")
    for (name, job), ms in zip(rows, predicted_ms, strict=True):
        over = " (over budget)" if ms > budget.latency_ms else ""
        print(
            f"{name:<8} {job['predicted_bytes']:>9,.0f} {job['compression_ratio']:>6.1f}× "
            f"{ms:>7.3f} ms {job['score_after']:>13.2%}  {job['file']}{over}"
        )
    print(f"uncompressed test accuracy {rows[0][1]['score_before']:.2%}")


if __name__ == "__main__":
    main()

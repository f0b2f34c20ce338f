"""The main job, on its embedded default: the digits model on this machine.

    make demo                      # sets up .venv, then runs this
    .venv/bin/python scripts/demo.py [--cache-dir DIR]

It trains `zoo:digits` on first use (under two minutes on a 2-core CPU; cached afterwards in the
user's cache directory, or COMPPLAN_CACHE_DIR), reports its test accuracy, lists its layers,
prints the exact size of a few preset plans (writing each plan to out/), then applies PQF's small
blocks: k-means, three epochs of distillation fine-tuning, export to out/digits-pqf-small.cpz,
and the accuracy and bytes of the result. Later issues turn this into the budget-constrained
search.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from planner.cli import inspect_rows
from planner.compress import CompressionJob
from planner.presets import make_preset
from predictors.size import size_report
from search_spaces import discover
from search_spaces.model_spec import load_model
from zoo.digits import accuracy_on

PRESETS = ("pqf-small", "pqf-large", "bits:8", "bits:4", "bits:2", "keep:0.5", "bits:4+keep:0.5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", help="where the trained digits model is cached")
    parser.add_argument("--out", default="out", help="folder for the preset plans (default: out)")
    args = parser.parse_args()
    if args.cache_dir:
        os.environ["COMPPLAN_CACHE_DIR"] = args.cache_dir

    start = time.perf_counter()
    loaded = load_model("zoo:digits")
    accuracy = accuracy_on(loaded.module, "test")
    print(f"zoo:digits ready in {time.perf_counter() - start:.1f} s; test accuracy {accuracy:.2%}")

    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    print(f"\n{len(graph.layers)} compressible layers, {graph.total_params:,} parameters:")
    for row in inspect_rows(graph):
        if row["compressible"]:
            shape = "×".join(map(str, row["weight_shape"]))
            name, params, group = row["name"], row["params"], row["group"]
            print(f"  {name:<22} {shape:<14} {params:>9,} params  group {group}")
    prunable = sum(g.prunable for g in graph.groups)
    print(f"{len(graph.groups)} coupling groups, {prunable} prunable")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"\n{'preset':<18} {'size':>12} {'ratio':>7}  plan file")
    for preset in PRESETS:
        plan = make_preset(graph, preset, model="zoo:digits")
        path = out / f"digits-{preset.replace(':', '').replace('+', '-')}.json"
        plan.save(path)
        report = size_report(plan, graph)
        print(f"{preset:<18} {report.size_bytes:>10,} B {report.compression_ratio:>6.1f}×  {path}")
    print(f"baseline {graph.baseline_bits // 8:,} B at 32 bits")

    print("\napplying pqf-small: k-means, 3 epochs of distillation, export")
    result = CompressionJob(
        "zoo:digits", plan_path=out / "digits-pqf-small.json", out=out / "digits-pqf-small.cpz"
    ).run()
    print(
        f"accuracy {result['accuracy_before']:.2%} → {result['accuracy_after']:.2%}; "
        f"{out / 'digits-pqf-small.cpz'}: {result['file_bytes']:,} B on disk, weights "
        f"{result['payload_bytes']:,} B (predicted {result['predicted_bytes']:,.0f} B), "
        f"{result['compression_ratio']:.1f}× smaller"
    )
    print(f"next: compplan eval {out / 'digits-pqf-small.cpz'}")


if __name__ == "__main__":
    main()

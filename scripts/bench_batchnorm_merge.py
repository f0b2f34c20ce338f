"""What merging BatchNorms into their convolutions saves in the deployed form, as a ratio.

    .venv/bin/python scripts/bench_batchnorm_merge.py [--repeats 7] [--threads 1]

For zoo:resnet18, zoo:mobilenet_v2 (1×3×224×224) and zoo:digits (1×1×8×8), uncompressed: the
deployed form with each BatchNorm its own scale-shift step (`engine.export.freeze_`, what
compplan deployed before) against the same with them merged (`engine.merge_batchnorm`), timed
interleaved (`predictors.profile.measure_relative`, its default blocks: 12 when last run),
`--repeats` times in this process. Prints the merged/separate ratio's median and range per
model, how many BatchNorms merged and the largest output difference, and writes
benchmarks/results/batchnorm_merge.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch

from engine.export import freeze_
from engine.merge_batchnorm import merge_batchnorms_
from predictors.profile import device_fingerprint, measure_relative
from search_spaces.model_spec import load_model

MODELS = ("zoo:resnet18", "zoo:mobilenet_v2", "zoo:digits")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"device": device_fingerprint("cpu", args.threads), "models": {}}
    for spec in MODELS:
        loaded = load_model(spec, pretrained=False)
        x = loaded.example_inputs
        inputs = x if isinstance(x, tuple) else (x,)
        separate = freeze_(copy.deepcopy(loaded.module).eval())
        merged = copy.deepcopy(separate)
        count = merge_batchnorms_(merged)
        with torch.no_grad():
            difference = float((merged(*inputs) - separate(*inputs)).abs().max())
        ratios = [measure_relative(merged, separate, x).ratio for _ in range(args.repeats)]
        result["models"][spec] = {
            "batchnorms_merged": count,
            "max_output_difference": difference,
            "merged_over_separate": {
                "median": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
                "all": ratios,
            },
        }
        print(
            f"{spec}: {count} BatchNorms merged (outputs within {difference:.1e}); merged / "
            f"separate ×{statistics.median(ratios):.3f} (×{min(ratios):.3f}–×{max(ratios):.3f}, "
            f"{args.repeats} interleaved measurements)"
        )
    out = ROOT / "benchmarks" / "results" / "batchnorm_merge.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

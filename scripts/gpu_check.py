"""The engine on a CUDA device: apply, fine-tune and export on the GPU, load on the CPU.

    python scripts/gpu_check.py [--epochs 3]

Checks, for PQ, LR²VQ, 4-bit weights with 4-bit activations, and keep 0.5 + PQ on zoo:digits:
the plan applies to a model on the GPU, distillation fine-tuning runs there (timed per epoch),
the export's payload equals the predicted size, and the file loaded on the CPU agrees with the GPU
model (max abs difference of the logits; devices round differently, so not bitwise). Prints the
figures and writes benchmarks/results/gpu_check.json. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from engine import ApplyConfig, FinetuneConfig, apply_plan_, export, finetune, load
from predictors.size import size_report
from search_spaces import BitsConfig, LayerPlan, N2UQConfig, Plan, VQConfig, discover
from zoo.digits import INPUT_SHAPE, pretrained_digits
from zoo.tasks import get_task


def plans(graph) -> dict[str, Plan]:
    inner = [n for n in graph.layers if n not in (graph.first_conv, graph.classifier)]

    def m_of(name: str) -> int:
        return 9 if graph.layers[name].kernel_elems == 9 else 4

    keep = {n: 0.5 for g in graph.groups if g.prunable for n in g.layers}
    return {
        "pq": Plan({n: LayerPlan(weights=VQConfig(k=256, m=m_of(n))) for n in inner}),
        "lr2vq": Plan(
            {n: LayerPlan(weights=VQConfig(k=512, m=2 * m_of(n), d_tilde=m_of(n))) for n in inner}
        ),
        "w4a4": Plan(
            {
                n: LayerPlan(weights=BitsConfig(bits=4), activations=N2UQConfig(bits=4))
                for n in inner
            }
        ),
        "keep0.5+pq": Plan(
            {
                n: LayerPlan(
                    weights=VQConfig(k=64, m=9) if n in inner and m_of(n) == 9 else None,
                    keep=keep.get(n, 1.0),
                )
                for n in set(inner) | set(keep)
            }
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device")
    device = torch.device("cuda")
    task = get_task("digits")
    teacher = pretrained_digits(progress=False).to(device).eval()
    graph = discover(teacher, torch.zeros(INPUT_SHAPE, device=device))
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": {}}
    x_test = task.splits.test_x
    with tempfile.TemporaryDirectory() as folder:
        for name, plan in plans(graph).items():
            student = copy.deepcopy(teacher)
            apply_plan_(
                student, plan, calibration=task.calibration(), config=ApplyConfig(progress=False)
            )
            assert all(p.device.type == "cuda" for p in student.parameters())
            torch.cuda.synchronize()
            start = time.perf_counter()
            finetune(
                student,
                teacher,
                task.train_batches(),
                plan,
                config=FinetuneConfig(epochs=args.epochs, progress=False),
            )
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / max(args.epochs, 1)
            accuracy = task.score(student)
            report = export(
                student, Path(folder) / f"{name}.cpz", model_spec="zoo:digits", task="digits"
            )
            loaded = load(report.path)
            with torch.no_grad():
                diff = (student(x_test.to(device)).cpu() - loaded(x_test)).abs().max().item()
            predicted = size_report(plan, graph).total_bits / 8
            results["runs"][name] = {
                "accuracy_gpu": accuracy,
                "accuracy_loaded_cpu": task.score(loaded),
                "seconds_per_epoch": seconds,
                "payload_bytes": report.payload_bytes,
                "predicted_bytes": predicted,
                "max_abs_diff_gpu_vs_cpu": diff,
            }
            print(name, json.dumps(results["runs"][name]))
    out = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

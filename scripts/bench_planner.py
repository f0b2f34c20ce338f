"""The planner on the proxy: optimality gap of TPE and NSGA-II, the exact solver's time, and the
planner's overhead per trial.

    .venv/bin/python scripts/bench_planner.py [--trials 1000] [--models resnet18,resnet50]
                                              [--overhead-trials 1000] [--seeds 1]
    .venv/bin/python scripts/bench_planner.py --digits [--digits-trials 300] [--seeds 3]
    .venv/bin/python scripts/bench_planner.py --mnist1d [--mnist1d-trials 300]
                                              [--mnist1d-ratios 16,32,64] [--seeds 3]

- Spaces: zoo:resnet18 and zoo:resnet50 (1×3×224×224), every layer searchable (first conv and
  classifier included, as PQF compresses them), keep 1 and 32-bit activations, so that the proxy
  is separable and the exact solver's answer is the true optimum. Size budgets 1/20 and 1/40 of
  fp32.
- Gap: the best feasible proxy after 100, 300 and 1000 trials, relative to the exact optimum
  (0 = optimal), without the exact seed, per seed; medians over seeds. TPE, NSGA-II and random
  search with budget repair (the planner's default, `planner.repair`), and TPE and NSGA-II
  without it (the sampler meets the budget from constraint values alone).
- Exact: the solver's wall time per model and budget (median of 3).
- Overhead: seconds per trial outside the objective (ask, repair, decode, size, constraints,
  tell, the storage write), on ResNet-18 at 20×, over the last 100 of `--overhead-trials` trials,
  for TPE and NSGA-II and for in-memory, journal-file and SQLite storage; median and quartiles,
  and the sampler's share (its `ask`).

- Digits (`--digits`, about 10 minutes): at 30× and 45×, the planned plan (TPE seeded by the
  exact solver, then the 4 best by proxy and the exact solver's balanced plans at caps 4 and 2
  fine-tuned 2 epochs on validation data), random search with the same trials and refinement,
  and the uniform PQ plan at the planned plan's size (the largest power-of-two k that fits); each
  applied with the same 3 epochs of distillation; test accuracy, seeds 0–2.
- MNIST-1D (`--mnist1d`, about 12 minutes on 2 shared cores, 60% of it refinement): does the
  per-layer plan beat a uniform one of the same size on a task that does not saturate
  (zoo:mnist1d, 99.1% test accuracy uncompressed)? At 16×, 32× and 64× of the fp32 size
  (`--mnist1d-ratios`), seeds 0–2 (`--seeds N`: 0..N-1), three plans: planned (TPE seeded by
  the exact solver, `--mnist1d-trials` proxy trials, then refinement as for digits: the 4 best
  by proxy and the balanced plans fine-tuned 2 epochs, the best on validation data), random
  (random search, same trials and refinement, no exact seed) and uniform
  (`planner.presets.uniform_mix_at_size`: one PQ k or bit-width on every layer, or two
  neighbouring ones, within 1% of the planned plan's size, with the least uniform pruning that
  reaches it); the first conv and the classifier stay at 32 bits in all three. Each is applied
  and fine-tuned as `compplan apply` does (`CompressionJob`, 3 epochs of distillation, the best
  state on validation data) and scored on the test split; post-training (applied, not
  fine-tuned): test accuracy and the mean KL(original ‖ compressed) on the test split. Per
  ratio: medians over seeds, the per-seed planned − uniform differences in points, the sizes,
  each plan's per-layer settings, and each stage's wall time. One torch thread (`--threads`):
  on busy cores a second one made it ten times slower.

Prints everything and writes benchmarks/results/planner.json (planner_digits.json for
`--digits`, planner_mnist1d.json for `--mnist1d`). The gap and overhead models' weights are
their random initialisation (no downloads); the proxy's sensitivities come from one random
input. Digits and MNIST-1D train their zoo model once and cache it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from planner import Planner
from search_spaces import Budget, discover
from search_spaces.model_spec import load_model

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = (100, 300, 1000)


# Every layer searchable, keep 1 and fp32 activations: the proxy is separable, so the exact
# solver's answer is the true optimum.
KNOBS = {"keep": (1.0,), "act_bits": (32,), "lr_mult": (1.0,)}


def _planner(loaded, graph, ratio, **options) -> Planner:
    return Planner(
        loaded.module,
        loaded.example_inputs,
        graph=graph,
        knobs=KNOBS,
        protect_ends=False,
        budget=Budget(size_bytes=graph.baseline_bits / 8 / ratio),
        model_spec=graph.model_name,
        **options,
    )


def _best_after(trials, n: int) -> float | None:
    first = trials[trials["number"] < n]
    feasible = first[first["feasible"].fillna(False).astype(bool)]
    return None if feasible.empty else float(feasible["value"].min())


def _gap(loaded, graph, ratio, args, seeds) -> dict:
    reference = _planner(loaded, graph, ratio, storage="memory")
    exact = reference.exact()
    times = [exact["seconds"]] + [reference.exact()["seconds"] for _ in range(2)]
    entry = {
        "exact_proxy": exact["proxy"],
        "exact_seconds": statistics.median(times),
        "exact_size_bytes": exact["size_bytes"],
        "parameters": reference.study_space.size,
        "options": sum(len(f) for f in reference.study_space.frontier.values()),
    }
    variants = {
        "tpe": ("tpe", True),
        "nsga2": ("nsga2", True),
        "random": ("random", True),
        "tpe_no_repair": ("tpe", False),
        "nsga2_no_repair": ("nsga2", False),
    }
    for label, (sampler, repair) in variants.items():
        runs = []
        for seed in seeds:
            planner = _planner(
                loaded,
                graph,
                ratio,
                storage="memory",
                sampler=sampler,
                seed=seed,
                seed_exact=False,
                repair=repair,
            )
            start = time.perf_counter()
            result = planner.search(n_trials=args.trials)
            seconds = time.perf_counter() - start
            gaps = {}
            for n in CHECKPOINTS:
                if n <= args.trials:
                    best = _best_after(result.trials, n)
                    gaps[str(n)] = None if best is None else best / exact["proxy"] - 1
            runs.append({"seed": seed, "gap": gaps, "seconds": seconds})
            shown = ", ".join(f"{n}: {g:.2%}" for n, g in gaps.items() if g is not None)
            print(
                f"  {graph.model_name} ×{ratio:g} {label} seed {seed}: "
                f"gap {shown} ({seconds:.0f} s)"
            )
        entry[label] = {
            "runs": runs,
            "median_gap": {
                n: statistics.median(r["gap"][n] for r in runs if r["gap"].get(n) is not None)
                if any(r["gap"].get(n) is not None for r in runs)
                else None
                for n in runs[0]["gap"]
            },
        }
    return entry


def _overhead(loaded, graph, args) -> dict:
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        for sampler in ("tpe", "nsga2"):
            storages = {
                "memory": "memory",
                "journal": f"journal:{folder}/{sampler}.log",
                "sqlite": f"sqlite:///{folder}/{sampler}.db",
            }
            for name, url in storages.items():
                planner = _planner(
                    loaded, graph, 20, storage=url, sampler=sampler, seed_exact=False
                )
                timings = planner.search(n_trials=args.overhead_trials).timings.tail(100)
                overhead = (timings["seconds"] - timings["objective_seconds"]) * 1000
                sampler_ms = timings["ask_seconds"] * 1000
                objective = timings["objective_seconds"] * 1000
                q1, median, q3 = np.percentile(overhead, [25, 50, 75])
                result[f"{sampler}_{name}"] = {
                    "overhead_ms_median": float(median),
                    "overhead_ms_iqr": [float(q1), float(q3)],
                    "sampler_ms_median": float(np.median(sampler_ms)),
                    "objective_ms_median": float(np.median(objective)),
                    "trials": args.overhead_trials,
                }
                print(
                    f"  {sampler}, {name} storage, at trial {args.overhead_trials}: overhead "
                    f"{median:.1f} ms (IQR {q1:.1f}–{q3:.1f}), of which the sampler "
                    f"{np.median(sampler_ms):.1f} ms; objective {np.median(objective):.2f} ms",
                    flush=True,
                )
    return result


def _digits(args) -> dict:
    from planner.compress import CompressionJob
    from planner.presets import uniform_pq_at_size
    from planner.real import RealObjective
    from predictors.size import size_report
    from zoo.tasks import get_task

    loaded = load_model("zoo:digits")
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    task = get_task("digits")
    result: dict = {"uncompressed_test_accuracy": task.score(loaded.module), "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        for ratio in (30.0, 45.0):
            for seed in range(args.seeds):
                row = {"ratio": ratio, "seed": seed}
                budget = Budget(size_bytes=graph.baseline_bits / 8 / ratio)
                plans = {}
                for label, sampler in (("planned", "tpe"), ("random", "random")):
                    planner = Planner(
                        loaded.module,
                        loaded.example_inputs,
                        budget=budget,
                        storage="memory",
                        sampler=sampler,
                        seed=seed,
                        seed_exact=label == "planned",
                        calibration=[task.calibration()],
                        model_spec="zoo:digits",
                    )
                    planner.search(n_trials=args.digits_trials)
                    real = RealObjective(
                        loaded.module, loaded.example_inputs, task, epochs=2, seed=seed
                    )
                    plans[label] = planner.refine(real, candidates=4)["plan"]
                size = size_report(plans["planned"], graph).size_bytes
                plans["uniform"] = uniform_pq_at_size(graph, size, model="zoo:digits")
                for label, plan in plans.items():
                    path = Path(folder) / f"{label}.json"
                    plan.save(path)
                    job = CompressionJob(
                        "zoo:digits",
                        plan_path=path,
                        out=Path(folder) / f"{label}.cpz",
                        seed=seed,
                        progress=False,
                    ).run()
                    row[label] = {
                        "test_accuracy": job["score_after"],
                        "bytes": job["predicted_bytes"],
                    }
                print(
                    f"  digits ×{ratio:g} seed {seed}: "
                    + ", ".join(
                        f"{k} {v['test_accuracy']:.2%} ({v['bytes'] / 1024:.1f} KiB)"
                        for k, v in row.items()
                        if isinstance(v, dict)
                    ),
                    flush=True,
                )
                result["runs"].append(row)
    for ratio in (30.0, 45.0):
        runs = [r for r in result["runs"] if r["ratio"] == ratio]
        result[f"x{ratio:g}"] = {
            label: statistics.median(r[label]["test_accuracy"] for r in runs)
            for label in ("planned", "random", "uniform")
        }
        result[f"x{ratio:g}"]["planned_minus_uniform_points"] = [
            100 * (r["planned"]["test_accuracy"] - r["uniform"]["test_accuracy"]) for r in runs
        ]
    return result


MNIST1D = "zoo:mnist1d"
_LABELS = ("planned", "random", "uniform")


def _describe(plan, graph) -> dict[str, str]:
    """Each layer's setting and compression ratio, one line a layer: "vq k=8 m=3, keep 0.25,
    act 4, lr 0.1, ×35"."""
    from predictors.size import size_report

    lines = {}
    for layer in size_report(plan, graph).layers:
        lp = plan.get(layer.name)
        weights = lp.weights
        if weights is None:
            text = "fp32"
        elif weights.method == "vq":
            text = f"vq k={weights.k} m={weights.m}"
            if weights.d_tilde is not None:
                text += f" d~={weights.d_tilde}"
        elif weights.method == "bits":
            text = f"{weights.bits}-bit"
        else:
            text = weights.method
        if lp.keep < 1:
            text += f", keep {lp.keep:g}"
        if lp.act_bits < 32:
            text += f", act {lp.act_bits}"
        if lp.lr_mult != 1:
            text += f", lr {lp.lr_mult:g}"
        lines[layer.name] = f"{text}, ×{layer.ratio:.1f}"
    return lines


def _post_training(loaded, plan, task, seed, reference) -> dict:
    """Apply `plan` as `CompressionJob` does (same calibration, k-means seed), without
    fine-tuning: test accuracy and the mean KL(original ‖ compressed) on the test split."""
    import copy

    from torch.nn import functional as F

    from engine.apply import ApplyConfig, apply_plan_
    from engine.task import model_outputs

    student = copy.deepcopy(loaded.module)
    apply_plan_(
        student,
        plan,
        calibration=task.calibration(),
        example_inputs=loaded.example_inputs,
        config=ApplyConfig(seed=seed, progress=False),
        model_name=MNIST1D,
    )
    log_p = F.log_softmax(model_outputs(student, task.splits.test_x), dim=-1)
    kl = F.kl_div(log_p, reference, log_target=True, reduction="batchmean").item()
    return {"test_accuracy": task.score(student, "test"), "kl": kl}


def _mnist1d(args) -> dict:
    from torch.nn import functional as F

    from engine.task import model_outputs
    from planner.compress import CompressionJob
    from planner.presets import uniform_mix_at_size
    from planner.real import RealObjective
    from predictors.size import size_report
    from zoo.tasks import get_task

    started = time.perf_counter()
    # One intra-op thread: on cores shared with other work a second one stalls every op (ten
    # times slower on 2 busy cores), and this small network gains little from it anyway.
    torch.set_num_threads(args.threads)
    loaded = load_model(MNIST1D)
    graph = discover(loaded.module, loaded.example_inputs, model_name=MNIST1D)
    task = get_task("mnist1d")
    reference = F.log_softmax(model_outputs(loaded.module, task.splits.test_x), dim=-1)
    ratios = [float(r) for r in args.mnist1d_ratios.split(",")]
    seeds = list(range(args.seeds))
    result: dict = {
        "model": MNIST1D,
        "trials": args.mnist1d_trials,
        "seeds": seeds,
        "ratios": ratios,
        "protect_ends": True,
        "refine": {"candidates": 4, "epochs": 2},
        "finetune_epochs": 3,
        "torch_threads": args.threads,
        "uncompressed_test_accuracy": task.score(loaded.module, "test"),
        "baseline_bytes": graph.baseline_bits / 8,
        "runs": [],
    }
    stages = ("search", "refine", "uniform", "post_training", "finetune")
    totals = dict.fromkeys(stages, 0.0)
    with tempfile.TemporaryDirectory() as folder:
        for ratio in ratios:
            for seed in seeds:
                row: dict = {"ratio": ratio, "seed": seed}
                seconds = dict.fromkeys(stages, 0.0)
                budget = Budget(size_bytes=graph.baseline_bits / 8 / ratio)
                plans, chosen = {}, {}
                for label, sampler in (("planned", "tpe"), ("random", "random")):
                    start = time.perf_counter()
                    planner = Planner(
                        loaded.module,
                        loaded.example_inputs,
                        graph=graph,
                        budget=budget,
                        protect_ends=True,
                        storage="memory",
                        sampler=sampler,
                        seed=seed,
                        seed_exact=label == "planned",
                        calibration=[task.calibration()],
                        model_spec=MNIST1D,
                    )
                    planner.search(n_trials=args.mnist1d_trials)
                    seconds["search"] += time.perf_counter() - start
                    start = time.perf_counter()
                    real = RealObjective(
                        loaded.module, loaded.example_inputs, task, epochs=2, seed=seed
                    )
                    refined = planner.refine(real, candidates=4)
                    seconds["refine"] += time.perf_counter() - start
                    plans[label] = refined["plan"]
                    chosen[label] = {
                        "candidate": refined["candidate"],
                        "validation_accuracy": refined["value"],
                    }
                    print(
                        f"    ×{ratio:g} seed {seed} {label}: {refined['candidate']} "
                        f"(validation {refined['value']:.1%}), search and refinement "
                        f"{seconds['search'] + seconds['refine']:.0f} s so far",
                        flush=True,
                    )
                start = time.perf_counter()
                planned_bytes = size_report(plans["planned"], graph).total_bits / 8
                plans["uniform"] = uniform_mix_at_size(graph, planned_bytes, model=MNIST1D)
                seconds["uniform"] += time.perf_counter() - start
                chosen["uniform"] = {"candidate": plans["uniform"].provenance["preset"]}
                for label, plan in plans.items():
                    start = time.perf_counter()
                    post = _post_training(loaded, plan, task, seed, reference)
                    seconds["post_training"] += time.perf_counter() - start
                    path = Path(folder) / f"{label}.json"
                    plan.save(path)
                    start = time.perf_counter()
                    job = CompressionJob(
                        MNIST1D,
                        plan_path=path,
                        out=Path(folder) / f"{label}.cpz",
                        epochs=3,
                        seed=seed,
                        progress=False,
                    ).run()
                    seconds["finetune"] += time.perf_counter() - start
                    row[label] = {
                        "test_accuracy": job["score_after"],
                        "bytes": job["predicted_bytes"],
                        "post_training": post,
                        "best_epoch": job["best_epoch"],
                        **chosen[label],
                        "plan": _describe(plan, graph),
                    }
                row["uniform"]["size_ratio_to_planned"] = (
                    row["uniform"]["bytes"] / row["planned"]["bytes"]
                )
                row["seconds"] = seconds
                for stage in stages:
                    totals[stage] += seconds[stage]
                print(
                    f"  mnist1d ×{ratio:g} seed {seed}: "
                    + ", ".join(
                        f"{k} {row[k]['test_accuracy']:.1%} "
                        f"(post {row[k]['post_training']['test_accuracy']:.1%}, "
                        f"KL {row[k]['post_training']['kl']:.3f}; "
                        f"{row[k]['bytes'] / 1024:.2f} KiB)"
                        for k in _LABELS
                    )
                    + f" [{sum(seconds.values()):.0f} s]",
                    flush=True,
                )
                result["runs"].append(row)
    for ratio in ratios:
        runs = [r for r in result["runs"] if r["ratio"] == ratio]
        summary: dict = {
            label: statistics.median(r[label]["test_accuracy"] for r in runs) for label in _LABELS
        }
        summary["planned_minus_uniform_points"] = [
            100 * (r["planned"]["test_accuracy"] - r["uniform"]["test_accuracy"]) for r in runs
        ]
        summary["planned_minus_random_points"] = [
            100 * (r["planned"]["test_accuracy"] - r["random"]["test_accuracy"]) for r in runs
        ]
        summary["post_training"] = {
            label: {
                key: statistics.median(r[label]["post_training"][key] for r in runs)
                for key in ("test_accuracy", "kl")
            }
            for label in _LABELS
        }
        summary["post_training"]["planned_minus_uniform_points"] = [
            100
            * (
                r["planned"]["post_training"]["test_accuracy"]
                - r["uniform"]["post_training"]["test_accuracy"]
            )
            for r in runs
        ]
        summary["bytes"] = {
            label: statistics.median(r[label]["bytes"] for r in runs) for label in _LABELS
        }
        summary["uniform_size_ratio_to_planned"] = [
            r["uniform"]["size_ratio_to_planned"] for r in runs
        ]
        result[f"x{ratio:g}"] = summary
    # The goal, on the medians over seeds of the per-seed differences.
    gaps = {
        f"x{r:g}": statistics.median(result[f"x{r:g}"]["planned_minus_uniform_points"])
        for r in ratios
    }
    result["goal"] = {
        "asked": "planned >= 2 points above uniform at the highest ratio, never below at any",
        "median_planned_minus_uniform_points": gaps,
        "met": gaps[f"x{max(ratios):g}"] >= 2 and all(g >= 0 for g in gaps.values()),
    }
    result["seconds"] = {**totals, "total": time.perf_counter() - started}
    return result


def _print_mnist1d(result: dict) -> None:
    print(f"uncompressed test accuracy {result['uncompressed_test_accuracy']:.1%}")
    print(
        f"{'ratio':>6} {'':>8} {'planned':>8} {'random':>8} {'uniform':>8}   planned−uniform "
        "per seed (points)"
    )
    for ratio in result["ratios"]:
        s = result[f"x{ratio:g}"]
        post = s["post_training"]
        per_seed = " ".join(f"{d:+.1f}" for d in s["planned_minus_uniform_points"])
        post_seed = " ".join(f"{d:+.1f}" for d in post["planned_minus_uniform_points"])
        print(
            f"{ratio:>5g}× {'tuned':>8} "
            + " ".join(f"{s[k]:>8.1%}" for k in _LABELS)
            + f"   {per_seed}"
        )
        print(
            f"{'':>6} {'post':>8} "
            + " ".join(f"{post[k]['test_accuracy']:>8.1%}" for k in _LABELS)
            + f"   {post_seed}"
        )
        print(f"{'':>6} {'post KL':>8} " + " ".join(f"{post[k]['kl']:>8.3f}" for k in _LABELS))
        print(
            f"{'':>6} {'KiB':>8} "
            + " ".join(f"{s['bytes'][k] / 1024:>8.2f}" for k in _LABELS)
            + "   uniform/planned "
            + " ".join(f"{r:.4f}" for r in s["uniform_size_ratio_to_planned"])
        )
    goal = result["goal"]
    print(f"goal ({goal['asked']}): {'met' if goal['met'] else 'not met'}")
    print(
        "wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result["seconds"].items()),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--ratios", default="20,40")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds 0..N-1 (default 1; 3 for --digits, --mnist1d)",
    )
    parser.add_argument("--overhead-trials", type=int, default=1000)
    parser.add_argument("--digits", action="store_true", help="only the digits comparison")
    parser.add_argument("--digits-trials", type=int, default=300)
    parser.add_argument("--mnist1d", action="store_true", help="only the MNIST-1D comparison")
    parser.add_argument("--mnist1d-trials", type=int, default=300)
    parser.add_argument("--mnist1d-ratios", default="16,32,64")
    parser.add_argument(
        "--mnist1d-out",
        default=str(ROOT / "benchmarks" / "results" / "planner_mnist1d.json"),
        help="where --mnist1d writes its JSON",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for --mnist1d")
    args = parser.parse_args()
    if args.mnist1d:
        args.seeds = args.seeds or 3
        result = _mnist1d(args)
        out = Path(args.mnist1d_out)
        out.write_text(json.dumps(result, indent=2) + "\n")
        _print_mnist1d(result)
        print(f"wrote {out}")
        return
    if args.digits:
        args.seeds = args.seeds or 3
        digits = _digits(args)
        out = ROOT / "benchmarks" / "results" / "planner_digits.json"
        out.write_text(json.dumps(digits, indent=2) + "\n")
        print(json.dumps({k: v for k, v in digits.items() if k != "runs"}, indent=2))
        print(f"wrote {out}")
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)
    result: dict = {"trials": args.trials, "gap": {}}
    seeds = list(range(args.seeds or 1))
    for name in args.models.split(","):
        loaded = load_model(f"zoo:{name}", pretrained=False)
        graph = discover(loaded.module, loaded.example_inputs, model_name=f"zoo:{name}")
        for ratio in (float(r) for r in args.ratios.split(",")):
            print(f"{name} at ×{ratio:g}:", flush=True)
            result["gap"][f"{name}_x{ratio:g}"] = _gap(loaded, graph, ratio, args, seeds)
    loaded = load_model("zoo:resnet18", pretrained=False)
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:resnet18")
    print("planner overhead per trial (objective excluded), zoo:resnet18 at ×20:", flush=True)
    result["overhead"] = _overhead(loaded, graph, args)
    out = ROOT / "benchmarks" / "results" / "planner.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

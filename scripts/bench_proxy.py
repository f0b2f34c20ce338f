"""How well the proxy ranks plans as the model's output does, before and after measured layer
responses (`planner.response`), and what the exact plan of each proxy measures.

    .venv/bin/python scripts/bench_proxy.py [--models mnist1d,digits,resnet18,mobilenet_v2,minilm]
                                            [--plans 70] [--no-bits-check] [--quick]

Per model, in one run (weights compressed, activations fp32, keep 1, every layer searchable):
- the proxy as it was (`proxy_table(sensitivities=layer_sensitivities(...))`: a linear
  sensitivity to Gaussian weight noise) and as it is (`measured_proxy_table`), on the same
  calibration inputs, with their build times;
- `--plans` random feasible plans at each of three size budgets (×8, ×12, ×16 of fp32), on the
  budget's edge: the knapsack optimum of Σ w_l · e_l for random layer weights w_l (log-uniform
  over four decades) and each option's relative weight error e_l, so that every plan is one a
  search could prefer for some importance of the layers (`--sampler capped`: each layer's
  smallest option within a random error cap, then random layers stepped down until it fits;
  most such plans are broken at ×12 and ×16, where nothing ranks);
- each plan applied for real (every option's weight reconstructed by its method, k-means for VQ,
  once per option and cached), BatchNorm re-estimated on the calibration inputs as `apply`
  does, and its output's distortion measured on held-out inputs (KL for logits, 1 − cosine for
  MiniLM's embeddings) from the fp32 model, and from the fp32 model with BatchNorm re-estimated
  alone (on random weights and synthesized inputs that re-estimation moves the output as far as
  compression does);
- Spearman's rank correlation of each proxy with the measured distortion, per budget and over
  all plans; the exact solver's plan under each proxy at each budget, measured the same way, and
  its regret (its measured distortion / the best random plan's at that budget; < 1 beats them
  all); the interaction: the proxy's sum over layers / the measured distortion of whole plans
  (median and quartiles; a constant would not change the solver's choice, a spread does).

Models: zoo:mnist1d and zoo:digits (their tasks' data; bits and VQ), zoo:resnet18 and
zoo:mobilenet_v2 at 1×3×64×64 (their zoo weights; data-free calibration synthesized from
their BatchNorm statistics; b-bit options only, since k-means on every sampled VQ option of
11M weights would take hours), zoo:minilm on generated sentences (b-bit options only).

And (`--no-bits-check` to skip) issue 37's case: zoo:mnist1d, weights only at b bits, BatchNorm
re-estimated, code bits ≤ budget·N for 2, 3 and 4 bits per weight on average, candidate bits
{2, 4, 8} and {1, 2, 3, 4, 8, 16}, three calibration seeds (256 training inputs each): the exact
plan of each proxy and its test KL to the fp32 output.

And the proxy table's build time on ResNet-50 (1×3×224×224, all 54 layers' options, one example
input as `compplan search` has for a zoo model without data), before and after, A B A B
(`--build-time ''` to skip).

Prints everything and writes benchmarks/results/proxy.json. One torch thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from engine.calibrate import reestimate_batchnorm_
from planner.config import SearchConfig
from planner.exact import solve_choices
from planner.problem import Problem
from planner.proxy import layer_sensitivities, measured_proxy_table, proxy_table
from planner.response import OutputDistortion
from search_spaces.attention import layer_weight
from search_spaces.methods import BuildSettings, weight_method
from search_spaces.model_spec import load_model
from search_spaces.plan import Budget

ROOT = Path(__file__).resolve().parents[1]
RATIOS = (8.0, 12.0, 16.0)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _model_case(name: str, quick: bool) -> dict:
    """The model, its calibration and held-out inputs, its distortion and its knobs."""
    if name in ("mnist1d", "digits"):
        from zoo.tasks import get_task

        loaded = load_model(f"zoo:{name}")
        task = get_task(name)
        return {
            "loaded": loaded,
            "calibration": task.calibration(),
            "held_out": task.splits.test_x[: 256 if quick else 1000],
            "kind": "kl",
            "methods": ("bits", "vq"),
        }
    if name in ("resnet18", "mobilenet_v2"):
        from engine.datafree import synthesize_batches

        loaded = load_model(f"zoo:{name}", input_shape="1,3,64,64")
        shape = (1, 3, 64, 64)
        n = 32 if quick else 64
        calibration = synthesize_batches(
            loaded.module, shape, n_samples=n, steps=50, seed=0, progress=False
        )
        held_out = synthesize_batches(
            loaded.module, shape, n_samples=n, steps=50, seed=1, progress=False
        )
        return {
            "loaded": loaded,
            "calibration": calibration,
            "held_out": held_out,
            "kind": "kl",
            "methods": ("bits",),
        }
    if name == "minilm":
        from zoo.text import sentences, tokenize

        loaded = load_model("zoo:minilm")
        n = 32 if quick else 64
        texts = sentences(2 * n, seed=0)
        return {
            "loaded": loaded,
            "calibration": tokenize(texts[:n]),
            "held_out": tokenize(sentences(n, seed=1)),
            "kind": "cosine",
            "methods": ("bits",),
        }
    raise SystemExit(f"unknown model {name!r}")


class Measurer:
    """Applies plans (option index per layer) to a copy of the model and measures them."""

    def __init__(self, model, options, calibration, held_out, kind):
        self.model = copy.deepcopy(model).eval()
        self.options = options
        self.originals = {n: layer_weight(self.model, n).detach().clone() for n in options}
        self.cache: dict[tuple[str, int], torch.Tensor] = {}
        self.calibration = calibration
        self.norms = [
            m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        self.saved = [copy.deepcopy(m.state_dict()) for m in self.norms]
        self.distortion = OutputDistortion(self.model, [held_out], kind)
        # The fp32 model with BatchNorm re-estimated alone: a second reference, where that
        # re-estimation moves the output as far as compression does (random weights).
        self.reestimated_reference = self._outputs_with({})
        self.marginal: list[float] = []
        self.seconds = 0.0

    def weight(self, name: str, index: int) -> torch.Tensor:
        key = (name, index)
        if key not in self.cache:
            config = self.options[name].plans[index].weights
            original = self.originals[name]
            if config is None:
                self.cache[key] = original
            else:
                unit = weight_method(config.method)
                with torch.no_grad():
                    self.cache[key] = unit.build(original, config, BuildSettings(seed=0))().detach()
        return self.cache[key]

    def __call__(self, chosen: dict[str, int]) -> float:
        """The plan's distortion from the fp32 model (and, in `marginal`, from the fp32 model
        with BatchNorm re-estimated alone)."""
        started = time.perf_counter()
        outputs = self._outputs_with(chosen)
        self.marginal.append(self.distortion.between(outputs, self.reestimated_reference))
        self.seconds += time.perf_counter() - started
        return self.distortion.between(outputs, self.distortion.reference)

    def _outputs_with(self, chosen: dict[str, int]) -> list[torch.Tensor]:
        with torch.no_grad():
            for name, index in chosen.items():
                layer_weight(self.model, name).copy_(self.weight(name, index))
        if self.norms and isinstance(self.calibration, torch.Tensor):
            reestimate_batchnorm_(self.model, self.calibration)
        self.model.eval()
        try:
            return self.distortion.outputs()
        finally:
            for norm, state in zip(self.norms, self.saved, strict=True):
                norm.load_state_dict(state)
            with torch.no_grad():
                for name in chosen:
                    layer_weight(self.model, name).copy_(self.originals[name])


def random_plan(options, errors, limit_bits: float, rng) -> dict[str, int] | None:
    """A random plan within `limit_bits` (None if none is found).

    Each layer draws an error cap log-uniformly in [1e-4, 1] and takes its smallest option
    within it (uniform draws over option indices would be almost all coarse VQ options, whose
    plans all sit at the chance level, where nothing ranks); then random layers step down to
    their best smaller option until the plan fits."""
    chosen = {}
    for name, layer in options.items():
        cap = 10 ** rng.uniform(-4, 0)
        within = np.flatnonzero(errors[name] <= cap)
        if not len(within):
            within = np.array([int(np.argmin(errors[name]))])
        chosen[name] = int(within[np.argmin(layer.bits[within])])
    size = sum(int(options[n].bits[i]) for n, i in chosen.items())
    names = list(options)
    for _ in range(100_000):
        if size <= limit_bits:
            return chosen
        name = names[int(rng.integers(len(names)))]
        bits = options[name].bits
        smaller = np.flatnonzero(bits < bits[chosen[name]])
        if len(smaller):
            pick = int(smaller[np.argmin(errors[name][smaller])])
            size += int(bits[pick]) - int(bits[chosen[name]])
            chosen[name] = pick
    return None


def weighted_plan(options, errors, limit_bits: float, rng) -> dict[str, int] | None:
    """A random plan on the budget's edge: the knapsack optimum of Σ w_l · e_l(option) under
    `limit_bits`, for random layer weights w_l (log-uniform over four decades) and each option's
    relative weight error e_l. Such plans keep every layer at an error the budget can justify
    for some importance of the layers, as a search's candidates do."""
    weights = {n: 10 ** rng.uniform(-2, 2) for n in options}
    try:
        solution = solve_choices(
            {n: weights[n] * errors[n] for n in options},
            {"size": {n: options[n].bits.astype(float) for n in options}},
            {"size": limit_bits},
        )
    except ValueError:
        return None
    return dict(solution.chosen)


def _spearman(a, b) -> float:
    return float(spearmanr(a, b)[0])


def _quartiles(values) -> list[float]:
    q = np.percentile(values, [25, 50, 75])
    return [float(v) for v in q]


def bench_model(name: str, args) -> dict:
    torch.manual_seed(0)
    case = _model_case(name, args.quick)
    loaded = case["loaded"]
    model = loaded.module.eval()
    knobs = {"methods": case["methods"], "keep": (1.0,), "act_bits": (32,), "lr_mult": (1.0,)}
    config = SearchConfig(
        model_spec=f"zoo:{name}", budget=Budget(), protect_ends=False, knobs=knobs
    )
    problem = Problem(model, loaded.example_inputs, config, calibration=[])
    options = problem.options
    calibration = [case["calibration"]]

    started = time.perf_counter()
    sensitivities = layer_sensitivities(model, calibration, list(options))
    before = proxy_table(model, options, sensitivities=sensitivities)
    seconds_before = time.perf_counter() - started
    started = time.perf_counter()
    after = measured_proxy_table(model, options, calibration, distortion=case["kind"])
    seconds_after = time.perf_counter() - started
    print(
        f"{name}: {len(options)} layers, {sum(len(o) for o in options.values())} options; "
        f"proxy before {seconds_before:.1f} s, after {seconds_after:.1f} s "
        f"({after.facts.get('probes')} probes, BatchNorm re-estimated: "
        f"{after.facts.get('batchnorm_reestimated')})",
        flush=True,
    )

    measure = Measurer(model, options, case["calibration"], case["held_out"], case["kind"])
    # BatchNorm re-estimated with no layer compressed: the part of every plan's distortion
    # that no choice of options changes.
    floor = measure({})
    rng = np.random.default_rng(0)
    fp32_bits = problem.graph.baseline_bits
    plans, budgets_of = [], []
    per_budget = {}
    for ratio in RATIOS:
        limit = fp32_bits / ratio
        rows = []
        while len(rows) < args.plans:
            draw = weighted_plan if args.sampler == "weighted" else random_plan
            plan = draw(options, before.relative_errors, limit, rng)
            if plan is None:
                break
            rows.append(plan)
        plans.extend(rows)
        budgets_of.extend([ratio] * len(rows))
        per_budget[ratio] = {"limit_bits": limit, "plans": len(rows)}
    started = time.perf_counter()
    measured = np.array([measure(p) for p in plans])
    marginal = np.array(measure.marginal[-len(plans) :])
    print(
        f"  {len(plans)} random plans measured in {time.perf_counter() - started:.0f} s; "
        f"BatchNorm re-estimation alone: {floor:.4g}"
    )
    proxies = {
        "before": np.array([before.value(p) for p in plans]),
        "after": np.array([after.value(p) for p in plans]),
    }
    budgets_of = np.array(budgets_of)
    result: dict = {
        "layers": len(options),
        "options": int(sum(len(o) for o in options.values())),
        "methods": list(case["methods"]),
        "distortion": case["kind"],
        "batchnorm_reestimated": bool(after.facts.get("batchnorm_reestimated")),
        "proxy_seconds_before": seconds_before,
        "proxy_seconds": seconds_after,
        "plans": len(plans),
        "reestimation_floor": floor,
        "spearman": _spearman(proxies["after"], measured),
        "spearman_before": _spearman(proxies["before"], measured),
        "spearman_vs_reestimated": _spearman(proxies["after"], marginal),
        "spearman_vs_reestimated_before": _spearman(proxies["before"], marginal),
        "budgets": {},
    }
    for ratio in RATIOS:
        rows = budgets_of == ratio
        entry = per_budget[ratio]
        best_random = float(measured[rows].min())
        entry |= {
            "spearman": _spearman(proxies["after"][rows], measured[rows]),
            "spearman_before": _spearman(proxies["before"][rows], measured[rows]),
            "best_random": best_random,
            "median_random": float(np.median(measured[rows])),
        }
        for label, table in (("after", after), ("before", before)):
            solution = solve_choices(
                {n: table.errors[n] for n in options},
                {"size": {n: options[n].bits.astype(float) for n in options}},
                {"size": entry["limit_bits"]},
            )
            value = measure(dict(solution.chosen))
            suffix = "" if label == "after" else "_before"
            entry[f"exact{suffix}"] = value
            entry[f"regret{suffix}"] = value / best_random
        result["budgets"][f"x{ratio:g}"] = entry
        print(
            f"  x{ratio:g}: Spearman {entry['spearman']:.3f} "
            f"(before {entry['spearman_before']:.3f}); exact plan {entry['exact']:.4g} "
            f"(before {entry['exact_before']:.4g}), best random "
            f"{best_random:.4g}: regret {entry['regret']:.2f} "
            f"(before {entry['regret_before']:.2f})",
            flush=True,
        )
    ratio = proxies["after"] / np.maximum(measured, 1e-30)
    ratio_before = proxies["before"] / np.maximum(measured, 1e-30)
    result["sum_over_measured_quartiles"] = _quartiles(ratio)
    result["sum_over_measured_quartiles_before"] = _quartiles(ratio_before)
    result["measure_seconds"] = measure.seconds
    result["per_plan"] = {
        "budget": budgets_of.tolist(),
        "measured": measured.tolist(),
        "measured_vs_reestimated": marginal.tolist(),
        "proxy": proxies["after"].tolist(),
        "proxy_before": proxies["before"].tolist(),
    }
    print(
        f"  Spearman over all {len(plans)} plans: {result['spearman']:.3f} (before "
        f"{result['spearman_before']:.3f}); against the re-estimated fp32 model "
        f"{result['spearman_vs_reestimated']:.3f} (before "
        f"{result['spearman_vs_reestimated_before']:.3f}); proxy sum / measured: quartiles "
        + ", ".join(f"{v:.2f}" for v in result["sum_over_measured_quartiles"]),
        flush=True,
    )
    return result


def bits_check(args) -> dict:
    """Issue 37's case on zoo:mnist1d (see the module docstring)."""
    from torch.nn import functional as F

    from engine.task import model_outputs
    from zoo.tasks import get_task

    loaded = load_model("zoo:mnist1d")
    model = loaded.module.eval()
    task = get_task("mnist1d")
    test_x = task.splits.test_x
    sets = {"narrow": (2, 4, 8), "wide": (1, 2, 3, 4, 8, 16)}
    knobs = {"methods": ("bits",), "weight_bits": sets["wide"], "keep": (1.0,), "act_bits": (32,)}
    config = SearchConfig(
        model_spec="zoo:mnist1d", budget=Budget(), protect_ends=False, knobs=knobs
    )
    problem = Problem(model, loaded.example_inputs, config, calibration=[])
    options = problem.options
    elements = {n: int(np.prod(problem.graph.layers[n].weight_shape)) for n in options}
    bits_of = {n: [o.weights.bits for o in options[n].plans] for n in options}
    reference = F.log_softmax(model_outputs(model, test_x), dim=-1)
    result: dict = {"seeds": {}}
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        train_x = task.splits.train_x
        calibration = train_x[torch.randperm(len(train_x), generator=generator)[:256]]
        tables = {
            "before": proxy_table(
                model,
                options,
                sensitivities=layer_sensitivities(model, [calibration], list(options)),
            ),
            "after": measured_proxy_table(model, options, [calibration], distortion="kl"),
        }
        measure = Measurer(model, options, calibration, test_x, "kl")
        rows = {}
        for avg in (2, 3, 4):
            for set_name, allowed in sets.items():
                for label, table in tables.items():
                    keep = {
                        n: [i for i, b in enumerate(bits_of[n]) if b in allowed] for n in options
                    }
                    costs = {n: table.errors[n][keep[n]] for n in options}
                    uses = {
                        n: np.array([bits_of[n][i] * elements[n] for i in keep[n]], float)
                        for n in options
                    }
                    solution = solve_choices(
                        costs, {"size": uses}, {"size": avg * sum(elements.values())}
                    )
                    chosen = {n: keep[n][i] for n, i in solution.chosen.items()}
                    kl = _test_kl(measure, chosen, reference)
                    rows[f"{avg}bits/{set_name}/{label}"] = {
                        "kl": kl,
                        "bits": {n: bits_of[n][i] for n, i in chosen.items()},
                    }
        result["seeds"][seed] = rows
        print(
            f"mnist1d bits, calibration seed {seed}: "
            + "  ".join(f"{k} {v['kl']:.4f}" for k, v in rows.items()),
            flush=True,
        )
    keys = next(iter(result["seeds"].values())).keys()
    result["median_kl"] = {
        k: statistics.median(result["seeds"][s][k]["kl"] for s in result["seeds"]) for k in keys
    }
    return result


def _test_kl(measure: Measurer, chosen, reference) -> float:
    """Test KL(fp32 ‖ plan) with BatchNorm re-estimated on the measurer's calibration."""
    from torch.nn import functional as F

    from engine.task import model_outputs

    model = measure.model
    with torch.no_grad():
        for name, index in chosen.items():
            layer_weight(model, name).copy_(measure.weight(name, index))
    reestimate_batchnorm_(model, measure.calibration)
    model.eval()
    try:
        log_p = F.log_softmax(model_outputs(model, measure.distortion.inputs[0]), dim=-1)
        return F.kl_div(log_p, reference, log_target=True, reduction="batchmean").item()
    finally:
        for norm, state in zip(measure.norms, measure.saved, strict=True):
            norm.load_state_dict(state)
        with torch.no_grad():
            for name in chosen:
                layer_weight(model, name).copy_(measure.originals[name])


def build_time(spec: str, repeats: int) -> dict:
    """The proxy table's build on `spec` at its zoo input with one example input (what `compplan
    search` calibrates on for a zoo model without data), before and after, A B A B."""
    loaded = load_model(spec)
    model = loaded.module.eval()
    config = SearchConfig(model_spec=spec, budget=Budget(), protect_ends=False)
    problem = Problem(model, loaded.example_inputs, config, calibration=[])
    options, calibration = problem.options, [tuple(loaded.example_inputs)]
    names = list(options)
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(repeats):
        started = time.perf_counter()
        proxy_table(model, options, sensitivities=layer_sensitivities(model, calibration, names))
        times["before"].append(time.perf_counter() - started)
        started = time.perf_counter()
        table = measured_proxy_table(model, options, calibration, distortion="kl")
        times["after"].append(time.perf_counter() - started)
    ratios = [a / b for a, b in zip(times["after"], times["before"], strict=True)]
    result = {
        "model": spec,
        "layers": len(options),
        "options": int(sum(len(o) for o in options.values())),
        "probes": table.facts.get("probes"),
        "seconds_before": times["before"],
        "seconds_after": times["after"],
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }
    print(
        f"{spec} proxy build: before {statistics.median(times['before']):.1f} s, after "
        f"{statistics.median(times['after']):.1f} s (x{result['ratio_median']:.2f}, "
        f"{min(ratios):.2f}-{max(ratios):.2f}; {result['options']} options, "
        f"{result['probes']} probes)",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist1d,digits,resnet18,mobilenet_v2,minilm")
    parser.add_argument("--plans", type=int, default=70, help="random plans per budget")
    parser.add_argument(
        "--sampler",
        choices=("weighted", "capped"),
        default="weighted",
        help="random plans: knapsack optima of random layer weights (default), or random error "
        "caps stepped down to the budget",
    )
    parser.add_argument("--no-bits-check", action="store_true")
    parser.add_argument("--build-time", default="zoo:resnet50", help="'' to skip")
    parser.add_argument("--build-repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="20 plans a budget, fewer inputs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/proxy.json"))
    args = parser.parse_args()
    if args.quick:
        args.plans = 20
    torch.set_num_threads(1)
    started = time.perf_counter()
    result: dict = {
        "cpu": _cpu_model(),
        "torch_threads": 1,
        "plans_per_budget": args.plans,
        "ratios": list(RATIOS),
        "models": {},
    }
    for name in filter(None, args.models.split(",")):
        result["models"][name] = bench_model(name, args)
    if args.build_time:
        result["build_time"] = build_time(args.build_time, args.build_repeats)
    if not args.no_bits_check:
        result["mnist1d_bits"] = bits_check(args)
        for k, v in result["mnist1d_bits"]["median_kl"].items():
            print(f"  median test KL {k}: {v:.4f}")
    result["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

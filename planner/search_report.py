"""What `compplan search` and `compplan worker` show: the progress bar, the plan table, and the
summary as JSON and as text."""

from __future__ import annotations

import sys
from typing import Any

from planner.config import SearchConfig
from planner.render import mib, score_text, table
from planner.search import SearchOutcome
from planner.study_space import option_label
from predictors.size import size_report
from search_spaces.graph import ModelGraph
from search_spaces.plan import Plan

__all__ = [
    "SearchBar",
    "created_text",
    "plan_table",
    "search_summary",
    "search_text",
    "worker_summary",
    "worker_text",
]


class SearchBar:
    """The search's progress bar on stderr, with the best feasible trial so far.

    Args:
        total: the trials to run.
        enabled: False draws nothing (--json).
        count: "study" (the progress counts the whole study, so a resumed one jumps to its
            earlier trials) or "own" (a worker counts its own).
    """

    def __init__(self, total: int, enabled: bool, count: str = "study"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="trial", disable=not enabled, file=sys.stderr)
        self.count = count

    def update(self, finished: int, best: dict[str, Any] | None) -> None:
        self.bar.update(1 if self.count == "own" else finished - self.bar.n)
        if best is not None:
            self.bar.set_postfix_str(
                f"best {best['value']:.4g} at {best['size_bytes'] / 1024:,.0f} KiB"
            )

    def close(self) -> None:
        self.bar.close()


def plan_table(plan: Plan, graph: ModelGraph) -> str:
    """The plan layer by layer: weights, activation bits, keep, bytes and ratio."""
    report = size_report(plan, graph)
    rows = []
    for layer in report.layers:
        lp = plan.get(layer.name)
        rows.append(
            [
                layer.name,
                option_label(lp),
                str(lp.act_bits),
                f"{lp.keep:g}",
                f"{layer.bits / 8:,.0f}",
                f"{layer.ratio:.1f}×",
            ]
        )
    return table(rows, ["layer", "weights", "act bits", "keep", "bytes", "ratio"], {2, 3, 4, 5})


def created_text(storage: str, study: str) -> str:
    """What `compplan search --trials 0` prints: the study made, and how to join it."""
    return (
        f"created study '{study}' in {storage}; run trials in it with:\n"
        f"  compplan worker --storage '{storage}' --study {study} --trials N"
    )


def worker_summary(
    result, worker: str, storage: str, study: str, runtime: str | None = None
) -> dict[str, Any]:
    """The `compplan worker --json` document: this worker's trials and the study's best, and
    the runtime the study prices latency on."""
    return {
        "storage": storage,
        "study": study,
        "runtime": runtime,
        "worker": worker,
        "trials_here": int((result.trials["worker"] == worker).sum()),
        "trials_in_study": len(result.trials),
        "best": result.best,
    }


def worker_text(summary: dict[str, Any]) -> str:
    """What `compplan worker` prints."""
    text = (
        f"ran {summary['trials_here']} trials as {summary['worker']}; the study holds "
        f"{summary['trials_in_study']}"
    )
    best = summary["best"]
    if best:
        text += f"; best proxy {best['value']:.4g} at {mib(best['size_bytes'])} (#{best['number']})"
    return text


def search_summary(
    outcome: SearchOutcome, graph: ModelGraph, config: SearchConfig, *, plan_path: str
) -> dict[str, Any]:
    """The `compplan search --json` document."""
    result, refined = outcome.result, outcome.refined
    trials = result.trials
    summary: dict[str, Any] = {
        "plan": plan_path,
        "storage": result.storage,
        "study": result.study_name,
        "trials": len(trials),
        "feasible_trials": int(trials["feasible"].fillna(False).astype(bool).sum()),
        "best": result.best,
        # The solver's figures and whether it seeded this study, or {"note": why not}.
        "exact": result.exact
        and {k: v for k, v in result.exact.items() if k not in ("params", "plan")},
        # The written plan's figures, computed again for this model and budgets.
        "written": _written(outcome),
        "real": None,
        "baseline_bytes": graph.baseline_bits / 8,
        "budget": config.budget.to_dict(),
        # What the search could choose for every layer, defaults filled in.
        "knobs": config.knobs.resolved(),
        "runtime": config.priced_runtime,
        "verified": outcome.verified and [c.to_dict() for c in outcome.verified],
    }
    if refined is not None:
        lr = outcome.learning_rates
        summary["real"] = {
            "metric": refined["metric"],
            "validation_score": refined["value"],
            "proxy": summary["written"]["proxy"],
            "size_bytes": summary["written"]["size_bytes"],
            "candidates": list(refined["trials"]["user_attrs_candidate"]),
            "winner": refined["candidate"],
            "learning_rates": lr and {"score": lr["value"], "baseline_score": lr["baseline_value"]},
        }
    if config.backend == "ray":
        summary["failed_trials"] = int((trials["state"] == "FAIL").sum()) if len(trials) else 0
        summary["nodes"] = sorted(trials["node"].dropna().unique().tolist()) if len(trials) else []
    return summary


def _written(outcome: SearchOutcome) -> dict[str, Any]:
    """The written plan: which trial or candidate it is, and its figures as computed again
    (`SearchOutcome.evaluation`; the best trial's record where none was)."""
    e, best = outcome.evaluation, outcome.result.best
    if e is None:
        figures = {k: best.get(k) for k in ("size_bytes", "latency_ms", "macs")}
        return {"chosen": outcome.chosen, "proxy": best["value"], **figures}
    return {
        "chosen": outcome.chosen,
        "proxy": e.proxy,
        "size_bytes": e.size_bytes,
        "latency_ms": e.latency_ms,
        "macs": e.macs,
    }


def search_text(
    outcome: SearchOutcome, graph: ModelGraph, config: SearchConfig, *, plan_path: str
) -> str:
    """The text `compplan search` prints: the plan table and what the stages found."""
    result, refined, best = outcome.result, outcome.refined, outcome.result.best
    # The written plan's figures (recomputed), never a trial's record of them.
    written = _written(outcome)
    ratio = graph.baseline_bits / 8 / written["size_bytes"]
    latency = (
        ""
        if written["latency_ms"] is None
        else f", {written['latency_ms']:.2f} ms predicted on {config.priced_runtime}"
    )
    figures = f"proxy {written['proxy']:.4g}, {mib(written['size_bytes'])} ({ratio:.1f}×){latency}"
    if outcome.verified:  # not the proxy's best, necessarily: the best measured within
        headline = (
            f"{len(result.trials)} trials, best proxy {best['value']:.4g} (#{best['number']}); "
            f"kept {outcome.chosen}: {figures}"
        )
    elif refined is None:
        headline = f"best of {len(result.trials)} trials (#{best['number']}): {figures}"
    else:  # the proxy's best is not the plan written: say which is which
        headline = (
            f"proxy search: {len(result.trials)} trials, best proxy {best['value']:.4g} "
            f"(#{best['number']})"
        )
    lines = [plan_table(outcome.plan, graph), "", headline]
    if "validation_accuracy" in best:
        lines.append(f"validation accuracy after fine-tuning: {best['validation_accuracy']:.2%}")
    exact = result.exact
    if exact is not None and "proxy" in exact:
        seeded = "seeded the study" if exact.get("seeded") else exact.get("note", "not seeded")
        lines.append(
            f"exact solver (keep 1): proxy {exact['proxy']:.4g} in {exact['seconds']:.2f} s; "
            f"{seeded}"
        )
    elif exact is not None:
        lines.append(f"exact solver: no seed: {exact['note']}")
    if refined is not None:
        metric, epochs = refined["metric"], config.real.epochs
        lines.append(
            f"real objective: {len(refined['trials'])} candidates fine-tuned {epochs} "
            f"epoch{'s' * (epochs != 1)}; best validation {metric} "
            f"{score_text(metric, refined['value'])}: {outcome.chosen}, {figures}"
        )
    if outcome.verified:
        budget = config.budget.latency_ms
        lines.append(f"measured on {config.priced_runtime} (budget {budget:.2f} ms):")
        for c in outcome.verified:
            mark = "within" if c.within else "over"
            kept = "  ← kept" if c.label == outcome.chosen else ""
            lines.append(
                f"  {c.label}: proxy {c.proxy:.4g}, predicted {c.predicted_ms:.2f} ms, measured "
                f"{c.measured_ms:.2f} ms (×{c.measured_ratio:.3f}, {mark}){kept}"
            )
    if outcome.learning_rates is not None:
        lr = outcome.learning_rates
        lines.append(
            f"per-layer learning rates: validation {metric} "
            f"{score_text(metric, lr['baseline_value'])} → {score_text(metric, lr['value'])}"
        )
    lines.append(
        f"wrote {plan_path}; trials kept in {result.storage} (study '{result.study_name}')"
    )
    return "\n".join(lines)

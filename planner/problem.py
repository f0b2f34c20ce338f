"""`Problem`: one model's search problem, built once, eagerly.

Everything a search, the exact solver and refinement read about the model lives here: its graph,
the search space, each layer's options with their exact sizes, the proxy table (layer
sensitivities and every option's distortion), the study's parameter space, the size predictor and
the latency predictor. Building it checks the budgets against what the space can reach, so an
impossible budget is refused before any trial runs. After construction nothing in it changes:
backends, the solver and refinement only read it (and Ray ships it to its workers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from planner.budgets import (
    BudgetError,
    Reachable,
    format_bytes,
    format_bytes_pair,
    format_ms_pair,
    reachable_minimum,
    size_refusal,
)
from planner.config import SearchConfig
from planner.identity import StudyIdentity
from planner.options import layer_options
from planner.proxy import ProxyObjective, measured_proxy_table, proxy_table
from planner.storage import display_url
from planner.study_space import StudySpace
from predictors.size import SizePredictor
from search_spaces.discover import discover
from search_spaces.graph import UNNAMED_MODEL, ModelGraph
from search_spaces.plan import Plan
from search_spaces.space import SearchSpace

__all__ = ["Evaluation", "Problem", "format_bytes"]

log = logging.getLogger("compplan")

Inputs = Tensor | tuple[Tensor, ...]


@dataclass
class Evaluation:
    """A plan's size (bytes), predicted latency (ms, None without a predictor), MACs, proxy, and
    its budget constraints (`value / budget − 1`; ≤ 0 is within budget)."""

    size_bytes: float
    latency_ms: float | None
    macs: int
    proxy: float
    objective_seconds: float = 0.0
    constraints: dict[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.constraints.values())


class Problem:
    """The search problem of `model` under `config` (see the module docstring).

    Args:
        model: the trained model (not changed; put in eval mode).
        example_inputs: one input batch (a tensor or a tuple of tensors).
        config: the search's settings (budgets, space knobs, protect_ends).
        graph: the model's graph, when the caller has discovered it already.
        latency: the latency predictor object (`config.latency` is its document).
        calibration: input batches the proxy measures each layer's response on (default:
            `example_inputs`); an empty sequence prices every layer at its relative error.
        progress: progress bars on stderr over the layers while the proxy is built (seconds
            to minutes on a large model).

    Raises:
        BudgetError: a budget below what the space can reach.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Inputs,
        config: SearchConfig,
        *,
        graph: ModelGraph | None = None,
        latency=None,
        calibration: Sequence[Inputs] | None = None,
        progress: bool = False,
    ):
        self.model = model.eval()
        self.inputs = (
            (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
        )
        self.config = config
        self.budget = config.budget
        self.model_spec = config.model_spec
        self.graph = graph or discover(
            self.model, self.inputs, model_name=config.model_spec or UNNAMED_MODEL
        )
        self.space = SearchSpace(
            self.graph,
            config.knobs.to_knobs(),
            overrides=config.overrides,
            protect_ends=config.protect_ends,
        )
        self.latency = latency
        # What decides the trials, digested once: a backend resumes only a study made for it.
        self.identity = StudyIdentity.of(self.model, self.inputs, self.graph, config)
        self.sizes = SizePredictor(self.graph)
        self.reachable = self._check_budget()
        started = time.perf_counter()
        self.options = layer_options(self.space)
        calibration = [self.inputs] if calibration is None else list(calibration)
        if calibration:
            table = measured_proxy_table(
                self.model,
                self.options,
                calibration,
                distortion=self._distortion(calibration[0]),
                priced=self._priced_layers(),
                progress=progress,
            )
        else:
            table = proxy_table(self.model, self.options, progress=progress)
        self.proxy = ProxyObjective(self.model, self.space, table, self.options)
        self.study_space = StudySpace(self.space, self.options, table)
        facts = table.facts
        log.info(
            "proxy table: %d options in %.1f s%s",
            sum(len(o) for o in self.options.values()),
            time.perf_counter() - started,
            (
                f"; {facts['probes']} probes measured in {facts['distortion']}"
                + (", BatchNorm re-estimated" if facts["batchnorm_reestimated"] else "")
            )
            if facts
            else "",
        )

    def _distortion(self, batch: Inputs) -> str:
        """How the proxy measures the output's distortion: the fine-tuning's distillation loss
        (`--distill`), else the one the model's output calls for (`infer_distill`)."""
        from engine.distill import infer_distill

        if self.config.real.distill is not None:
            return self.config.real.distill
        with torch.no_grad():
            output = self.model(*batch) if isinstance(batch, tuple) else self.model(batch)
        try:
            return infer_distill(output)[0]
        except ValueError:
            return "mse"

    def _priced_layers(self) -> set[str]:
        """Layers whose response the proxy needs beyond their weight options: those with
        activation bits to choose, and the producers of groups that may be pruned."""
        priced = {name for name, c in self.space.layers.items() if any(b < 32 for b in c.act_bits)}
        for gid, choices in self.space.group_keep.items():
            if any(r < 1 for r in choices):
                priced.update(self.graph.groups[gid].layers)
        return priced

    def _check_budget(self) -> Reachable:
        budget = self.budget
        reachable = reachable_minimum(self.space, self.latency)
        if budget.size_bytes is not None and budget.size_bytes < reachable.size_bytes:
            raise BudgetError(size_refusal(self.space, budget.size_bytes, reachable.size_bytes))
        if (
            budget.latency_ms is not None
            and reachable.latency_ms is not None
            and budget.latency_ms < reachable.latency_ms
        ):
            wanted, fastest = format_ms_pair(budget.latency_ms, reachable.latency_ms)
            raise BudgetError(
                f"latency budget {wanted} is below the fastest plan this space reaches by the "
                f"predictor, {fastest}: raise --latency-budget to at least {fastest}, or allow "
                "lower keep ratios (--keep, or SearchKnobs(keep=...) in Python)"
                + self._pruning_note()
            )
        if budget.macs is not None and reachable.macs is not None and budget.macs < reachable.macs:
            raise BudgetError(
                f"MACs budget {budget.macs:,} is below the fewest this space reaches, "
                f"{reachable.macs:,}: raise --macs-budget to at least {reachable.macs:,}, or allow "
                "lower keep ratios (--keep, or SearchKnobs(keep=...) in Python)"
                + self._pruning_note()
            )
        return reachable

    def _pruning_note(self) -> str:
        """Why lower keep ratios cannot help, where no group may be pruned ("" otherwise)."""
        why = self.graph.pruning_off_reason
        return f" (this model prunes no channels: {why})" if why else ""

    def ratio(self, size_bytes: float) -> float:
        """The compression ratio of a plan of `size_bytes` against the fp32 model."""
        return self.graph.baseline_bits / 8 / size_bytes

    @property
    def study_name(self) -> str:
        return self.config.study_name(self.graph.model_name, identity=self.identity.digest)

    @property
    def fresh_study_name(self) -> str | None:
        """The study `--fresh` would start (None where --study names one: then a new name is
        the user's to give)."""
        if self.config.study is not None:
            return None
        return self.config.with_(fresh=True).study_name(
            self.graph.model_name, identity=self.identity.digest
        )

    def decode(self, params: Mapping[str, Any]) -> Plan:
        """The plan of a trial's parameters (repair's changes already merged in)."""
        return self.study_space.decode(params)

    def evaluate(self, plans: Sequence[Plan]) -> list[Evaluation]:
        """Size, predicted latency, MACs, proxy and budget constraints of each plan."""
        from predictors.latency.features import LatencyBatch, plan_layer_configs

        # The plans become arrays once; size, MACs and latency all read the same batch.
        batch = LatencyBatch.from_plans(self.graph, plans)
        sizes = self.sizes.predict(batch.plans)
        latencies = self.latency.predict(self.graph, batch) if self.latency is not None else None
        macs = plan_layer_configs(self.graph, batch).macs.sum(axis=1)
        evaluations = []
        for i, plan in enumerate(plans):
            started = time.perf_counter()
            value = self.proxy.value(plan)
            e = Evaluation(
                size_bytes=float(sizes[i]),
                latency_ms=None if latencies is None else float(latencies[i]),
                macs=int(macs[i]),
                proxy=value,
                objective_seconds=time.perf_counter() - started,
            )
            if self.budget.size_bytes is not None:
                e.constraints["size"] = e.size_bytes / self.budget.size_bytes - 1
            if self.budget.latency_ms is not None:
                e.constraints["latency"] = e.latency_ms / self.budget.latency_ms - 1
            if self.budget.macs is not None:
                e.constraints["macs"] = e.macs / self.budget.macs - 1
            evaluations.append(e)
        return evaluations

    def recheck(self, plan: Plan, what: str) -> Evaluation:
        """`plan` sized and predicted again for this model, predictor and budgets, so that what
        a search hands over holds now, whatever the study's trials recorded about it.

        Args:
            plan: the plan to hand over.
            what: the plan in words, for the message ("the best of 300 trials (#42)").

        Raises:
            PlannerError: the plan is over a budget (the message gives both figures).
        """
        from planner.errors import PlannerError

        (e,) = self.evaluate([plan])
        over = []
        if e.constraints.get("size", 0) > 0:
            size, budget = format_bytes_pair(e.size_bytes, self.budget.size_bytes)
            over.append(f"{size}, over the size budget of {budget}")
        if e.constraints.get("latency", 0) > 0:
            latency, budget = format_ms_pair(e.latency_ms, self.budget.latency_ms)
            over.append(f"{latency} predicted, over the latency budget of {budget}")
        if e.constraints.get("macs", 0) > 0:
            over.append(f"{e.macs:,} MACs, over the MACs budget of {self.budget.macs:,}")
        if over:
            raise PlannerError(
                f"{what} is {' and '.join(over)} for this model now, so no plan was written: the "
                "study's trials were scored for another model or settings, or edited; start a "
                "new study (--fresh, or another --study NAME)"
            )
        return e

    def with_figures(self, plan: Plan, e: Evaluation) -> Plan:
        """`plan` with its figures in its provenance (proxy, size, MACs, predicted latency),
        and with a latency, the runtime it is priced on and the predictor's reference ms: what
        `compplan apply --onnx` checks the exported file against."""
        figures = {"proxy": e.proxy, "size_bytes": e.size_bytes, "latency_ms": e.latency_ms}
        if e.latency_ms is not None:
            reference_ms = self.latency.reference_ms(self.graph)[0]
            figures |= {"runtime": self.config.priced_runtime, "reference_ms": reference_ms}
        return replace(plan, provenance={**plan.provenance, **figures, "macs": e.macs})

    def final_plan(self, params: Mapping[str, Any], **provenance: Any) -> Plan:
        """The plan of `params` for the user: model spec, fingerprint, budget, and provenance
        (what produced it, plus the search's config without the predictor's state)."""
        plan = self.decode(params)
        return Plan(
            layers=plan.layers,
            model=self.model_spec or self.graph.model_name,
            fingerprint=self.graph.fingerprint,
            budget=self.budget,
            provenance={
                "storage": display_url(self.config.storage),
                **provenance,
                "config": self.config.summary(),
            },
        )

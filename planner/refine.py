"""Refinement: the proxy search's best plans scored by an `Objective`, and per-layer learning
rates (P-Transfer) for the winner.

Both keep their trials in studies of their own beside the proxy study ("<study>-real" and
"<study>-lr", same storage), so a resumed run does not score a candidate twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

from planner.errors import PlannerError
from planner.objectives import Objective
from planner.problem import Problem
from planner.results import trial_params
from planner.solver import ExactSolver
from search_spaces.plan import Plan

__all__ = ["Refiner"]

log = logging.getLogger("compplan")


class Refiner:
    """Scores a proxy study's best plans, and tunes learning rates, with any `Objective`.

    Args:
        problem: the search problem.
        solver: its exact solver (for the balanced candidates).
        storage: the opened Optuna storage holding the proxy study.
        seed: seeds the learning-rate search's sampler.
        pareto: whether the proxy study is a Pareto search (no balanced candidates then).
    """

    def __init__(
        self, problem: Problem, solver: ExactSolver, storage, *, seed: int = 0, pareto=False
    ):
        self.problem = problem
        self.solver = solver
        self.storage = storage
        self.seed = seed
        self.pareto = pareto

    def candidates(self, study, n: int, balanced: tuple[float, ...]) -> list[tuple]:
        """(label, params, proxy, size) of the `n` best distinct feasible plans of the proxy
        `study`, then the balanced plan for each cap in `balanced`.

        Why the balanced candidates: the proxy adds the layers' errors as if they did not
        compound, so its best plans tend to squeeze a few layers to almost nothing (on zoo:digits
        at 45×, three convolutions at 1/32 bit per weight), and after fine-tuning they fall below
        a uniform plan of the same size. Plans that keep every layer within a few times the
        overall ratio do not; the objective picks among both kinds.

        Raises:
            PlannerError: the proxy study has no feasible trial (run the search first).
        """
        import optuna

        complete = [
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("feasible", False)
        ]
        if not complete:
            raise PlannerError(f"study '{study.study_name}' has no feasible trial: search first")
        chosen, seen = [], set()  # plans that store the same thing are one

        def add(label: str, params: dict[str, Any], proxy: float, size_bytes: float) -> None:
            key = self.problem.decode(params).to_json()
            if key not in seen:
                seen.add(key)
                chosen.append((label, params, proxy, size_bytes))

        for t in sorted(complete, key=lambda t: t.values[0]):
            if len(chosen) == n:
                break
            add(f"proxy trial {t.number}", trial_params(t), t.values[0], t.user_attrs["size_bytes"])
        if not self.pareto:
            for cap in balanced:
                answer = self.solver.balanced(cap, chosen[0][1])
                if answer is not None:
                    add(
                        f"balanced ×{cap:g}",
                        answer["params"],
                        answer["proxy"],
                        answer["size_bytes"],
                    )
        return chosen

    def refine(
        self, study, objective: Objective, *, candidates: int, balanced: tuple[float, ...]
    ) -> dict[str, Any]:
        """Score `candidates(study, ...)` with `objective` in the study "<study>-real", each
        step's value reported so that Optuna's median pruner can stop a candidate that falls
        behind the others. Candidates already scored there (a resumed run) are not run again.

        Returns:
            {"plan": best Plan, "value" (and under the objective's metric name, e.g.
            "accuracy"), "proxy", "size_bytes", "candidate" (which one won: "proxy trial N" or
            "balanced ×C"), "trials": DataFrame}.
        """
        import optuna

        chosen = self.candidates(study, candidates, balanced)
        name = f"{study.study_name}-real"
        scored = optuna.create_study(
            storage=self.storage,
            study_name=name,
            direction=objective.direction,
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            load_if_exists=True,
        )
        done = {t.user_attrs.get("candidate") for t in scored.trials if t.state.is_finished()}
        for label, params, proxy, size_bytes in chosen:
            if label in done:
                continue
            trial = scored.ask()
            trial.set_user_attr("candidate", label)
            trial.set_user_attr("params", json.dumps(params))
            trial.set_user_attr("proxy", proxy)
            trial.set_user_attr("size_bytes", size_bytes)

            def report(step: int, value: float, trial=trial) -> bool:
                trial.report(value, step)
                return trial.should_prune()

            outcome = objective(self.problem.decode(params), report)
            if outcome.pruned:
                scored.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                scored.tell(trial, outcome.value)
            log.info(
                "%s: %s, %s %.4f%s",
                name,
                label,
                objective.metric,
                outcome.value,
                " (pruned)" if outcome.pruned else "",
            )
        best = scored.best_trial
        candidate = best.user_attrs["candidate"]
        # The proxy study's trial the winner is, where it is one (not a balanced plan).
        trial = candidate.removeprefix("proxy trial ")
        plan = self.problem.final_plan(
            json.loads(best.user_attrs["params"]),
            source=f"compplan search ({objective.metric} objective)",
            study=name,
            proxy_study=study.study_name,
            candidate=candidate,
            **({"trial": int(trial)} if trial.isdigit() else {}),
            **{f"validation_{objective.metric}": best.value},
        )
        return {
            "plan": plan,
            "value": best.value,
            "metric": objective.metric,
            objective.metric: best.value,
            "proxy": best.user_attrs["proxy"],
            "size_bytes": best.user_attrs["size_bytes"],
            "candidate": best.user_attrs["candidate"],
            "trials": scored.trials_dataframe(attrs=("number", "state", "value", "user_attrs")),
        }

    def tune_learning_rates(
        self, study_name: str, objective: Objective, plan: Plan, *, trials: int = 16
    ) -> dict[str, Any]:
        """P-Transfer: per-layer fine-tune learning-rate multipliers for a fixed plan.

        The compression choices of `plan` stay as they are; each layer's `lr_mult` is searched
        among the space's choices ({0, 0.01, 0.1, 1} by default; 0 freezes the layer) by
        Optuna's evolutionary NSGA-II sampler, each candidate scored by `objective`. The first
        candidate is the plan's own multipliers, so the answer is never worse on validation data
        than the plan as it was. Trials go to the study "<study_name>-lr" and resume.

        Returns:
            {"plan": the plan with the best multipliers, "value", "baseline_value",
            "trials": DataFrame}.
        """
        import optuna
        from optuna.distributions import CategoricalDistribution

        distributions = {
            f"{name}/lr_mult": CategoricalDistribution(choices.lr_mult)
            for name, choices in self.problem.space.layers.items()
            if len(choices.lr_mult) > 1
        }
        name = f"{study_name}-lr"
        study = optuna.create_study(
            storage=self.storage,
            study_name=name,
            direction=objective.direction,
            sampler=optuna.samplers.NSGAIISampler(population_size=8, seed=self.seed),
            load_if_exists=True,
        )
        if not study.trials:
            study.enqueue_trial(
                {key: plan.get(key.rsplit("/", 1)[0]).lr_mult for key in distributions}
            )

        def with_multipliers(params: dict[str, Any]) -> Plan:
            layers = dict(plan.layers)
            for key, value in params.items():
                layer = key.rsplit("/", 1)[0]
                layers[layer] = replace(plan.get(layer), lr_mult=value)
            return replace(plan, layers=layers)

        for _ in range(max(0, trials - len(study.trials))):
            trial = study.ask(distributions)
            outcome = objective(with_multipliers(trial.params))
            study.tell(trial, outcome.value)
            log.info(
                "learning rates: trial %d, %s %.4f", trial.number, objective.metric, outcome.value
            )
        best = study.best_trial
        tuned = with_multipliers(best.params)
        provenance = {
            **tuned.provenance,
            "lr_study": name,
            f"lr_validation_{objective.metric}": best.value,
        }
        return {
            "plan": replace(tuned, provenance=provenance),
            "value": best.value,
            "baseline_value": study.trials[0].value,
            "trials": study.trials_dataframe(attrs=("number", "state", "value", "params")),
        }

"""The real objective: apply a plan, fine-tune briefly by distillation, and score it on the task.

This is the expensive fidelity of the search (DESIGN.md, Search): seconds to minutes a plan where
the proxy takes microseconds. The planner spends it on the proxy search's best candidates
(`Planner.refine`). The task's score (`engine.task.Task.score`: accuracy, agreement with the
original, cosine similarity) is measured on its validation split, so that the test split stays
unseen by the search; it is reported after every epoch, so that a pruner can stop a poor candidate
early.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from engine.apply import ApplyConfig, apply_plan_
from engine.finetune import FinetuneConfig, StopFinetune, finetune
from planner.objectives import Outcome, Report
from search_spaces.plan import Plan

__all__ = ["RealObjective"]


class RealObjective:
    """Apply, fine-tune for `epochs` and evaluate a plan of `model` on `task`: an
    `planner.objectives.Objective` whose value is the task's validation score (higher is better),
    named by its metric.

    Args:
        model: the trained model (the teacher; not changed).
        example_inputs: one input batch.
        task: an `engine.task.Task`: training batches, calibration inputs, score.
        epochs: fine-tune epochs per plan.
        lr: the base learning rate (per-layer multipliers come from the plan); None:
            `engine.finetune.default_lr(model)`.
        distill: the distillation loss; None: the task's, else chosen from the model's output.
        seed: seeds k-means and fine-tuning, the same for every plan.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor | tuple[Tensor, ...],
        task,
        *,
        epochs: int = 2,
        lr: float | None = None,
        distill: str | None = None,
        seed: int = 0,
    ):
        from engine.finetune import default_lr
        from engine.task import distill_for

        self.model = model.eval()
        self.inputs = example_inputs
        self.task = task
        self.metric = getattr(task, "metric", "score")
        self.epochs = epochs
        self.lr = lr if lr is not None else default_lr(model)
        self.distill = distill or distill_for(task, model, task.calibration()[:2])[0]
        self.seed = seed

    direction = "maximize"

    def __call__(self, plan: Plan, report: Report | None = None) -> Outcome:
        """Evaluate `plan`. `report(step, accuracy)` is called with step 0 right after applying
        and step e after epoch e; when it returns True the run stops (pruned)."""
        student = copy.deepcopy(self.model)
        apply_plan_(
            student,
            plan,
            calibration=self.task.calibration(),
            example_inputs=self.inputs,
            config=ApplyConfig(seed=self.seed, progress=False),
        )
        accuracies = [self.task.score(student, "val")]
        if report is not None and report(0, accuracies[0]):
            return Outcome(tuple(accuracies), pruned=True)

        def on_epoch_end(epoch: int, trained: nn.Module) -> dict:
            accuracy = self.task.score(trained, "val")
            accuracies.append(accuracy)
            if report is not None and report(epoch + 1, accuracy):
                raise StopFinetune("pruned", metrics={self.metric: accuracy})
            return {self.metric: accuracy}

        if self.epochs > 0:
            config = FinetuneConfig(
                epochs=self.epochs,
                lr=self.lr,
                lr_min=self.lr * 1e-3,
                distill=self.distill,
                seed=self.seed,
                progress=False,
            )
            loader = self.task.train_batches(seed=self.seed)
            result = finetune(
                student, self.model, loader, plan, config=config, on_epoch_end=on_epoch_end
            )
            return Outcome(tuple(accuracies), pruned=result.stopped_early)
        return Outcome(tuple(accuracies), pruned=False)

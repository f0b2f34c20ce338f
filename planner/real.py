"""The real objective: apply a plan, fine-tune briefly by distillation, and measure accuracy.

This is the expensive fidelity of the search (DESIGN.md, Search): seconds to minutes a plan where
the proxy takes microseconds. The planner spends it on the proxy search's best candidates
(`Planner.refine`). Accuracy is measured on the task's validation split, so that the test split
stays unseen by the search; it is reported after every epoch, so that a pruner can stop a poor
candidate early.
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
    `planner.objectives.Objective` whose value is validation accuracy (higher is better).

    Args:
        model: the trained model (the teacher; not changed).
        example_inputs: one input batch.
        task: a zoo task (`zoo.tasks`): training batches, calibration inputs, accuracy.
        epochs: fine-tune epochs per plan.
        lr: the base learning rate (per-layer multipliers come from the plan).
        seed: seeds k-means and fine-tuning, the same for every plan.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor | tuple[Tensor, ...],
        task,
        *,
        epochs: int = 2,
        lr: float = 1e-3,
        seed: int = 0,
    ):
        self.model = model.eval()
        self.inputs = example_inputs
        self.task = task
        self.epochs = epochs
        self.lr = lr
        self.seed = seed

    direction = "maximize"
    metric = "accuracy"

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
        accuracies = [self.task.accuracy(student, "val")]
        if report is not None and report(0, accuracies[0]):
            return Outcome(tuple(accuracies), pruned=True)

        def on_epoch_end(epoch: int, trained: nn.Module) -> dict:
            accuracy = self.task.accuracy(trained, "val")
            accuracies.append(accuracy)
            if report is not None and report(epoch + 1, accuracy):
                raise StopFinetune("pruned", metrics={"accuracy": accuracy})
            return {"accuracy": accuracy}

        if self.epochs > 0:
            config = FinetuneConfig(
                epochs=self.epochs,
                lr=self.lr,
                lr_min=self.lr * 1e-3,
                seed=self.seed,
                progress=False,
            )
            loader = self.task.train_loader(seed=self.seed)
            result = finetune(
                student, self.model, loader, plan, config=config, on_epoch_end=on_epoch_end
            )
            return Outcome(tuple(accuracies), pruned=result.stopped_early)
        return Outcome(tuple(accuracies), pruned=False)

"""Task specs: how a task is named on the command line, in a study's config and in an exported
file, and how a spec becomes a `Task` again.

    zoo:NAME                 a zoo task (zoo:digits, zoo:mnist1d)
    data:PATH                labelled arrays, classification accuracy (`LabelledTask`)
    inputs:PATH              inputs only, scored against the original model (`FidelityTask`)
    package.module:callable  a callable of the user's own returning a Task (no arguments)
    path/to/file.py:callable

The trust rule is the model specs' (`engine.export.load`): a spec read from a study or a file
that would import and run code (the last two forms) resolves only when the caller trusts it
(`trusted=True`, the CLI's `--trust-specs`); a spec the user typed is trusted. Data files are read
without pickle, so `data:` and `inputs:` need no trust, nor do zoo tasks.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from engine.task import Task, TaskError, check_task
from engine.task_data import FidelityTask, LabelledTask, check_model_runs

__all__ = [
    "inputs_file_of",
    "is_code_spec",
    "load_with_task",
    "portable_spec",
    "resolve_task",
    "task_spec_from",
]


def task_spec_from(
    *, task: str | None = None, data: str | None = None, inputs: str | None = None
) -> str | None:
    """The one spec the CLI's --task, --data and --inputs give (None: none of them).

    Raises:
        TaskError: more than one of them.
    """
    given = [(flag, value) for flag, value in (("task", task), ("data", data), ("inputs", inputs))]
    given = [(flag, value) for flag, value in given if value]
    if len(given) > 1:
        flags = " and ".join(f"--{flag}" for flag, _ in given)
        raise TaskError(f"{flags} both name a task; give one of --task, --data, --inputs")
    if not given:
        return None
    flag, value = given[0]
    return portable_spec(value if flag == "task" else f"{flag}:{value}")


def portable_spec(spec: str) -> str:
    """`spec` with its file path made absolute, so that it resolves from any folder."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("data", "inputs"):
        return f"{kind}:{Path(rest).resolve()}"
    where, sep, attr = spec.rpartition(":")
    if sep and where.endswith(".py"):
        return f"{Path(where).resolve()}:{attr}"
    return spec


def is_code_spec(spec: str) -> bool:
    """Whether resolving `spec` imports and runs code of the user's (not zoo:, data:, inputs:)."""
    return spec.partition(":")[0] not in ("zoo", "data", "inputs")


def inputs_file_of(spec: str | None) -> str | None:
    """The data file of a data: or inputs: spec, whose `x` gives the model's example inputs
    (their dtype, token ids included: `load_model(inputs=...)`); None for other specs."""
    kind, _, path = (spec or "").partition(":")
    return path if kind in ("data", "inputs") else None


def resolve_task(
    spec: str,
    model: nn.Module | None = None,
    *,
    trusted: bool = True,
    seed: int = 0,
    distill: str | None = None,
    source: str = "the command line",
) -> Task:
    """The task `spec` names.

    Args:
        spec: a task spec (module docstring).
        model: the original model: an inputs: task scores against it; a labelled task checks
            that its outputs fit the labels.
        trusted: whether a spec of code may be imported and run (False for a spec read from a
            study or a file the user did not vouch for).
        seed: seeds the split of data that has no held-out arrays.
        distill: an inputs: task's distillation loss, overriding the one inferred.
        source: where the spec came from, for messages.

    Raises:
        TaskError: the spec does not resolve, may not run untrusted, or does not fit the model.
    """
    kind, _, rest = spec.partition(":")
    if kind == "zoo":
        from zoo.tasks import get_task

        try:
            return get_task(rest, seed=0)
        except ValueError as error:
            raise TaskError(f"task '{spec}': {error}") from None
    if kind == "data":
        task = LabelledTask.from_file(rest, seed=seed)
        if model is not None:
            task.check_fits(model)
        return task
    if kind == "inputs":
        if model is None:
            raise TaskError(f"task '{spec}' scores against the original model; pass the model")
        return FidelityTask.from_file(model, rest, seed=seed, distill=distill)
    if not trusted:
        raise TaskError(
            f"{source} names the task spec '{spec}', which imports and runs code; pass "
            "--trust-specs if you trust it (trusted=True in Python), or name the task yourself "
            "with --task, --data or --inputs"
        )
    return _call_task(spec)


def _call_task(spec: str) -> Task:
    from search_spaces.model_spec import ModelSpecError, import_callable, user_code

    try:
        factory = import_callable(spec, what="task")
        with user_code(f"calling task '{spec}'"):
            task = factory()
    except ModelSpecError as error:
        raise TaskError(str(error)) from None
    return check_task(task, f"task '{spec}'")


def load_with_task(
    model_spec: str,
    task_spec: str | None = None,
    *,
    input_shape=None,
    pretrained: bool = True,
    distill: str | None = None,
    trusted: bool = True,
    source: str = "the command line",
):
    """The model a spec names and its task: (`LoadedModel`, task spec, `Task` or None).

    The example inputs come from the task where it has them: a data: or inputs: file's `x`
    (their dtype: token ids), or a task of code's calibration inputs when no input shape is
    given. Without a task spec, a zoo model's own task ("zoo:digits") is the task. Every check
    that the data fits the model runs here, before anything slow.

    Raises:
        ModelSpecError, DataFileError, TaskError: what does not resolve or fit, in one line.
    """
    from search_spaces.model_spec import load_model

    task, inputs = None, inputs_file_of(task_spec)
    if task_spec and inputs is None:
        task = resolve_task(task_spec, trusted=trusted, source=source)
        if not model_spec.startswith("zoo:"):
            inputs = task.calibration()  # of the task's dtype; --input-shape must agree
    flag = "--data" if (task_spec or "").startswith("data:") else "--inputs"
    loaded = load_model(
        model_spec, input_shape=input_shape, pretrained=pretrained, inputs=inputs, inputs_flag=flag
    )
    if task_spec is None and loaded.task:
        task_spec = f"zoo:{loaded.task}"
        task = resolve_task(task_spec)
    if task is None and task_spec:
        task = resolve_task(
            task_spec, loaded.module, trusted=trusted, distill=distill, source=source
        )
    elif task is not None:
        check_model_runs(loaded.module, task.calibration(), f"task '{task_spec}'")
    return loaded, task_spec, task

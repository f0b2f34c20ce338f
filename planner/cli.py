"""The `compplan` command: a thin layer over the Python API.

Every command is a few lines of Python (see README.md, "From Python"). Bad input of any kind ends
with one line on stderr, `compplan: error: ...`, saying what to do, and exit code 2; an internal
error ends with exit code 1 (set COMPPLAN_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from planner.cli_parser import USAGE_ERROR, build_parser
from planner.render import mib as _mib
from planner.render import print_json as _print_json
from planner.storage import display_url
from search_spaces.printable import printable

__all__ = ["main"]

INTERNAL_ERROR = 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 1 internal error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return int(done.code or 0)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("compplan: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    if not _progress_shown(args):  # no bar: long stages say where the time goes in lines
        logging.getLogger("compplan.progress").setLevel(logging.INFO)
    from engine.export import ExportError
    from engine.task import TaskError
    from planner.compress import CompressionError
    from predictors.latency import PredictorError, ProfileError, RecordsError
    from predictors.profile import MeasurementError
    from search_spaces import DiscoveryError, PlanError
    from search_spaces.data_file import DataFileError
    from search_spaces.input_file import InputFileError
    from search_spaces.model_spec import ModelSpecError
    from search_spaces.output_file import OutputFileError

    usage_errors = (
        PlanError,
        DiscoveryError,
        ModelSpecError,
        ExportError,
        CompressionError,
        PredictorError,
        ProfileError,
        RecordsError,
        MeasurementError,
        TaskError,
        DataFileError,
        OutputFileError,
        InputFileError,
    )
    command = globals()["_" + args.command.replace("-", "_")]  # fit-latency: _fit_latency
    with warnings.catch_warnings(record=True) as caught:
        code = _run(command, args, usage_errors)
    if code != USAGE_ERROR:  # a refusal is one line: libraries' warnings would only blur it
        _print_warnings(caught)
    return code


def _run(command, args: argparse.Namespace, usage_errors: tuple[type[Exception], ...]) -> int:
    """`command(args)`, with every way it can end turned into an exit code (and one line); a
    study file the command created, failing before it held one whole record, is removed."""
    from planner.cli_files import command_storage_file

    storage = command_storage_file(args)
    existed = storage is None or os.path.lexists(storage)
    code = _dispatch(command, args, usage_errors, storage)
    if code != 0 and not existed and storage.is_file() and _holds_no_record(storage):
        storage.unlink()
    return code


def _holds_no_record(storage: Path) -> bool:
    """Empty, or a journal cut inside its first line (a SQLite file is removed where made)."""
    with open(storage, "rb") as file:
        head = file.read(1 << 16)
    return not head or (not head.startswith(b"SQLite format 3") and b"\n" not in head)


def _dispatch(command, args, usage_errors, storage: Path | None) -> int:
    from planner.cli_files import check_command_files
    from search_spaces.data_file import set_max_data_bytes

    try:
        check_command_files(args)
        set_max_data_bytes(getattr(args, "max_data_bytes", None))
        return command(args)
    except usage_errors as error:
        return _fail(str(error), USAGE_ERROR)
    except BrokenPipeError:  # `compplan ... | head` closed our stdout: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, UnicodeError) as error:
        if getattr(error, "filename", None):
            return _fail(f"{error.strerror or error}: {error.filename}", USAGE_ERROR)
        where = f" (the study's storage is {storage})" if storage is not None else ""
        return _fail(f"{getattr(error, 'strerror', None) or error}{where}", USAGE_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except SystemExit as error:  # the user's model or task called exit() while it ran
        return _fail(
            f"the model or task code called exit({error.code!r}) while compplan ran it; a model "
            "must return its outputs, not exit",
            USAGE_ERROR,
        )
    except RecursionError:
        return _fail(
            "the model or an input nests too deeply for Python (RecursionError)", USAGE_ERROR
        )
    except Exception as error:  # the last line of defence: one line, not a traceback
        if os.environ.get("COMPPLAN_DEBUG"):
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        return _fail(
            f"internal error: {type(error).__name__}: {first} (set COMPPLAN_DEBUG=1 for the "
            "traceback and report it)",
            INTERNAL_ERROR,
        )


def _progress_shown(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr only where someone watches it: a terminal, and no --json.
    Redrawn into a log or a pipe, a bar is noise around the one line an error is."""
    return not getattr(args, "json", False) and sys.stderr.isatty()


def _fail(message: str, code: int) -> int:
    """Print `message` as one line (control characters from files or URLs shown escaped)."""
    print(f"compplan: error: {printable(message)}", file=sys.stderr)
    return code


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Libraries' warnings, one line each, once each, after the command's own output."""
    shown = set()
    for warning in caught:
        line = f"{warning.category.__name__}: {str(warning.message).strip()}"
        if line not in shown:
            shown.add(line)
            print(f"compplan: warning: {printable(line)}", file=sys.stderr)


class _OneLineFormatter(logging.Formatter):
    """compplan's log lines, with control characters from names in them shown escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _graph(args: argparse.Namespace, *, pretrained: bool = True):
    from search_spaces.model_spec import load_model

    inputs = args.inputs or getattr(args, "data", None)  # their x: example inputs, of their dtype
    flag = "--inputs" if args.inputs else "--data"
    loaded = load_model(
        args.model,
        input_shape=args.input_shape,
        pretrained=pretrained,
        inputs=inputs,
        inputs_flag=flag,
    )
    return loaded, _discovered(args, loaded)


def _discovered(args: argparse.Namespace, loaded):
    """The loaded model's graph, with a "reading MODEL..." line on a terminal meanwhile."""
    from search_spaces import discover

    if _progress_shown(args):  # a large model takes seconds to trace the first time
        print(f"reading {args.model}...", end="\r", file=sys.stderr, flush=True)
    graph = discover(loaded.module, loaded.example_inputs, model_name=args.model)
    if _progress_shown(args):
        print("\033[K", end="", file=sys.stderr, flush=True)  # erase the line
    return graph


def _task_spec(args: argparse.Namespace) -> str | None:
    """The task spec --task, --data or --inputs gives (None: none of them)."""
    from engine.task_spec import task_spec_from

    return task_spec_from(task=args.task, data=args.data, inputs=args.inputs)


def _plan_and_graph(args: argparse.Namespace, *, pretrained: bool = True):
    """(plan, loaded model, graph): the plan --plan or --preset names, checked against the graph.

    A plan file is read before the model is discovered, so that a missing or malformed file is
    reported at once rather than after a slow discovery."""
    from planner.presets import make_preset
    from search_spaces import Plan, validate_plan

    if getattr(args, "preset", None) is not None and getattr(args, "plan", None) is None:
        loaded, graph = _graph(args, pretrained=pretrained)
        return make_preset(graph, args.preset, model=args.model), loaded, graph
    plan = Plan.load(args.plan)
    loaded, graph = _graph(args, pretrained=pretrained)
    validate_plan(plan, graph)
    return plan, loaded, graph


def _output(args: argparse.Namespace, document: dict, text: str) -> int:
    """Print `document` as JSON with --json, else `text`; exit code 0."""
    if args.json:
        _print_json(document)
    else:
        print(text)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from planner.render import inspect_text

    _, graph = _graph(args)
    return _output(args, graph.to_dict(), inspect_text(graph, groups=args.groups))


def _preset(args: argparse.Namespace) -> int:
    from planner.presets import make_preset
    from predictors.size import size_report
    from search_spaces.output_file import check_output_path

    check_output_path(args.out, "--out")
    _, graph = _graph(args)
    plan = make_preset(graph, args.preset, model=args.model)
    plan.save(args.out)
    report = size_report(plan, graph)
    print(
        f"wrote {args.out}: {len(plan)} layers planned, {_mib(report.total_bits / 8)} "
        f"({report.compression_ratio:.1f}× smaller than {_mib(report.baseline_bits / 8)})"
    )
    return 0


def _size(args: argparse.Namespace) -> int:
    from planner.render import size_text
    from predictors.size import size_report

    plan, _, graph = _plan_and_graph(args)
    report = size_report(plan, graph)
    return _output(args, report.to_dict(), size_text(report))


def _validate(args: argparse.Namespace) -> int:
    from predictors.size import size_report

    plan, _, graph = _plan_and_graph(args)
    report = size_report(plan, graph)
    print(
        f"{args.plan} is valid for {args.model}: {len(plan)} layers planned, "
        f"{report.size_mib:.3f} MiB ({report.compression_ratio:.1f}×)"
    )
    return 0


def _apply(args: argparse.Namespace) -> int:
    from planner.compress import CompressionJob
    from planner.onnx_job import export_onnx_file, file_latency_check
    from planner.render import applied_text, file_latency_text, onnx_export_text
    from search_spaces.output_file import check_output_path

    if args.onnx is not None:
        check_output_path(args.onnx, "--onnx")  # refused before minutes of fine-tuning
    result = CompressionJob(
        model_spec=args.model,
        input_shape=args.input_shape,
        plan_path=args.plan,
        out=args.out,
        task=_task_spec(args),
        distill=args.distill,
        epochs=args.epochs,
        lr=args.lr,
        data_free=args.no_data,
        synthetic_samples=args.synthetic,
        seed=args.seed,
        progress=_progress_shown(args),
    ).run()
    text = applied_text(result, args.out)
    if args.onnx is not None:
        exported = export_onnx_file(args.out, args.onnx)
        check = file_latency_check(args.out, args.onnx)
        result = {**result, "onnx": {**exported, "latency": check}}
        text += f"\n{onnx_export_text(exported)}\n{file_latency_text(check, args.onnx)}"
    return _output(args, result, text)


def _measure_latency(args: argparse.Namespace) -> int:
    from planner.measure import measure_plan_latency
    from planner.render import measurement_text

    plan, loaded, graph = _plan_and_graph(args)
    settings = {
        k: vars(args)[k]
        for k in ("batch", "threads", "blocks", "calls", "rounds", "min_time_ms", "runtime")
    }
    m = measure_plan_latency(loaded.module, loaded.example_inputs, plan, graph=graph, **settings)
    label = f"{args.plan or args.preset} on {args.model}, run by {args.runtime}"
    return _output(args, {**m.to_dict(), "runtime": args.runtime}, measurement_text(m, label))


def _profile(args: argparse.Namespace) -> int:
    from planner.render import profile_text
    from predictors.latency import ProfileSummary, check_records_path, profile, save_records
    from search_spaces import Plan
    from search_spaces.output_file import check_output_path

    check_records_path(args.out)  # refuse a bad path before measuring for minutes
    check_output_path(args.out, "--out")
    same = ("input_shape", "samples", "seed", "synthetic_layers", "device", "threads", "blocks")
    more = ("calls", "rounds", "min_time_ms", "processes", "repeats", "runtime")
    settings = {k: vars(args)[k] for k in (*same, *more)}
    plans = [Plan.load(p) for p in args.plan] if args.plan else None
    if args.uncompressed_only:
        plans = [Plan(layers={}, provenance={"source": "uncompressed"})]
    records = profile(
        args.model,
        inputs=args.inputs,
        plans=plans,
        structured=not (args.no_structured or args.uncompressed_only),
        layers=not (args.no_layers or args.uncompressed_only),
        progress=_progress_shown(args),
        **settings,
    )
    out = str(save_records(records, args.out))
    summary = ProfileSummary.of(records)
    text = profile_text(summary, args.model, out)
    return _output(args, {"out": out, **summary.to_dict()}, text)


def _fit_latency(args: argparse.Namespace) -> int:
    from planner.errors import PlannerError
    from planner.render import fit_text
    from predictors.latency import fit_predictor, load_records
    from search_spaces.output_file import check_output_path

    if args.for_other_models and args.kind != "network":
        raise PlannerError(
            "--for-other-models is a setting of the network: drop it, or use --kind network"
        )
    check_output_path(args.out, "--out")
    records = load_records(*args.records)
    timed_on = sorted(set(records["runtime"].astype(str)))
    if timed_on != [args.runtime]:
        raise PlannerError(
            f"the records were timed on {' and '.join(timed_on)}, not {args.runtime}: fit them "
            f"with --runtime {timed_on[0]}, or profile with --runtime {args.runtime}"
        )
    settings = {"holdout": args.holdout, "seed": args.seed, "trust_specs": args.trust_specs}
    if args.for_other_models:
        settings["quantizer_by_elements"] = True
    report = fit_predictor(records, args.kind, **settings)
    out = str(report.predictor.save(args.out))
    return _output(args, {**report.to_dict(), "out": out}, fit_text(report, out))


def _predict_latency(args: argparse.Namespace) -> int:
    from predictors.latency import load_predictor

    predictor = load_predictor(args.predictor)
    predictor.require_runtime(args.runtime)
    plan, _, graph = _plan_and_graph(args, pretrained=False)
    ratio = float(predictor.predict_ratio(graph, [plan])[0])
    reference_ms, source = predictor.reference_ms(graph)
    device = predictor.fingerprint
    text = (
        f"{args.plan or args.preset} on {args.model}: ×{ratio:.3f} of the uncompressed model, "
        f"{ratio * reference_ms:.3f} ms against its {reference_ms:.3f} ms ({source}), predicted "
        f"by the {predictor.kind} predictor for {predictor.runtime} on {device.get('cpu')} "
        f"({device.get('device')}, {device.get('threads')} thread(s))"
    )
    document = {
        "ratio": ratio,
        "latency_ms": ratio * reference_ms,
        "reference_ms": reference_ms,
        "reference": source,
        "predictor": args.predictor,
        "kind": predictor.kind,
        "runtime": predictor.runtime,
    }
    return _output(args, {**document, "device": device}, text)


def _eval(args: argparse.Namespace) -> int:
    from planner.compress import evaluate_export
    from planner.render import score_text

    result = evaluate_export(
        args.file, model_spec=args.model, task=_task_spec(args), trust_specs=args.trust_specs
    )
    score = score_text(result["metric"], result["score"])
    return _output(args, result, f"{args.file}: test {result['metric']} {score} ({result['task']})")


def _export(args: argparse.Namespace) -> int:
    from planner.onnx_job import export_onnx_file
    from planner.render import onnx_export_text

    report = export_onnx_file(
        args.file, args.out, model_spec=args.model, trust_specs=args.trust_specs
    )
    return _output(args, report, onnx_export_text(report))


def _check_timeout(args: argparse.Namespace) -> None:
    from planner.errors import PlannerError

    if args.timeout is not None and not args.timeout > 0:
        raise PlannerError(f"--timeout must be a positive number of seconds, not {args.timeout:g}")


def _search_config(args: argparse.Namespace, graph, task: str | None):
    """The `SearchConfig` the search command's arguments describe."""
    from planner.budgets import parse_latency, parse_size
    from planner.config import RaySettings, RealSettings, SearchConfig
    from planner.errors import PlannerError
    from planner.knob_restrictions import FLAGS, SearchKnobs
    from planner.storage import DEFAULT_STORAGE
    from predictors.latency import load_predictor
    from search_spaces import Budget

    if args.size_budget is None and args.latency_budget is None and args.macs_budget is None:
        raise PlannerError(
            "give at least one budget: --size-budget (x25, 1.2MiB), --latency-budget (15ms, x0.5) "
            "or --macs-budget N"
        )
    if args.trials < 0:
        raise PlannerError(f"--trials must be at least 0, not {args.trials}")
    _check_timeout(args)
    baseline = graph.baseline_bits / 8
    size = None if args.size_budget is None else parse_size(args.size_budget, baseline)
    predictor = args.latency_model and load_predictor(args.latency_model)
    if predictor:
        predictor.require_runtime(args.runtime)
    latency = predictor and predictor.to_document()
    latency_ms = None
    if args.latency_budget is not None:
        reference = predictor.reference_ms(graph)[0] if predictor else None
        latency_ms = parse_latency(args.latency_budget, reference)
    real = RealSettings(args.epochs, args.lr, args.distill, args.candidates, args.tune_lr)
    ray = RaySettings(args.address, args.cpus_per_trial, args.gpus_per_trial, args.ray_results)
    return SearchConfig(
        model_spec=args.model,
        input_shape=args.input_shape,
        task=task,
        budget=Budget(size_bytes=size, latency_ms=latency_ms, macs=args.macs_budget),
        protect_ends=args.protect_ends == "yes",
        knobs=SearchKnobs(**{name: getattr(args, name) for name in FLAGS}),
        objective=args.objective,
        real=real,
        sampler=args.sampler,
        pareto=args.pareto,
        backend=args.backend,
        ray=ray,
        storage=args.storage or DEFAULT_STORAGE,
        study=args.study,
        fresh=args.fresh,
        seed=args.seed,
        latency=latency,
        runtime=args.runtime,
        verify=args.verify,
    )


def _search(args: argparse.Namespace) -> int:
    from engine.task_spec import load_with_task
    from planner.errors import PlannerError
    from planner.search import Planner
    from planner.search_report import SearchBar, created_text, search_summary, search_text
    from search_spaces.output_file import check_output_path, write_text_atomically

    if args.out is None and args.trials > 0:
        raise PlannerError("give --out FILE for the best plan (or --trials 0 to only create it)")
    out = Path(args.out or "plan.json")
    # Every output is checked before the search: none may fail after it.
    if args.trials > 0:
        check_output_path(out, "--out")
        for option, path in (("--trials-csv", args.trials_csv), ("--plot", args.plot)):
            if path is not None:
                check_output_path(path, option)
    if args.plot and Path(args.plot).suffix.lower() not in (".html", ".png"):
        raise PlannerError(f"--plot {args.plot}: give a .html (interactive) or .png file")
    if args.backend == "ray" and args.trials == 0:
        raise PlannerError("--trials 0 creates a study for `compplan worker`s: use optuna")
    loaded, spec, task = load_with_task(
        args.model, _task_spec(args), input_shape=args.input_shape, distill=args.distill
    )
    graph = _discovered(args, loaded)
    config = _search_config(args, graph, spec)
    if args.storage_adopt:
        from planner.storage import open_storage

        open_storage(config.storage, adopt=True)  # Optuna's tables made; the Planner opens it
    planner = Planner(
        loaded.module,
        loaded.example_inputs,
        config,
        graph=graph,
        task=task,
        progress=_progress_shown(args),
    )
    if args.trials == 0:
        planner.open_study()
        created = {"storage": display_url(config.storage), "study": planner.study_name}
        return _output(args, created, created_text(**created))
    if args.backend == "ray" and not args.json:
        print(f"running {args.trials} trials on Ray Tune …", file=sys.stderr)
    bar = SearchBar(args.trials, enabled=_progress_shown(args))
    try:
        outcome = planner.run(
            args.trials, args.timeout, progress=bar.update, measuring=_say_measuring(args)
        )
    except KeyboardInterrupt:
        where = getattr(planner.backend, "path", None) or display_url(config.storage)  # Tune's
        return _fail(
            f"search stopped; every finished trial is kept in {where} (study "
            f"'{planner.study_name}'): run the same command again to resume",
            130,
        )
    finally:
        bar.close()
    outcome.plan.save(out)
    if args.trials_csv:
        csv = outcome.result.trials.to_csv(index=False)
        write_text_atomically(args.trials_csv, csv, "--trials-csv")
    if args.plot:
        from planner.plots import save_pareto_plot

        result, budget = outcome.result, config.budget.size_bytes
        save_pareto_plot(result.trials, result.pareto, args.plot, size_budget=budget)
    summary = search_summary(outcome, graph, config, plan_path=str(out))
    return _output(args, summary, search_text(outcome, graph, config, plan_path=str(out)))


def _say_measuring(args: argparse.Namespace):
    """What `search --verify` says as it measures each candidate (stderr; silent with --json)."""

    def say(label: str) -> None:
        if not args.json:
            print(f"measuring {label} on {args.runtime} …", file=sys.stderr)

    return say


def _worker(args: argparse.Namespace) -> int:
    from planner.errors import PlannerError
    from planner.search import Planner
    from planner.search_report import SearchBar, worker_summary, worker_text

    if args.trials < 1:
        raise PlannerError(f"--trials must be at least 1, not {args.trials}")
    _check_timeout(args)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    # The study's creator seeds it with the exact solver's answer, once.
    changes = {"seed": seed, "seed_exact": False}
    if (spec := _task_spec(args)) is not None:  # the task's data here, not the study's
        changes["task"] = spec
    if args.runtime is not None:
        changes["runtime"] = args.runtime
    planner = Planner.from_study(
        args.storage,
        args.study,
        trust_specs=args.trust_specs,
        progress=_progress_shown(args),
        **changes,
    )
    bar = SearchBar(args.trials, enabled=_progress_shown(args), count="own")
    try:
        result = planner.search(new_trials=args.trials, timeout=args.timeout, progress=bar.update)
    except KeyboardInterrupt:
        where = f"{display_url(args.storage)} (study '{args.study}')"
        return _fail(f"worker stopped; every finished trial is in {where}", 130)
    finally:
        bar.close()
    where = display_url(args.storage)
    summary = worker_summary(
        result, planner.worker_id, where, args.study, planner.config.priced_runtime
    )
    return _output(args, summary, worker_text(summary))


if __name__ == "__main__":
    sys.exit(main())

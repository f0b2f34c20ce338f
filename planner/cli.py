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
from collections.abc import Sequence
from pathlib import Path

from planner.render import mib as _mib
from planner.render import print_json as _print_json

__all__ = ["main"]

USAGE_ERROR = 2
INTERNAL_ERROR = 1

_EPILOG = """\
examples:
  compplan inspect --model zoo:resnet18
  compplan preset --model zoo:resnet18 --preset pqf-small --out plan.json
  compplan size --model zoo:resnet18 --plan plan.json --json
  compplan validate --model zoo:resnet18 --plan plan.json
  compplan apply --model zoo:digits --plan plan.json --out digits.cpz --epochs 3
  compplan eval digits.cpz
  compplan inspect --model mypackage.models:build_net --input-shape 1,3,64,64
  compplan profile --model zoo:resnet18 --samples 300 --out resnet18.parquet
  compplan fit-latency resnet18.parquet --out resnet18-latency.json
  compplan predict-latency --predictor resnet18-latency.json --model zoo:resnet18 --plan plan.json
  compplan measure-latency --model zoo:resnet18 --plan plan.json
  compplan search --model zoo:digits --size-budget x25 --out plan.json

model specs: zoo:NAME (digits, mobilenet_v2, resnet18, resnet50), package.module:callable or
path/to/file.py:callable (a function returning an nn.Module; give --input-shape).
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line, like every other compplan error."""

    def error(self, message: str) -> None:
        self.exit(USAGE_ERROR, f"compplan: error: {message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    from planner.presets import PRESET_HELP

    parser = _Parser(
        prog="compplan",
        description="Plan and apply per-layer compression of PyTorch models under size and "
        "latency budgets.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what compplan does")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help_text: str, *, json: str = "", model: bool = True, **kwargs):
        """A subcommand; with `model`, --model and --input-shape; with `json`, --json."""
        sub = commands.add_parser(name, help=help_text, description=help_text, **kwargs)
        if model:
            spec = "zoo:NAME, package.module:callable or file.py:callable"
            sub.add_argument("--model", required=True, metavar="SPEC", help=spec)
            shape = "example input shape, batch first, e.g. 1,3,224,224 (zoo models know theirs)"
            sub.add_argument("--input-shape", metavar="SHAPE", help=shape)
        if json:
            sub.add_argument("--json", action="store_true", help=json)
        return sub

    def plan_or_preset(sub: argparse.ArgumentParser) -> None:
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--plan", metavar="FILE", help="a plan file")
        source.add_argument("--preset", metavar="NAME", help=PRESET_HELP)

    def number(sub: argparse.ArgumentParser, flag: str, default: float, help_text: str, **kw):
        """An int (metavar N) or float (X) option whose help ends with its default."""
        kw.setdefault("metavar", "N" if isinstance(default, int) else "X")
        help_text = f"{help_text} (default {default})"
        sub.add_argument(flag, type=type(default), default=default, help=help_text, **kw)

    text = "print JSON instead of text"
    inspect = command(
        "inspect", "List a model's layers: what can be compressed, what is kept and why.", json=text
    )
    inspect.add_argument("--groups", action="store_true", help="also list the coupling groups")

    preset = command("preset", "Write a plan file from a named preset.")
    preset.add_argument("--preset", required=True, metavar="NAME", help=PRESET_HELP)
    preset.add_argument("--out", required=True, metavar="FILE", help="the plan file to write")

    plan_or_preset(command("size", "Exact compressed size of a plan, layer by layer.", json=text))
    validate = command("validate", "Check a plan file against a model.")
    validate.add_argument("--plan", required=True, metavar="FILE", help="the plan file to check")

    apply = command(
        "apply",
        "Compress a model as a plan says, fine-tune it by distillation from the original, and "
        "export it.",
        json=text,
    )
    apply.add_argument("--plan", required=True, metavar="FILE", help="the plan file to apply")
    apply.add_argument("--out", required=True, metavar="FILE", help="the compressed model file")
    number(apply, "--epochs", 3, "fine-tune epochs, 0 for none")
    number(apply, "--lr", 1e-3, "base learning rate")
    what = "data-free: distill on inputs made from the BatchNorm statistics (default: no task)"
    apply.add_argument("--no-data", action="store_true", help=what)
    what = "inputs to synthesize in data-free mode (about 0.1 s each on 2 cores for digits)"
    number(apply, "--synthetic", 512, what)
    number(apply, "--seed", 0, "seeds k-means and fine-tuning")

    latency = command(
        "measure-latency",
        "Measure the deployed form of a plan on this machine (pruned channels removed, weights "
        "decoded, activation quantizers in place), interleaved with the uncompressed model.",
        json=text,
    )
    latency.add_argument("--plan", required=True, metavar="FILE", help="the plan file")
    number(latency, "--batch", 1, "batch size")
    number(latency, "--threads", 1, "torch threads")
    number(latency, "--runs", 50, "timed calls per repeat, at least 30")

    search = command(
        "search",
        "Search the best per-layer plan under size, latency and MACs budgets (the exact "
        "solver's answer seeds it; Optuna here, or Ray Tune on a cluster) and write it as a plan "
        "file. The same --study resumes; every finished trial is kept whatever stops it.",
        json="print a JSON summary",
    )
    budgets = search.add_argument_group("budgets (at least one)")
    budgets.add_argument(
        "--size-budget",
        metavar="SIZE",
        help="bytes (1258291), a unit (300KiB, 1.2MiB, 2MB) or a ratio of the fp32 size (x25)",
    )
    budgets.add_argument("--latency-budget", type=float, metavar="MS", help="predicted ms")
    budgets.add_argument(
        "--latency-model", metavar="FILE", help="a predictor from `compplan fit-latency`"
    )
    budgets.add_argument("--macs-budget", type=int, metavar="N", help="MACs per example")
    search.add_argument(
        "--objective",
        choices=["proxy", "real"],
        default="proxy",
        help="proxy: predicted output distortion (seconds per thousand trials); real: also apply, "
        "fine-tune and score plans on the task's validation data (a model with a task, such as "
        "zoo:digits): with optuna the proxy's best candidates, on ray every trial",
    )
    real = search.add_argument_group("the real objective")
    what = "how many of the proxy's best plans to fine-tune, with optuna (default 5)"
    real.add_argument("--candidates", type=int, metavar="N", help=what)
    what = "then search per-layer learning rates (P-Transfer) for the winner in N trials; 0 off"
    number(real, "--tune-lr", 0, what, metavar="N")
    number(real, "--epochs", 2, "fine-tune epochs per plan", metavar="E")
    what = "trials in the study, workers' and earlier runs' counted; 0 only creates it for workers"
    number(search, "--trials", 300, what, metavar="N")
    search.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    search.add_argument("--sampler", choices=["tpe", "nsga2", "random"], default="tpe")
    what = "multi-objective: proxy, size (and latency) together with NSGA-II"
    search.add_argument("--pareto", action="store_true", help=what)
    what = "keep the first conv and the classifier at 32 bits (default yes)"
    search.add_argument("--protect-ends", choices=["yes", "no"], default="yes", help=what)
    number(search, "--seed", 0, "seeds the sampler, k-means and fine-tuning")
    search.add_argument("--study", metavar="NAME", help="default: from model, objective, budgets")
    search.add_argument(
        "--storage",
        metavar="URL",
        help="with optuna: sqlite:///file.db (default sqlite:///compplan-studies.db), "
        "journal:FILE, or postgresql+psycopg2://user@host/db (shared by `compplan worker`s)",
    )
    ray = search.add_argument_group("where trials run")
    what = "optuna: trials here, kept in --storage (default); ray: on a Ray cluster by Ray Tune"
    ray.add_argument("--backend", choices=["optuna", "ray"], default="optuna", help=what)
    ray.add_argument("--address", metavar="HOST:PORT", help="ray: the head (default: a local Ray)")
    number(ray, "--cpus-per-trial", 1.0, "ray: CPUs (and torch threads) per trial", metavar="N")
    number(ray, "--gpus-per-trial", 0.0, "ray: GPUs per trial", metavar="N")
    what = "ray: where Tune keeps experiments (default compplan-ray)"
    ray.add_argument("--ray-results", default="compplan-ray", metavar="DIR", help=what)
    outputs = search.add_argument_group("outputs")
    outputs.add_argument("--out", metavar="FILE", help="the best plan (needed unless --trials 0)")
    outputs.add_argument("--trials-csv", metavar="FILE", help="every trial as CSV")
    what = "proxy against size with the Pareto front: .html (interactive) or .png"
    outputs.add_argument("--plot", metavar="FILE", help=what)

    worker = command(
        "worker",
        "Join a study that `compplan search --trials 0` created in a shared storage (PostgreSQL, "
        "say) and run trials in it, each proposed from every worker's trials so far. Model, "
        "budgets and space come from the study's config (the model spec must resolve here too). "
        "Stop it at any time: every finished trial is kept.",
        json="print a JSON summary",
        model=False,
    )
    worker.add_argument("--storage", required=True, metavar="URL", help="the study's storage URL")
    worker.add_argument("--study", required=True, metavar="NAME", help="the study to join")
    number(worker, "--trials", 100, "trials this worker runs", metavar="N")
    worker.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    what = "the sampler's seed (default: a different one per worker)"
    worker.add_argument("--seed", type=int, help=what)

    profile = command(
        "profile",
        "Measure random plans of a model (and each of their layers alone) on this machine and "
        "save the records for `compplan fit-latency`.",
        json="print a JSON summary",
    )
    profile.add_argument("--out", required=True, metavar="FILE", help="records (.parquet, .csv)")
    number(profile, "--samples", 100, "random plans to measure")
    what = "measure this plan file instead of random plans (repeatable)"
    profile.add_argument("--plan", action="append", metavar="FILE", help=what)
    profile.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    number(profile, "--threads", 1, "torch threads while timing")
    number(profile, "--runs", 30, "timed calls per measurement, at least 30")
    what = "timed calls in this many rounds over all plans, so a median spans the whole run"
    number(profile, "--rounds", 3, what)
    what = "split the measuring across this many fresh processes, run one at a time; 0: here"
    number(profile, "--processes", 1, what)
    what = "measure everything this many times in different processes, keep the median"
    number(profile, "--repeats", 1, what)
    what = "skip timing each layer alone (the lookup table needs them)"
    profile.add_argument("--no-layers", action="store_true", help=what)
    what = "also time N random single layers: they teach the network layer kinds it lacks"
    number(profile, "--synthetic-layers", 0, what)
    number(profile, "--seed", 0, "seeds the random plans and layers")

    fit = command(
        "fit-latency",
        "Fit a latency predictor on records from `compplan profile`: report its accuracy on "
        "held-out plans (their single layers held out too), then fit it on every record and "
        "save it as JSON.",
        json=text,
        model=False,
    )
    fit.add_argument("records", nargs="+", metavar="FILE", help="records files (.parquet/.csv)")
    fit.add_argument("--out", required=True, metavar="FILE", help="the predictor file (JSON)")
    fit.add_argument(
        "--kind",
        default="network",
        choices=("network", "lookup", "flops"),
        help="network (default): an MLP over layer features, summed; lookup: per-layer measured "
        "times, summed; flops: linear in MACs",
    )
    number(fit, "--holdout", 0.2, "share of the plans held out to report accuracy on, 0 skips it")
    number(fit, "--seed", 0, "seeds the split and the network")

    what = "Predict a plan's latency with a predictor from `compplan fit-latency`."
    predict = command("predict-latency", what, json=text)
    predict.add_argument("--predictor", required=True, metavar="FILE", help="predictor file")
    plan_or_preset(predict)

    what = "Load a model written by `compplan apply` and score it on its task's test data."
    evaluate = command("eval", what, json=text, model=False)
    evaluate.add_argument("file", metavar="FILE", help="a file written by `compplan apply`")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 1 internal error)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return int(done.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="compplan: %(message)s",
        stream=sys.stderr,
    )
    from engine.export import ExportError
    from planner.compress import CompressionError
    from predictors.latency import PredictorError, ProfileError, RecordsError
    from predictors.profile import MeasurementError
    from search_spaces import DiscoveryError, PlanError
    from search_spaces.model_spec import ModelSpecError

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
    )
    handler = globals()["_" + args.command.replace("-", "_")]  # fit-latency: _fit_latency
    try:
        return handler(args)
    except usage_errors as error:
        return _fail(str(error), USAGE_ERROR)
    except (OSError, UnicodeError) as error:
        return _fail(
            f"{error.strerror or error}: {error.filename}" if error.filename else str(error),
            USAGE_ERROR,
        )
    except BrokenPipeError:  # `compplan ... | head` closed our stdout: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as error:  # the last line of defence: one line, not a traceback
        if os.environ.get("COMPPLAN_DEBUG"):
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        return _fail(
            f"internal error: {type(error).__name__}: {first} (set COMPPLAN_DEBUG=1 for the "
            "traceback and report it)",
            INTERNAL_ERROR,
        )


def _fail(message: str, code: int) -> int:
    print(f"compplan: error: {message}", file=sys.stderr)
    return code


def _graph(args: argparse.Namespace, *, pretrained: bool = True):
    from search_spaces import discover
    from search_spaces.model_spec import load_model

    loaded = load_model(args.model, input_shape=args.input_shape, pretrained=pretrained)
    return loaded, discover(loaded.module, loaded.example_inputs, model_name=args.model)


def _plan_for(args: argparse.Namespace, graph):
    from planner.presets import make_preset
    from search_spaces import Plan, validate_plan

    if getattr(args, "preset", None) is not None and getattr(args, "plan", None) is None:
        return make_preset(graph, args.preset, model=args.model)
    plan = Plan.load(args.plan)
    validate_plan(plan, graph)
    return plan


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

    _, graph = _graph(args)
    report = size_report(_plan_for(args, graph), graph)
    return _output(args, report.to_dict(), size_text(report))


def _validate(args: argparse.Namespace) -> int:
    from predictors.size import size_report

    _, graph = _graph(args)
    plan = _plan_for(args, graph)
    report = size_report(plan, graph)
    print(
        f"{args.plan} is valid for {args.model}: {len(plan)} layers planned, "
        f"{report.size_mib:.3f} MiB ({report.compression_ratio:.1f}×)"
    )
    return 0


def _apply(args: argparse.Namespace) -> int:
    from planner.compress import CompressionJob
    from planner.render import applied_text

    result = CompressionJob(
        model_spec=args.model,
        input_shape=args.input_shape,
        plan_path=args.plan,
        out=args.out,
        epochs=args.epochs,
        lr=args.lr,
        data_free=args.no_data,
        synthetic_samples=args.synthetic,
        seed=args.seed,
        progress=not args.json,
    ).run()
    return _output(args, result, applied_text(result, args.out))


def _measure_latency(args: argparse.Namespace) -> int:
    from planner.measure import measure_plan_latency
    from planner.render import measurement_text

    loaded, graph = _graph(args)
    plan = _plan_for(args, graph)
    settings = {"batch": args.batch, "threads": args.threads, "runs": args.runs}
    m = measure_plan_latency(loaded.module, loaded.example_inputs, plan, graph=graph, **settings)
    return _output(args, m.to_dict(), measurement_text(m, f"{args.plan} on {args.model}"))


def _profile(args: argparse.Namespace) -> int:
    from planner.render import profile_text
    from predictors.latency import ProfileSummary, check_records_path, profile, save_records
    from search_spaces import Plan

    check_records_path(args.out)  # refuse a bad suffix before measuring for minutes
    same = ("input_shape", "samples", "seed", "synthetic_layers", "device", "threads", "runs")
    settings = {k: vars(args)[k] for k in (*same, "rounds", "processes", "repeats")}
    records = profile(
        args.model,
        plans=[Plan.load(p) for p in args.plan] if args.plan else None,
        layers=not args.no_layers,
        progress=sys.stderr.isatty(),
        **settings,
    )
    out = str(save_records(records, args.out))
    summary = ProfileSummary.of(records)
    text = profile_text(summary, args.model, out)
    return _output(args, {"out": out, **summary.to_dict()}, text)


def _fit_latency(args: argparse.Namespace) -> int:
    from planner.render import fit_text
    from predictors.latency import fit_predictor, load_records

    records = load_records(*args.records)
    report = fit_predictor(records, args.kind, holdout=args.holdout, seed=args.seed)
    out = str(report.predictor.save(args.out))
    return _output(args, {**report.to_dict(), "out": out}, fit_text(report, out))


def _predict_latency(args: argparse.Namespace) -> int:
    from predictors.latency import load_predictor

    predictor = load_predictor(args.predictor)
    _, graph = _graph(args, pretrained=False)
    latency = float(predictor.predict(graph, [_plan_for(args, graph)])[0])
    device = predictor.fingerprint
    text = (
        f"{args.plan or args.preset} on {args.model}: {latency:.3f} ms predicted by the "
        f"{predictor.kind} predictor for {device.get('cpu')} ({device.get('device')}, "
        f"{device.get('threads')} thread(s))"
    )
    document = {"latency_ms": latency, "predictor": args.predictor, "kind": predictor.kind}
    return _output(args, {**document, "device": device}, text)


def _eval(args: argparse.Namespace) -> int:
    from planner.compress import evaluate_export

    result = evaluate_export(args.file)
    text = f"{args.file}: {result['task']} test accuracy {result['accuracy']:.2%}"
    return _output(args, result, text)


def _search_config(args: argparse.Namespace, graph):
    """The `SearchConfig` the search command's arguments describe."""
    from planner.budgets import parse_size
    from planner.config import RaySettings, RealSettings, SearchConfig
    from planner.errors import PlannerError
    from planner.storage import DEFAULT_STORAGE
    from predictors.latency import load_predictor
    from search_spaces import Budget

    if args.size_budget is None and args.latency_budget is None and args.macs_budget is None:
        raise PlannerError(
            "give at least one budget: --size-budget (x25, 1.2MiB), --latency-budget MS "
            "or --macs-budget N"
        )
    if args.trials < 0:
        raise PlannerError(f"--trials must be at least 0, not {args.trials}")
    baseline = graph.baseline_bits / 8
    size = None if args.size_budget is None else parse_size(args.size_budget, baseline)
    latency = args.latency_model and load_predictor(args.latency_model).to_document()
    ray = RaySettings(args.address, args.cpus_per_trial, args.gpus_per_trial, args.ray_results)
    return SearchConfig(
        model_spec=args.model,
        input_shape=args.input_shape,
        budget=Budget(size_bytes=size, latency_ms=args.latency_budget, macs=args.macs_budget),
        protect_ends=args.protect_ends == "yes",
        objective=args.objective,
        real=RealSettings(epochs=args.epochs, candidates=args.candidates, tune_lr=args.tune_lr),
        sampler=args.sampler,
        pareto=args.pareto,
        backend=args.backend,
        ray=ray,
        storage=args.storage or DEFAULT_STORAGE,
        study=args.study,
        seed=args.seed,
        latency=latency,
    )


def _search(args: argparse.Namespace) -> int:
    from planner.errors import PlannerError
    from planner.search import Planner
    from planner.search_report import SearchBar, created_text, search_summary, search_text
    from zoo.tasks import get_task

    if args.out is None and args.trials > 0:
        raise PlannerError("give --out FILE for the best plan (or --trials 0 to only create it)")
    out = Path(args.out or "plan.json")
    if out.is_dir() or not out.parent.is_dir():
        raise PlannerError(f"--out {out}: give a file path in an existing folder")
    if args.plot and Path(args.plot).suffix.lower() not in (".html", ".png"):
        raise PlannerError(f"--plot {args.plot}: give a .html (interactive) or .png file")
    if args.backend == "ray" and args.trials == 0:
        raise PlannerError("--trials 0 creates a study for `compplan worker`s: use optuna")
    loaded, graph = _graph(args)
    config = _search_config(args, graph)
    task = get_task(loaded.task) if loaded.task else None
    planner = Planner(loaded.module, loaded.example_inputs, config, graph=graph, task=task)
    if args.trials == 0:
        planner.open_study()
        created = {"storage": config.storage, "study": planner.study_name}
        return _output(args, created, created_text(**created))
    if args.backend == "ray" and not args.json:
        print(f"running {args.trials} trials on Ray Tune …", file=sys.stderr)
    bar = SearchBar(args.trials, enabled=not args.json)
    try:
        outcome = planner.run(args.trials, args.timeout, progress=bar.update)
    except KeyboardInterrupt:
        where = getattr(planner.backend, "path", config.storage)  # a Tune experiment on Ray
        return _fail(
            f"search stopped; every finished trial is kept in {where} (study "
            f"'{planner.study_name}'): run the same command again to resume",
            130,
        )
    finally:
        bar.close()
    outcome.plan.save(out)
    if args.trials_csv:
        outcome.result.trials.to_csv(args.trials_csv, index=False)
    if args.plot:
        from planner.plots import save_pareto_plot

        result, budget = outcome.result, config.budget.size_bytes
        save_pareto_plot(result.trials, result.pareto, args.plot, size_budget=budget)
    summary = search_summary(outcome, graph, config, plan_path=str(out))
    return _output(args, summary, search_text(outcome, graph, config, plan_path=str(out)))


def _worker(args: argparse.Namespace) -> int:
    from planner.errors import PlannerError
    from planner.search import Planner
    from planner.search_report import SearchBar, worker_summary, worker_text

    if args.trials < 1:
        raise PlannerError(f"--trials must be at least 1, not {args.trials}")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    # The study's creator seeds it with the exact solver's answer, once.
    planner = Planner.from_study(args.storage, args.study, seed=seed, seed_exact=False)
    bar = SearchBar(args.trials, enabled=not args.json, count="own")
    try:
        result = planner.search(new_trials=args.trials, timeout=args.timeout, progress=bar.update)
    except KeyboardInterrupt:
        where = f"{args.storage} (study '{args.study}')"
        return _fail(f"worker stopped; every finished trial is in {where}", 130)
    finally:
        bar.close()
    summary = worker_summary(result, planner.worker_id, args.storage, args.study)
    return _output(args, summary, worker_text(summary))


if __name__ == "__main__":
    sys.exit(main())

"""The `compplan` command: a thin layer over the Python API.

Every command is a few lines of Python (see README.md, "From Python"). Bad input of any kind ends
with one line on stderr, `compplan: error: ...`, saying what to do, and exit code 2; an internal
error ends with exit code 1 (set COMPPLAN_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

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

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--model",
            required=True,
            metavar="SPEC",
            help="zoo:NAME, package.module:callable or file.py:callable",
        )
        sub.add_argument(
            "--input-shape",
            metavar="SHAPE",
            help="example input shape, batch first, e.g. 1,3,224,224 (zoo models know their own)",
        )
        return sub

    inspect = command(
        "inspect", "List a model's layers: what can be compressed, what is kept and why."
    )
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--groups", action="store_true", help="also list the coupling groups")

    preset = command("preset", "Write a plan file from a named preset.")
    preset.add_argument("--preset", required=True, metavar="NAME", help=PRESET_HELP)
    preset.add_argument(
        "--out", required=True, metavar="FILE", help="where to write the plan (JSON)"
    )

    size = command("size", "Exact compressed size of a plan, layer by layer.")
    source = size.add_mutually_exclusive_group(required=True)
    source.add_argument("--plan", metavar="FILE", help="a plan file")
    source.add_argument("--preset", metavar="NAME", help=PRESET_HELP)
    size.add_argument("--json", action="store_true", help="print JSON instead of a table")

    validate = command("validate", "Check a plan file against a model.")
    validate.add_argument("--plan", required=True, metavar="FILE", help="the plan file to check")

    apply = command(
        "apply",
        "Compress a model as a plan says, fine-tune it by distillation from the original, "
        "and export it.",
    )
    apply.add_argument("--plan", required=True, metavar="FILE", help="the plan file to apply")
    apply.add_argument("--out", required=True, metavar="FILE", help="the compressed model file")
    apply.add_argument(
        "--epochs", type=int, default=3, metavar="N", help="fine-tune epochs (0: none; default 3)"
    )
    apply.add_argument("--lr", type=float, default=1e-3, help="base learning rate (default 1e-3)")
    apply.add_argument(
        "--no-data",
        action="store_true",
        help="data-free: calibrate and distill on inputs synthesized from the model's BatchNorm "
        "statistics (the default for models without a task)",
    )
    apply.add_argument(
        "--synthetic",
        type=int,
        default=512,
        metavar="N",
        help="inputs to synthesize in data-free mode (default 512; about 0.1 s each on 2 cores "
        "for the digits model)",
    )
    apply.add_argument("--seed", type=int, default=0, help="seeds k-means and fine-tuning")
    apply.add_argument("--json", action="store_true", help="print JSON instead of text")

    latency = command(
        "measure-latency",
        "Measure the deployed form of a plan on this machine (pruned channels removed, weights "
        "decoded, activation quantizers in place), beside the uncompressed model.",
    )
    latency.add_argument("--plan", required=True, metavar="FILE", help="the plan file")
    latency.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    latency.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    latency.add_argument(
        "--runs", type=int, default=50, help="timed calls, at least 30 (default 50)"
    )
    latency.add_argument("--json", action="store_true", help="print JSON instead of text")

    search = command(
        "search",
        "Search the best per-layer plan under size, latency and MACs budgets (Optuna; the "
        "exact solver's answer seeds it) and write it as a plan file.",
    )
    search.add_argument(
        "--size-budget",
        metavar="SIZE",
        help="the most the compressed model may take: bytes (1258291), a unit (300KiB, 1.2MiB, "
        "2MB) or a ratio of the fp32 size (x25)",
    )
    search.add_argument(
        "--latency-budget",
        type=float,
        metavar="MS",
        help="the most its predicted latency may be, in ms (needs --latency-model)",
    )
    search.add_argument(
        "--latency-model",
        metavar="FILE",
        help="a latency predictor from `compplan fit-latency`, for --latency-budget",
    )
    search.add_argument("--macs-budget", type=int, metavar="N", help="the most MACs per example")
    search.add_argument(
        "--objective",
        choices=["proxy", "real"],
        default="proxy",
        help="proxy: predicted output distortion per layer (seconds per thousand trials); real: "
        "the proxy search, then its best candidates applied, fine-tuned and scored on the task's "
        "validation data (needs a model with a task, such as zoo:digits)",
    )
    search.add_argument(
        "--candidates",
        type=int,
        default=5,
        metavar="N",
        help="with --objective real: how many of the proxy's best plans to fine-tune (default 5)",
    )
    search.add_argument(
        "--tune-lr",
        type=int,
        default=0,
        metavar="N",
        help="with --objective real: then search per-layer fine-tune learning-rate multipliers "
        "(0, 0.01, 0.1, 1; P-Transfer) for the winner with N evolutionary trials (default 0: off)",
    )
    search.add_argument(
        "--epochs",
        type=int,
        default=2,
        metavar="E",
        help="with --objective real: fine-tune epochs per candidate (default 2)",
    )
    search.add_argument(
        "--trials",
        type=int,
        default=300,
        metavar="N",
        help="trials in the study (a resumed study counts those it has, and so do workers'; "
        "default 300); 0 only creates the study, for `compplan worker`s to run",
    )
    search.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    search.add_argument(
        "--sampler", choices=["tpe", "nsga2", "random"], default="tpe", help="default tpe"
    )
    search.add_argument(
        "--backend",
        choices=["optuna", "ray"],
        default="optuna",
        help="optuna: trials in this process, kept in --storage (default); ray: trials on a Ray "
        "cluster by Ray Tune (OptunaSearch, ASHA for --objective real), kept in --ray-results",
    )
    search.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="with --backend ray: the cluster's head (default: a local Ray for this search)",
    )
    search.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1,
        metavar="N",
        help="with --backend ray: CPUs per trial; the trial uses that many torch threads (1)",
    )
    search.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0,
        metavar="N",
        help="with --backend ray: GPUs per trial (0)",
    )
    search.add_argument(
        "--ray-results",
        default="compplan-ray",
        metavar="DIR",
        help="with --backend ray: where Tune keeps experiments; the same --study resumes (default "
        "compplan-ray)",
    )
    search.add_argument(
        "--pareto",
        action="store_true",
        help="multi-objective: minimize proxy, size (and latency) together with NSGA-II",
    )
    search.add_argument(
        "--storage",
        metavar="URL",
        help="where trials are kept: sqlite:///file.db (default sqlite:///compplan-studies.db), "
        "journal:FILE, or a SQLAlchemy URL such as postgresql+psycopg2://user@host/db",
    )
    search.add_argument(
        "--study",
        metavar="NAME",
        help="study name; the same name resumes (default from the model and budgets)",
    )
    search.add_argument(
        "--protect-ends",
        choices=["yes", "no"],
        default="yes",
        help="keep the first conv and the classifier at 32 bits (default yes)",
    )
    search.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    search.add_argument(
        "--out", metavar="FILE", help="the best plan (JSON; needed unless --trials 0)"
    )
    search.add_argument("--trials-csv", metavar="FILE", help="also write every trial as CSV")
    search.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw proxy against size with the Pareto front: .html (interactive) or .png",
    )
    search.add_argument("--json", action="store_true", help="print a JSON summary")

    worker = commands.add_parser(
        "worker",
        help="Join a study and run trials in it (any number of workers, on any machines).",
        description="Join a study that `compplan search` created in a shared storage (a "
        "PostgreSQL database, say) and run trials in it, each proposed from every worker's "
        "trials so far. The model, budgets and space come from the study: the model spec must "
        "resolve on this machine too (zoo models always do). Stop it at any time: every finished "
        "trial is kept.",
    )
    worker.add_argument("--storage", required=True, metavar="URL", help="the study's storage URL")
    worker.add_argument("--study", required=True, metavar="NAME", help="the study to join")
    worker.add_argument(
        "--trials", type=int, default=100, metavar="N", help="trials this worker runs (default 100)"
    )
    worker.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    worker.add_argument(
        "--seed", type=int, help="the sampler's seed (default: a different one per worker)"
    )
    worker.add_argument("--json", action="store_true", help="print a JSON summary")

    profile = command(
        "profile",
        "Measure random plans of a model (and each of their layers alone) on this machine and "
        "save the records for `compplan fit-latency`.",
    )
    profile.add_argument(
        "--out", required=True, metavar="FILE", help="records file to write (.parquet or .csv)"
    )
    profile.add_argument(
        "--samples", type=int, default=100, metavar="N", help="random plans (default 100)"
    )
    profile.add_argument(
        "--plan",
        action="append",
        metavar="FILE",
        help="measure this plan file instead of random plans (repeatable)",
    )
    profile.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    profile.add_argument(
        "--threads", type=int, default=1, help="torch threads while timing (default 1)"
    )
    profile.add_argument(
        "--runs", type=int, default=30, help="timed calls, at least 30 (default 30)"
    )
    profile.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="take the timed calls in this many rounds over all plans, so that each median "
        "spans the whole run, not one moment's machine load (default 3)",
    )
    profile.add_argument(
        "--processes",
        type=int,
        default=1,
        help="split the measuring across this many fresh processes, run one at a time "
        "(default 1; 0 measures in this process)",
    )
    profile.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure everything this many times in different processes and keep the median "
        "(default 1; more on a noisy machine)",
    )
    profile.add_argument(
        "--no-layers",
        action="store_true",
        help="skip timing each layer alone (the lookup table needs them)",
    )
    profile.add_argument(
        "--synthetic-layers",
        type=int,
        default=0,
        metavar="N",
        help="also time N random single layers (dense, pointwise, depthwise, linear): they teach "
        "the network layer kinds this model lacks (default 0)",
    )
    profile.add_argument("--seed", type=int, default=0, help="seeds the random plans")
    profile.add_argument("--json", action="store_true", help="print a JSON summary")

    fit = commands.add_parser(
        "fit-latency",
        help="Fit a latency predictor on records from `compplan profile`.",
        description="Fit a latency predictor on records from `compplan profile`: report its "
        "accuracy on held-out plans, then fit it on all of them and save it as JSON.",
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
    fit.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of the plans held out to report accuracy on (default 0.2; 0 skips it)",
    )
    fit.add_argument("--seed", type=int, default=0, help="seeds the split and the network")
    fit.add_argument("--json", action="store_true", help="print JSON instead of text")

    predict = command(
        "predict-latency", "Predict a plan's latency with a predictor from `compplan fit-latency`."
    )
    predict.add_argument("--predictor", required=True, metavar="FILE", help="predictor file")
    predict_source = predict.add_mutually_exclusive_group(required=True)
    predict_source.add_argument("--plan", metavar="FILE", help="a plan file")
    predict_source.add_argument("--preset", metavar="NAME", help=PRESET_HELP)
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")

    evaluate = commands.add_parser(
        "eval",
        help="Load an exported model and evaluate it on its task.",
        description="Load an exported model and evaluate it on its task.",
    )
    evaluate.add_argument("file", metavar="FILE", help="a file written by `compplan apply`")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of text")
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
    )
    handlers = {
        "inspect": _inspect,
        "preset": _preset,
        "size": _size,
        "validate": _validate,
        "apply": _apply,
        "eval": _eval,
        "measure-latency": _measure_latency,
        "profile": _profile,
        "fit-latency": _fit_latency,
        "predict-latency": _predict_latency,
        "search": _search,
        "worker": _worker,
    }
    try:
        return handlers[args.command](args)
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


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def _table(rows: list[list[str]], header: list[str], right: set[int] = frozenset()) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.3f} MiB"


def inspect_rows(graph) -> list[dict]:
    """The `inspect --json` layer list: compressible layers, their BatchNorms, kept modules."""
    rows = []
    for spec in graph.layers.values():
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "weight_shape": list(spec.weight_shape),
                "params": spec.params,
                "macs": spec.macs,
                "group": spec.group,
                "compressible": True,
                "reason": "",
            }
        )
        if spec.batchnorm:
            rows.append(
                {
                    "name": spec.batchnorm,
                    "kind": "batchnorm",
                    "weight_shape": [spec.out_channels],
                    "params": spec.batchnorm_params,
                    "macs": 0,
                    "group": spec.group,
                    "compressible": False,
                    "reason": f"folded after '{spec.name}': two 32-bit vectors per kept channel",
                }
            )
    for module in graph.kept:
        rows.append(
            {
                "name": module.name,
                "kind": module.kind,
                "weight_shape": None,
                "params": module.params,
                "macs": None,
                "group": None,
                "compressible": False,
                "reason": module.reason,
            }
        )
    return rows


def _inspect(args: argparse.Namespace) -> int:
    _, graph = _graph(args)
    rows = inspect_rows(graph)
    if args.json:
        _print_json(
            {
                "model": args.model,
                "fingerprint": graph.fingerprint,
                "total_params": graph.total_params,
                "baseline_bytes": graph.baseline_bits // 8,
                "total_macs": graph.total_macs,
                "layers": rows,
                "groups": [
                    {
                        "id": g.id,
                        "channels": g.channels,
                        "layers": list(g.layers),
                        "consumers": list(g.consumers),
                        "prunable": g.prunable,
                        "reason": g.reason,
                    }
                    for g in graph.groups
                ],
            }
        )
        return 0
    table = [
        [
            r["name"],
            r["kind"],
            "×".join(map(str, r["weight_shape"])) if r["weight_shape"] else "-",
            f"{r['params']:,}",
            f"{r['macs']:,}" if r["macs"] else "-",
            "-" if r["group"] is None else str(r["group"]),
            "yes" if r["compressible"] else "no: " + r["reason"],
        ]
        for r in rows
    ]
    print(
        _table(
            table, ["layer", "kind", "weight", "params", "MACs", "group", "compressible"], {3, 4}
        )
    )
    print()
    print(
        f"{args.model}: {len(graph.layers)} compressible layers, "
        f"{len(graph.kept)} modules kept as is; {graph.total_params:,} parameters "
        f"({graph.compressible_params:,} in compressible layers), "
        f"{graph.total_macs:,} MACs, baseline {_mib(graph.baseline_bits / 8)} at 32 bits"
    )
    prunable = sum(g.prunable for g in graph.groups)
    print(f"coupling groups: {len(graph.groups)} ({prunable} prunable)")
    if graph.trace_error:
        print(f"dependency trace failed, no channel pruning: {graph.trace_error}")
    if args.groups:
        for g in graph.groups:
            status = "prunable" if g.prunable else f"not prunable: {g.reason}"
            print(f"  group {g.id} ({g.channels} ch, {status}): {', '.join(g.layers)}")
    return 0


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
    from predictors.size import size_report

    _, graph = _graph(args)
    report = size_report(_plan_for(args, graph), graph)
    if args.json:
        _print_json(report.to_dict())
        return 0
    rows = [
        [
            layer.name,
            layer.method,
            f"{layer.out_channels}/{layer.in_channels}",
            str(layer.k_eff or "-"),
            f"{layer.bits / 8:,.0f}",
            f"{layer.ratio:.1f}×",
        ]
        for layer in report.layers
    ]
    print(_table(rows, ["layer", "method", "out/in ch", "k_eff", "bytes", "ratio"], {3, 4, 5}))
    print()
    if report.kept_bits:
        print(f"modules kept as is: {report.kept_bits // 8:,} bytes")
    print(
        f"size {report.size_bytes:,} bytes = {report.size_mib:.3f} MiB; baseline "
        f"{_mib(report.baseline_bits / 8)}; compression {report.compression_ratio:.1f}×"
    )
    return 0


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

    job = CompressionJob(
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
    )
    result = job.run()
    if args.json:
        _print_json(result)
        return 0
    before, after = result["accuracy_before"], result["accuracy_after"]
    if before is not None:
        print(f"accuracy {before:.2%} before, {after:.2%} after compression and fine-tuning")
    print(
        f"wrote {args.out}: {result['file_bytes']:,} bytes on disk; weights "
        f"{result['payload_bytes']:,} bytes (predicted {result['predicted_bytes']:,.0f}), "
        f"{result['compression_ratio']:.1f}× smaller than {_mib(result['baseline_bytes'])}"
    )
    return 0


def _measure_latency(args: argparse.Namespace) -> int:
    import copy

    import torch

    from engine.deploy import deployed_structure
    from engine.export import freeze_
    from predictors.profile import MIN_RUNS, device_fingerprint, measure
    from search_spaces import PlanError

    if args.runs < MIN_RUNS or args.batch < 1 or args.threads < 1:
        raise PlanError(f"--runs must be at least {MIN_RUNS}, --batch and --threads at least 1")
    loaded, graph = _graph(args)
    plan = _plan_for(args, graph)
    compressed = deployed_structure(loaded.module, plan, loaded.example_inputs)
    original = freeze_(copy.deepcopy(loaded.module))
    batch = torch.randn(args.batch, *loaded.example_inputs[0].shape[1:])
    # Interleaved, so that a change in the machine's load touches both alike.
    timings = {"compressed": [], "uncompressed": []}
    for _ in range(3):
        timings["compressed"].append(
            measure(compressed, batch, runs=args.runs, threads=args.threads)
        )
        timings["uncompressed"].append(
            measure(original, batch, runs=args.runs, threads=args.threads)
        )
    # The middle of three interleaved repeats, and its interquartile spread.
    middle = {k: sorted(v, key=lambda t: t.median_ms)[1] for k, v in timings.items()}
    result = {
        "latency_ms": middle["compressed"].median_ms,
        "spread": middle["compressed"].spread,
        "uncompressed_ms": middle["uncompressed"].median_ms,
        "ratio": middle["compressed"].median_ms / middle["uncompressed"].median_ms,
        "repeats": {k: [t.median_ms for t in v] for k, v in timings.items()},
        "batch": args.batch,
        "device": device_fingerprint("cpu", args.threads),
    }
    if args.json:
        _print_json(result)
        return 0
    print(
        f"{args.plan} on {args.model}: {result['latency_ms']:.3f} ms (spread "
        f"{result['spread']:.1%}) against {result['uncompressed_ms']:.3f} ms uncompressed, "
        f"×{result['ratio']:.3f}; batch {args.batch}, {args.threads} thread(s), "
        f"{result['device']['cpu']}"
    )
    return 0


def _profile(args: argparse.Namespace) -> int:
    import time

    import pandas as pd

    from predictors.latency import (
        check_records_path,
        profile,
        profile_layers,
        save_records,
        synthetic_layer_configs,
    )
    from search_spaces import Plan, PlanError

    if args.samples < 1 or args.synthetic_layers < 0 or args.processes < 0 or args.repeats < 1:
        raise PlanError(
            "--samples and --repeats must be at least 1, --synthetic-layers and --processes at "
            "least 0"
        )
    if args.runs < 30 or args.threads < 1:
        raise PlanError("--runs must be at least 30 and --threads at least 1")
    out = Path(args.out)
    check_records_path(out)  # refuse a bad suffix before measuring for minutes
    plans = [Plan.load(p) for p in args.plan] if args.plan else None
    settings = {
        "device": args.device,
        "threads": args.threads,
        "runs": args.runs,
        "rounds": args.rounds,
        "processes": args.processes,
        "repeats": args.repeats,
        "progress": sys.stderr.isatty(),
    }
    started = time.perf_counter()
    try:
        records = profile(
            args.model,
            input_shape=args.input_shape,
            plans=plans,
            samples=args.samples,
            seed=args.seed,
            layers=not args.no_layers,
            **settings,
        )
    except ValueError as error:
        raise PlanError(str(error)) from None
    if args.synthetic_layers:
        batch = int(records["input_shape"].iloc[0].split("x")[0])  # the user's batch size
        configs = synthetic_layer_configs(args.synthetic_layers, batch=batch, seed=args.seed)
        synthetic = profile_layers(configs, **settings)
        records = pd.concat([records, synthetic], ignore_index=True)
    records.attrs = {}
    save_records(records, out)
    seconds = time.perf_counter() - started
    models = records[records["record"] == "model"]["latency_ms"]
    summary = {
        "out": str(out),
        "plans": len(models),
        "layers": int((records["record"] == "layer").sum()),
        "seconds": seconds,
        "latency_ms": {
            "min": float(models.min()),
            "median": float(models.median()),
            "max": float(models.max()),
        },
        "spread_median": float(records[records["record"] == "model"]["spread"].median()),
        "device": {k: records[k].iloc[0] for k in ("device", "cpu", "threads", "torch", "gpu")},
    }
    summary["device"]["threads"] = int(summary["device"]["threads"])
    if args.json:
        _print_json(summary)
        return 0
    lat = summary["latency_ms"]
    print(
        f"measured {summary['plans']} plans of {args.model} and {summary['layers']} single layers "
        f"in {seconds:.0f} s on {summary['device']['cpu']} ({args.device}, {args.threads} "
        f"thread(s)): {lat['min']:.3f}–{lat['max']:.3f} ms, median {lat['median']:.3f} ms, "
        f"spread within a measurement {summary['spread_median']:.1%}"
    )
    print(f"wrote {out}; next: compplan fit-latency {out} --out latency.json")
    return 0


def _fit_latency(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import pandas as pd

    from predictors.latency import PredictorError, load_records, make_predictor, record_graphs

    if not 0 <= args.holdout < 1:
        raise PredictorError(f"--holdout must be in [0, 1) (got {args.holdout})")
    records = load_records(*args.records)
    options = {"seed": args.seed} if args.kind == "network" else {}
    models = records[records["record"] == "model"]
    summary: dict = {"kind": args.kind, "records": len(records), "plans": len(models)}
    graphs = record_graphs(records)  # discovered once, for both fits
    if args.holdout > 0:
        order = np.random.default_rng(args.seed).permutation(len(models))
        n_test = max(1, round(args.holdout * len(models)))
        test, train = models.iloc[np.sort(order[:n_test])], models.iloc[np.sort(order[n_test:])]
        layers = records[records["record"] == "layer"]
        held = make_predictor(args.kind, **options).fit(
            pd.concat([train, layers], ignore_index=True), graphs=graphs
        )
        predicted, measured = held.predict_records(test, graphs=graphs)
        error = np.abs(predicted / measured - 1)
        summary["holdout"] = {
            "plans": len(error),
            "within_10pct": float(np.mean(error <= 0.1)),
            "mape": float(np.mean(error)),
        }
    started = time.perf_counter()
    predictor = make_predictor(args.kind, **options).fit(records, graphs=graphs)
    summary["fit_seconds"] = time.perf_counter() - started
    summary["out"] = str(predictor.save(args.out))
    summary["device"] = predictor.fingerprint
    if args.json:
        _print_json(summary)
        return 0
    if "holdout" in summary:
        h = summary["holdout"]
        print(
            f"held-out {h['plans']} plans: {h['within_10pct']:.1%} within ±10%, "
            f"mean error {h['mape']:.1%}"
        )
    print(
        f"fit a {args.kind} predictor on {summary['plans']} plans in "
        f"{summary['fit_seconds']:.1f} s for {predictor.fingerprint['cpu']} "
        f"({predictor.fingerprint['device']}, {predictor.fingerprint['threads']} thread(s)); "
        f"wrote {summary['out']}"
    )
    return 0


def _predict_latency(args: argparse.Namespace) -> int:
    from predictors.latency import load_predictor

    predictor = load_predictor(args.predictor)
    _, graph = _graph(args, pretrained=False)
    plan = _plan_for(args, graph)
    latency = float(predictor.predict(graph, [plan])[0])
    result = {
        "latency_ms": latency,
        "predictor": args.predictor,
        "kind": predictor.kind,
        "device": predictor.fingerprint,
    }
    if args.json:
        _print_json(result)
        return 0
    fingerprint = predictor.fingerprint
    print(
        f"{args.plan or args.preset} on {args.model}: {latency:.3f} ms predicted by the "
        f"{predictor.kind} predictor for {fingerprint.get('cpu')} ({fingerprint.get('device')}, "
        f"{fingerprint.get('threads')} thread(s))"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from engine.export import ExportError, load, read_metadata
    from zoo.tasks import get_task

    meta = read_metadata(args.file)
    if not meta.get("task"):
        raise ExportError(
            f"{args.file} records no task to evaluate on; compplan eval scores zoo task models "
            "(load it in Python with engine.load and evaluate it yourself)"
        )
    try:
        task = get_task(meta["task"])
    except ValueError as error:
        raise ExportError(f"{args.file}: {error}") from None
    model = load(args.file)
    accuracy = task.accuracy(model, "test")
    if args.json:
        _print_json({"file": args.file, "task": meta["task"], "accuracy": accuracy})
    else:
        print(f"{args.file}: {meta['task']} test accuracy {accuracy:.2%}")
    return 0


def _planner_from_setup(setup: dict, loaded, graph, *, storage, study, seed, **options):
    """The planner a study's recorded `setup` describes (the same for `search` and `worker`)."""
    from planner.search import Planner
    from search_spaces import Budget, SearchSpace
    from zoo.tasks import get_task

    task = get_task(loaded.task) if loaded.task else None
    return Planner(
        loaded.module,
        loaded.example_inputs,
        space=SearchSpace(graph, protect_ends=setup["protect_ends"]),
        budget=Budget(**setup["budget"]),
        latency=setup["latency_model"],
        storage=storage,
        study_name=study,
        sampler=setup["sampler"],
        multi_objective=setup["pareto"],
        calibration=[task.calibration()] if task is not None else None,
        seed=seed,
        model_spec=setup["model"],
        setup=setup,
        **options,
    )


def _worker(args: argparse.Namespace) -> int:
    import optuna

    from planner.search import PlannerError, open_storage

    if args.trials < 1:
        raise PlannerError(f"--trials must be at least 1, not {args.trials}")
    storage = open_storage(args.storage)
    names = optuna.study.get_all_study_names(storage)
    if args.study not in names:
        held = ", ".join(sorted(names)) or "none"
        raise PlannerError(
            f"no study '{args.study}' in {args.storage} (it holds: {held}); create it with "
            "`compplan search --storage URL --study NAME --trials 0 --model … --size-budget …`"
        )
    setup = optuna.load_study(study_name=args.study, storage=storage).user_attrs.get("compplan")
    if setup is None:
        raise PlannerError(
            f"study '{args.study}' was not created by `compplan search`: it records no model "
            "or budgets for a worker to use"
        )
    args.model, args.input_shape = setup["model"], setup.get("input_shape")
    loaded, graph = _graph(args)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    planner = _planner_from_setup(
        setup, loaded, graph, storage=args.storage, study=args.study, seed=seed
    )
    planner.seed_exact = False  # the study's creator seeds it, once
    where = f"{args.storage} (study '{args.study}')"
    bar = _SearchBar(args.trials, enabled=not args.json, count="own")
    try:
        result = planner.search(new_trials=args.trials, timeout=args.timeout, progress=bar.update)
    except KeyboardInterrupt:
        bar.close()
        return _fail(f"worker stopped; every finished trial is in {where}", 130)
    bar.close()
    mine = result.trials[result.trials["worker"] == planner.worker_id]
    summary = {
        "storage": args.storage,
        "study": args.study,
        "worker": planner.worker_id,
        "trials_here": len(mine),
        "trials_in_study": len(result.trials),
        "best": result.best,
    }
    if args.json:
        _print_json(summary)
        return 0
    best = result.best
    print(
        f"ran {len(mine)} trials as {planner.worker_id}; the study holds {len(result.trials)}"
        + (
            f"; best proxy {best['value']:.4g} at {_mib(best['size_bytes'])} (#{best['number']})"
            if best
            else ""
        )
    )
    return 0


def _search(args: argparse.Namespace) -> int:
    from planner.budgets import parse_size
    from planner.search import PlannerError
    from search_spaces import Budget
    from zoo.tasks import get_task

    if args.trials < 0:
        raise PlannerError(f"--trials must be at least 0, not {args.trials}")
    if args.size_budget is None and args.latency_budget is None and args.macs_budget is None:
        raise PlannerError(
            "give at least one budget: --size-budget (x25, 1.2MiB), --latency-budget MS "
            "or --macs-budget N"
        )
    if args.out is None and args.trials > 0:
        raise PlannerError("give --out FILE for the best plan (or --trials 0 to only create it)")
    out = Path(args.out or "plan.json")
    if out.is_dir() or not out.parent.is_dir():
        raise PlannerError(f"--out {out}: give a file path in an existing folder")
    if args.plot and Path(args.plot).suffix.lower() not in (".html", ".png"):
        raise PlannerError(f"--plot {args.plot}: give a .html (interactive) or .png file")
    loaded, graph = _graph(args)
    if args.objective == "real" and not loaded.task:
        raise PlannerError(
            f"the real objective needs task data, and {args.model} has none; use --objective "
            "proxy (or a zoo model with a task, such as zoo:digits)"
        )
    if args.candidates < 1 or args.epochs < 0 or args.tune_lr < 0:
        raise PlannerError("--candidates must be at least 1, --epochs and --tune-lr at least 0")
    if args.tune_lr and args.objective != "real":
        raise PlannerError("--tune-lr needs --objective real (learning rates are scored by it)")
    budget = Budget(
        size_bytes=None
        if args.size_budget is None
        else parse_size(args.size_budget, graph.baseline_bits / 8),
        latency_ms=args.latency_budget,
        macs=args.macs_budget,
    )
    task = get_task(loaded.task) if loaded.task else None
    setup = {
        "model": args.model,
        "input_shape": args.input_shape,
        "budget": budget.to_dict(),
        "protect_ends": args.protect_ends == "yes",
        "latency_model": None if args.latency_model is None else str(Path(args.latency_model)),
        "sampler": args.sampler,
        "pareto": args.pareto,
    }
    on_ray = args.backend == "ray"
    if on_ray and args.trials == 0:
        raise PlannerError(
            "--trials 0 creates a study for `compplan worker`s: use --backend optuna"
        )
    real = None
    if args.objective == "real":
        from planner.real import RealObjective

        real = RealObjective(
            loaded.module, loaded.example_inputs, task, epochs=args.epochs, seed=args.seed
        )
    ray_options = {
        "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial,
        "results": args.ray_results,
        # On Ray the trials themselves fine-tune (ASHA stops the poor ones early).
        "real": real,
    }
    planner = _planner_from_setup(
        setup,
        loaded,
        graph,
        storage=args.storage,
        study=args.study,
        seed=args.seed,
        backend=args.backend,
        address=args.address,
        ray_options=ray_options if on_ray else None,
    )
    where = f"{planner.storage_url} (study '{planner.study_name}')"
    if on_ray:
        where = f"{Path(args.ray_results) / planner.study_name} (Ray Tune experiment)"
        if not args.json:
            print(f"running {args.trials} trials on Ray; results in {where}", file=sys.stderr)
    if args.trials == 0:
        planner.open_study()
        command = f"compplan worker --storage '{planner.storage_url}' --study {planner.study_name}"
        if args.json:
            _print_json({"storage": planner.storage_url, "study": planner.study_name})
        else:
            print(f"created {where}; run trials in it with:\n  {command} --trials N")
        return 0
    bar = _SearchBar(args.trials, enabled=not args.json)
    try:
        result = planner.search(n_trials=args.trials, timeout=args.timeout, progress=bar.update)
    except KeyboardInterrupt:
        bar.close()
        return _fail(
            f"search stopped; every finished trial is in {where}: run the same command again "
            "to resume",
            130,
        )
    bar.close()
    if result.best_plan is None:
        raise PlannerError(
            f"no feasible plan in {len(result.trials)} trials (kept in {where}); run more "
            "trials (--trials) or loosen the budgets"
        )
    best_plan, refined = result.best_plan, None
    if args.objective == "real" and not on_ray:
        if not args.json:
            print(f"fine-tuning the {args.candidates} best plans by proxy …", file=sys.stderr)
        refined = planner.refine(real, candidates=args.candidates)
        best_plan = refined["plan"]
        if args.tune_lr > 0:
            if not args.json:
                print(
                    f"searching per-layer learning rates ({args.tune_lr} trials) …", file=sys.stderr
                )
            tuned = planner.tune_learning_rates(real, best_plan, trials=args.tune_lr)
            best_plan = tuned["plan"]
            refined["lr"] = {k: tuned[k] for k in ("accuracy", "baseline_accuracy")}
    best_plan.save(out)
    if args.trials_csv:
        result.trials.to_csv(args.trials_csv, index=False)
    if args.plot:
        from planner.plots import save_pareto_plot

        save_pareto_plot(result.trials, result.pareto, args.plot, size_budget=budget.size_bytes)
    summary = {
        "plan": str(out),
        "storage": planner.storage_url,
        "study": planner.study_name,
        "trials": len(result.trials),
        "feasible_trials": int(result.trials["feasible"].fillna(False).astype(bool).sum()),
        "best": result.best,
        "exact": result.exact and {k: v for k, v in result.exact.items() if k != "params"},
        "real": refined
        and {
            "validation_accuracy": refined["accuracy"],
            "proxy": refined["proxy"],
            "size_bytes": refined["size_bytes"],
            "candidates": list(refined["trials"]["user_attrs_candidate"]),
            "winner": refined["candidate"],
            "learning_rates": refined.get("lr"),
        },
        "baseline_bytes": graph.baseline_bits / 8,
        "budget": budget.to_dict(),
    }
    if on_ray:
        states = result.trials["state"]
        summary["failed_trials"] = int((states == "FAIL").sum())
        summary["nodes"] = sorted(result.trials["node"].dropna().unique().tolist())
        summary["storage"] = result.storage
    if args.json:
        _print_json(summary)
        return 0
    _print_plan_table(best_plan, graph)
    best = result.best
    ratio = graph.baseline_bits / 8 / best["size_bytes"]
    latency = "" if best["latency_ms"] is None else f", {best['latency_ms']:.2f} ms predicted"
    print(
        f"\nbest of {len(result.trials)} trials (#{best['number']}): proxy {best['value']:.4g}, "
        f"{_mib(best['size_bytes'])} ({ratio:.1f}×){latency}"
    )
    if result.exact is not None:
        exact = result.exact
        print(f"exact solver (keep 1): proxy {exact['proxy']:.4g} in {exact['seconds']:.2f} s")
    if refined is not None:
        print(
            f"real objective: {len(refined['trials'])} candidates fine-tuned {args.epochs} "
            f"epochs; best validation accuracy {refined['accuracy']:.2%} at "
            f"{_mib(refined['size_bytes'])} (proxy {refined['proxy']:.4g}, "
            f"{refined['candidate']})"
        )
        if "lr" in refined:
            lr = refined["lr"]
            print(
                f"per-layer learning rates: validation accuracy {lr['baseline_accuracy']:.2%} → "
                f"{lr['accuracy']:.2%}"
            )
    print(f"wrote {out}; trials kept in {where}")
    return 0


def _print_plan_table(plan, graph) -> None:
    from planner.study_space import option_label
    from predictors.size import size_report

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
    print(_table(rows, ["layer", "weights", "act bits", "keep", "bytes", "ratio"], {2, 3, 4, 5}))


class _SearchBar:
    """The search's progress bar on stderr, with the best feasible trial so far."""

    def __init__(self, total: int, enabled: bool, count: str = "study"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="trial", disable=not enabled, file=sys.stderr)
        self.count = count

    def update(self, finished: int, best) -> None:
        # `finished` counts the whole study, so a resumed study jumps to its earlier trials; a
        # worker counts its own.
        self.bar.update(1 if self.count == "own" else finished - self.bar.n)
        if best is not None:
            self.bar.set_postfix_str(
                f"best {best['value']:.4g} at {best['size_bytes'] / 1024:,.0f} KiB"
            )

    def close(self) -> None:
        self.bar.close()


if __name__ == "__main__":
    sys.exit(main())

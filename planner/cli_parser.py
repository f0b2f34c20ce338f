"""The `compplan` command line: every command, its options and the help that teaches them.

`planner.cli` runs what this parses; here is only what a user types and reads in `--help`.
"""

from __future__ import annotations

import argparse

from predictors.runtimes import RUNTIMES

__all__ = ["USAGE_ERROR", "build_parser"]

USAGE_ERROR = 2

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

  compplan apply --model mynet.py:build --data train.npz --plan plan.json --out my.cpz
  compplan search --model mynet.py:build --data train.npz --size-budget x8 --objective real \
      --out plan.json
  compplan inspect --model encoder.py:build --inputs token_ids.npz

model specs: zoo:NAME, package.module:callable or path/to/file.py:callable (a function returning an
nn.Module; give --input-shape, or --inputs). The zoo: digits, mnist1d (trained), resnet18, resnet50,
mobilenet_v2, minilm (all-MiniLM-L6-v2, pretrained; token ids), and small models of public families:
shufflenet_v2_tiny, efficientnet_tiny, regnet_tiny, convnext_tiny, densenet_tiny, vit_tiny,
bert_tiny (token ids).

your data, on every command that runs data (apply, eval, search, worker):
  --data FILE     .npz or .pt with arrays x and y (optionally x_val, y_val, x_test, y_test, else
                  a seeded 70/15/15 split): fine-tune on them, score classification accuracy
  --inputs FILE   inputs only (x, any dtype: token ids too): fine-tune by distillation on them,
                  score agreement with the original (class outputs) or cosine similarity
                  (embeddings, hidden states); on every other command it gives example inputs
  --task SPEC     package.module:callable or file.py:callable returning a Task of your own:
                  name, metric, train_batches(seed), calibration(), score(model, split)
  The task is recorded in the study and in the exported file; a worker or `eval` runs the code a
  recorded spec names only with --trust-specs.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line, like every other compplan error."""

    def error(self, message: str) -> None:
        self.exit(USAGE_ERROR, f"compplan: error: {message} (see `{self.prog} --help`)\n")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20}
_UNITS["gib"] = 2**30


def _bytes(text: str) -> int:
    """ "512MiB", "4GB", "1000000" → bytes (argparse's type: a ValueError is a usage error)."""
    number = text.strip().rstrip("bBiIkKmMgG")
    unit = text.strip()[len(number) :].lower()
    if unit not in _UNITS or not number.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not a size: write 512MiB, 4GB or bytes")
    size = int(float(number) * _UNITS[unit])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive size")
    return size


def _knob_values(name: str):
    """argparse's type for the comma-separated values of `SearchKnobs` field `name`: a value it
    does not allow is a usage error naming the allowed ones."""

    def parse(text: str) -> tuple:
        from planner.errors import PlannerError
        from planner.knob_restrictions import parse_flag

        try:
            return parse_flag(name, text)
        except PlannerError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _listed(values) -> str:
    """Values as a flag takes them ("2,4,8"; a long run shortened: "2,4,8,...,4096")."""
    text = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return ",".join(text if len(text) <= 6 else [*text[:3], "...", text[-1]])


def _add_knob_flags(search: argparse.ArgumentParser) -> None:
    """`search`'s group "what the search may choose": one comma-separated flag per
    `SearchKnobs` field a user restricts, its allowed values and default in its help."""
    from planner.knob_restrictions import SearchKnobs
    from search_spaces.methods import AUTO_ACTIVATION, activation_bits_of, weight_methods
    from search_spaces.methods.quantizers import WEIGHT_QUANT_BITS

    choose = search.add_argument_group(
        "what the search may choose",
        "comma-separated values, for every layer but the protected ends (--protect-ends); each "
        "layer takes those that fit it (a VQ m must divide its row length)",
    )
    knobs = SearchKnobs().resolved()

    def knob(flag: str, name: str, help_text: str) -> None:
        default = _listed(knobs[name]) if knobs[name] is not None else None
        shown = f" (default {default})" if default else ""
        choose.add_argument(
            flag, type=_knob_values(name), metavar="LIST", help=help_text + shown, dest=name
        )

    methods = ",".join([*(unit.name for unit in weight_methods()), "none"])
    what = f"weight methods, from {methods}: bits is b-bit weights, vq vector quantization, "
    what += "none leaves the layer dense"
    knob("--methods", "methods", what)
    what = f"the bits method's bit-widths, from {_listed(WEIGHT_QUANT_BITS)}"
    knob("--weight-bits", "weight_bits", what)
    act_bits = _listed([*activation_bits_of(AUTO_ACTIVATION), 32])
    what = f"input activation bit-widths, from {act_bits}; 32 is unquantized, so 32 alone "
    what += "compresses weights only"
    knob("--act-bits", "act_bits", what)
    what = "channel keep ratios of each prunable coupling group, in (0, 1]; 1 alone prunes nothing"
    knob("--keep", "keep", what)
    knob("--vq-k", "vq_k", "VQ codebook sizes, powers of two in 2..4096")
    what = "VQ subvector lengths, each used where it divides a layer's row length (default: "
    what += f"every divisor up to {knobs['vq_max_m']})"
    knob("--vq-m", "vq_m", what)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every `compplan` command, its options and their help."""
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

    def command(
        name: str, help_text: str, *, json: str = "", model: bool = True, data=False, **kwargs
    ):
        """A subcommand; with `model`, --model, --input-shape and --inputs; with `data`, the
        task options (--task, --data, --inputs, --distill); with `json`, --json."""
        sub = commands.add_parser(name, help=help_text, description=help_text, **kwargs)
        if model:
            spec = "zoo:NAME, package.module:callable or file.py:callable"
            sub.add_argument("--model", required=True, metavar="SPEC", help=spec)
            shape = "example input shape, batch first, e.g. 1,3,224,224 (zoo models know theirs)"
            sub.add_argument("--input-shape", metavar="SHAPE", help=shape)
            if not data:
                what = "a .npz/.pt file whose array x holds the model's inputs: the example input, "
                what += "of its dtype (token ids)"
                sub.add_argument("--inputs", metavar="FILE", help=what)
                data_limit(sub)
        if data:
            task_options(sub, trust=not model)
        if json:
            sub.add_argument("--json", action="store_true", help=json)
        return sub

    def blocks_and_calls(sub: argparse.ArgumentParser) -> None:
        what = "blocks of the plan and of the uncompressed model, timed in turn (at least 4)"
        # predictors.profile.BLOCKS, written out: importing it would load torch for --help.
        number(sub, "--blocks", 8, what)
        what = "the fewest timed calls per block (a fast side takes enough to fill 2 ms)"
        number(sub, "--calls", 3, what)
        what = "split the blocks into this many rounds, each with the models built afresh"
        number(sub, "--rounds", 3, what)
        what = (
            "time the uncompressed model at least this long per plan, in ms: a fast model "
            "takes more blocks, so its ratio is no noisier than a slow one's; 0: --blocks only"
        )
        # predictors.profile.MIN_TIME_MS, written out: importing it would load torch for --help.
        number(sub, "--min-time-ms", 1000.0, what)

    def task_options(sub: argparse.ArgumentParser, *, trust: bool) -> None:
        group = sub.add_argument_group("your data (see the end of `compplan --help`)")
        source = group.add_mutually_exclusive_group()
        what = "package.module:callable or file.py:callable returning a Task, or zoo:NAME"
        source.add_argument("--task", metavar="SPEC", help=what)
        what = ".npz/.pt with x and y (and x_val, y_val, x_test, y_test): accuracy"
        source.add_argument("--data", metavar="FILE", help=what)
        what = "inputs only (x, any dtype): distill on them, score fidelity to the original"
        source.add_argument("--inputs", metavar="FILE", help=what)
        what = "distillation loss: kl (logits), mse or cosine (embeddings, hidden states, "
        what += "regression); default: the task's, else chosen from the model's output"
        group.add_argument("--distill", choices=("kl", "mse", "cosine"), help=what)
        data_limit(group)
        if trust:
            what = "run the code a model or task spec recorded in the study or file names "
            what += "(file.py:callable); only for studies and files you trust"
            group.add_argument("--trust-specs", action="store_true", help=what)

    def data_limit(sub) -> None:
        what = "refuse a data file whose arrays would take more memory than this (512MiB, 4GB, "
        what += "a number of bytes); default: a quarter of the memory free"
        sub.add_argument("--max-data-bytes", type=_bytes, metavar="SIZE", help=what)

    def plan_or_preset(sub: argparse.ArgumentParser) -> None:
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--plan", metavar="FILE", help="a plan file")
        source.add_argument("--preset", metavar="NAME", help=PRESET_HELP)

    def number(sub: argparse.ArgumentParser, flag: str, default: float, help_text: str, **kw):
        """An int (metavar N) or float (X) option whose help ends with its default."""
        kw.setdefault("metavar", "N" if isinstance(default, int) else "X")
        help_text = f"{help_text} (default {default})"
        sub.add_argument(flag, type=type(default), default=default, help=help_text, **kw)

    def runtime_option(sub: argparse.ArgumentParser, what: str, default: str | None) -> None:
        """--runtime: what runs the deployed plan (the predictor's records name theirs)."""
        shown = f" (default {default})" if default else ""
        sub.add_argument("--runtime", choices=RUNTIMES, default=default, help=what + shown)

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
        "export it. It keeps the fine-tuned state that scores best on the task's validation "
        "data, so it never ends worse than right after applying.",
        json=text,
        data=True,
    )
    apply.add_argument("--plan", required=True, metavar="FILE", help="the plan file to apply")
    apply.add_argument("--out", required=True, metavar="FILE", help="the compressed model file")
    number(apply, "--epochs", 3, "fine-tune epochs, 0 for none")
    what = "base learning rate (default 1e-3; 1e-4 for transformers, which a higher one wrecks)"
    apply.add_argument("--lr", type=float, metavar="X", help=what)
    what = "data-free: distill on inputs made from the BatchNorm statistics (default without data)"
    apply.add_argument("--no-data", action="store_true", help=what)
    what = "inputs to synthesize in data-free mode (about 0.1 s each on 2 cores for digits)"
    number(apply, "--synthetic", 512, what)
    number(apply, "--seed", 0, "seeds k-means and fine-tuning")
    what = (
        "also export it to ONNX (as `compplan export`) and measure that file on ONNX Runtime "
        "against the uncompressed model: measured latency beside the plan's predicted and budget"
    )
    apply.add_argument("--onnx", metavar="OUT.onnx", help=what)

    latency = command(
        "measure-latency",
        "Measure the deployed form of a plan on this machine (pruned channels removed, weights "
        "decoded, activation quantizers in place) against the uncompressed model, timed "
        "interleaved in short blocks: the figure is their ratio, which the machine's speed "
        "phases do not move; its ms are the ratio times the uncompressed model's quiet time.",
        json=text,
    )
    plan_or_preset(latency)
    number(latency, "--batch", 1, "batch size")
    number(latency, "--threads", 1, "threads (torch's, or each ONNX Runtime session's)")
    what = (
        "onnxruntime: both models exported to ONNX (int8 kernels where layers have 8-bit "
        "activations) and run by ONNX Runtime, the plan's file against the uncompressed "
        "model's; torch: PyTorch eager, weights decoded"
    )
    runtime_option(latency, what, "onnxruntime")
    blocks_and_calls(latency)

    search = command(
        "search",
        "Search the best per-layer plan under size, latency and MACs budgets (the exact "
        "solver's answer seeds it; Optuna here, or Ray Tune on a cluster) and write it as a plan "
        "file. The same --study resumes; every finished trial is kept whatever stops it.",
        json="print a JSON summary",
        data=True,
    )
    budgets = search.add_argument_group("budgets (at least one)")
    budgets.add_argument(
        "--size-budget",
        metavar="SIZE",
        help="bytes (1258291), a unit (300KiB, 1.2MiB, 2MB) or a ratio of the fp32 size (x25)",
    )
    what = (
        "predicted latency: 15ms (or 15, 0.015s), or x0.5 for half the uncompressed model's "
        "latency on the predictor's device (needs --latency-model)"
    )
    budgets.add_argument("--latency-budget", metavar="T", help=what)
    budgets.add_argument(
        "--latency-model", metavar="FILE", help="a predictor from `compplan fit-latency`"
    )
    budgets.add_argument("--macs-budget", type=int, metavar="N", help="MACs per example")
    what = (
        "the runtime latency is priced on: the predictor must be fit on its records "
        "(`compplan profile --runtime`)"
    )
    runtime_option(budgets, what, "onnxruntime")
    what = (
        "after the search, export its N best feasible plans, measure each on the runtime and "
        "keep the best one measured within --latency-budget (0: off)"
    )
    number(budgets, "--verify", 0, what, metavar="N")
    search.add_argument(
        "--objective",
        choices=["proxy", "real"],
        default="proxy",
        help="proxy: predicted output distortion (seconds per thousand trials); real: also apply, "
        "fine-tune and score plans on the task's validation data (--data, --inputs, --task, or a "
        "zoo model's own): with optuna the proxy's best candidates, on ray every trial",
    )
    real = search.add_argument_group("the real objective")
    what = "how many of the proxy's best plans to fine-tune, with optuna (default 5)"
    real.add_argument("--candidates", type=int, metavar="N", help=what)
    what = "then search per-layer learning rates (P-Transfer) for the winner in N trials; 0 off"
    number(real, "--tune-lr", 0, what, metavar="N")
    number(real, "--epochs", 2, "fine-tune epochs per plan", metavar="E")
    what = "base fine-tune learning rate (default 1e-3; 1e-4 for transformers)"
    real.add_argument("--lr", type=float, metavar="X", help=what)
    _add_knob_flags(search)
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
    what = (
        "start a new study under the default name with a digest of the model, weights, data and "
        "settings appended, where the study of that name was made for others (resuming it is "
        "refused); the earlier study is kept, and the same --fresh command resumes the new one"
    )
    search.add_argument("--fresh", action="store_true", help=what)
    search.add_argument(
        "--storage",
        metavar="URL",
        help="with optuna: sqlite:///file.db (default sqlite:///compplan-studies.db), "
        "journal:FILE, or postgresql+psycopg2://user@host/db (shared by `compplan worker`s)",
    )
    search.add_argument(
        "--storage-adopt",
        action="store_true",
        help="add the study's tables to a SQLite file that holds another program's tables "
        "(refused without it)",
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
        "budgets, task and space come from the study's config (its specs must resolve here too; "
        "--task, --data or --inputs name the task's data here instead). "
        "Stop it at any time: every finished trial is kept.",
        json="print a JSON summary",
        model=False,
        data=True,
    )
    worker.add_argument("--storage", required=True, metavar="URL", help="the study's storage URL")
    worker.add_argument("--study", required=True, metavar="NAME", help="the study to join")
    number(worker, "--trials", 100, "trials this worker runs", metavar="N")
    worker.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    what = "the sampler's seed (default: a different one per worker)"
    worker.add_argument("--seed", type=int, help=what)
    what = "refuse to join unless the study prices latency on this runtime (default: the study's)"
    runtime_option(worker, what, None)

    profile = command(
        "profile",
        "Measure random plans of a model (and each of their layers alone) on this machine and "
        "save the records for `compplan fit-latency`.",
        json="print a JSON summary",
    )
    profile.add_argument("--out", required=True, metavar="FILE", help="records (.parquet, .csv)")
    number(profile, "--samples", 100, "random plans to measure")
    what = "measure this plan file instead of random plans (repeatable)"
    plans = profile.add_mutually_exclusive_group()
    plans.add_argument("--plan", action="append", metavar="FILE", help=what)
    what = (
        "measure only the uncompressed plan, no layers (seconds): the one record of a model "
        "you have no other records of, to fit beside records of models sharing its block "
        "kinds, such as the zoo families (README, Latency)"
    )
    plans.add_argument("--uncompressed-only", action="store_true", help=what)
    profile.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    number(
        profile, "--threads", 1, "threads while timing (torch's, or each ONNX Runtime session's)"
    )
    what = (
        "what runs the plans: onnxruntime (each plan exported to ONNX, int8 where layers have "
        "8-bit activations; CPU) or torch (PyTorch eager); the records name it"
    )
    runtime_option(profile, what, "onnxruntime")
    blocks_and_calls(profile)
    what = "skip the structured plans (uniform keeps, with and without 8-bit activations)"
    profile.add_argument("--no-structured", action="store_true", help=what)
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
    fit.add_argument(
        "--for-other-models",
        action="store_true",
        help="network only: price each activation quantizer from its input's size and bits "
        "alone, for a model the records hold only its uncompressed plan of (compplan profile "
        "--uncompressed-only) and no models of its block kinds; beside records of models that "
        "share its block kinds, leave it off (README, Latency)",
    )
    what = "the runtime the records were timed on; records of another are refused"
    runtime_option(fit, what, "onnxruntime")
    number(fit, "--holdout", 0.2, "share of the plans held out to report accuracy on, 0 skips it")
    number(fit, "--seed", 0, "seeds the split and the network")
    fit.add_argument(
        "--trust-specs",
        action="store_true",
        help="build the models of records whose model spec runs code (file.py:callable, "
        "package.module:callable); without it only zoo models: only for records you trust",
    )

    what = "Predict a plan's latency with a predictor from `compplan fit-latency`."
    predict = command("predict-latency", what, json=text)
    predict.add_argument("--predictor", required=True, metavar="FILE", help="predictor file")
    what = "the runtime to predict for; a predictor fit on another is refused"
    runtime_option(predict, what, "onnxruntime")
    plan_or_preset(predict)

    what = (
        "Load a model written by `compplan apply` and score it on its task's test data: the "
        "task the file records, or the one given."
    )
    evaluate = command("eval", what, json=text, model=False, data=True)
    what = "a file written by `compplan apply` (.cpz) or `compplan export` (.onnx, scored "
    what += "through onnxruntime)"
    evaluate.add_argument("file", metavar="FILE", help=what)
    what = "the uncompressed model's spec (default: the one the file records)"
    evaluate.add_argument("--model", metavar="SPEC", help=what)

    what = (
        "Export a model written by `compplan apply` to ONNX, each layer in its planned form "
        "(VQ codes and codebooks, packed b-bit levels), for ONNX Runtime or any ONNX runtime: "
        "the runtime decodes the weights once, at load. Layers with 8-bit activations (act:8) "
        "run as ONNX Runtime's int8 kernels where the model quantizes their outputs too; the "
        "report says which."
    )
    text = "print the report (file, payload and predicted bytes, layers) as JSON"
    exporting = command("export", what, json=text, model=False)
    exporting.add_argument("file", metavar="IN.cpz", help="a file written by `compplan apply`")
    exporting.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (default)")
    exporting.add_argument("--out", required=True, metavar="OUT.onnx", help="the file to write")
    what = "the uncompressed model's spec, for its structure (default: the one the file records)"
    exporting.add_argument("--model", metavar="SPEC", help=what)
    what = "build the structure from a file.py:callable spec the file records (files you trust)"
    exporting.add_argument("--trust-specs", action="store_true", help=what)
    return parser

"""A sweep of bad inputs across every command: does each end in one line and exit code 2?

    .venv/bin/python scripts/bad_inputs.py [--only ID_PREFIX ...] [--no-write]

Issue 17 asks that every failure be one line on stderr, `compplan: error: ...` saying what to
do, with exit code 2; never an internal error (exit 1) for a full disk, a malformed records
file or a missing database file; and that a worker never creates a database. This script runs
about a hundred bad inputs, each as its own `compplan` process (`python -m planner.cli`, one at
a time, OMP_NUM_THREADS=1, at most 120 s each), in a temporary folder it creates (with the
files the cases need: plans, data, records, exported models, a study) and removes afterwards.

A case's verdict is "ok" when it exits with 2, its stderr is exactly one line starting with
"compplan: error: ", and its extra checks hold (a file not created, a secret not shown, a
device left as it was, refused within a few seconds); otherwise "WRONG". The table and the
counts are printed (WRONG cases last) and written to benchmarks/results/bad_inputs.json; paths
in the temporary folder show as relative (the processes run in it) and as $TMP in stderr.
The script exits 0 whatever the verdicts: it is a report.

A full disk is simulated by a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so a write past
it fails with EFBIG) set in the process before `planner.cli.main` runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bad_inputs.json"
TIMEOUT_S = 120
PREFIX = "compplan: error: "
SECRET = "S3cretPW"
MARKER = "EVIL_RAN"  # evil.py writes it when imported
OLD_PLAN = b'{"old": "plan"}\n'  # under 64 bytes: the preset full-disk case's old file
OLD_CPZ = b"an old exported model\n"
TARGET = b"the symlink's target\n"

# `planner.cli.main` under a file-size limit of argv[1] bytes: a full disk, for regular files.
FULL_DISK = (
    "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
    "from planner.cli import main; sys.exit(main(sys.argv[2:]))"
)


# --------------------------------------------------------------------------------------------
# Extra checks: each looks at the folder (or the output) after its case ran.


@dataclass(frozen=True)
class Run:
    tmp: Path
    rc: int | None
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class Check:
    label: str
    holds: Callable[[Run], bool]


def absent(name: str) -> Check:
    return Check(f"{name} not created", lambda run: not os.path.lexists(run.tmp / name))


def within(seconds: float) -> Check:
    return Check(f"within {seconds:g} s", lambda run: run.seconds < seconds)


def secret_hidden() -> Check:
    return Check(f"{SECRET} not shown", lambda run: SECRET not in run.stdout + run.stderr)


def dev_full_intact() -> Check:
    return Check(
        "/dev/full still a character device",
        lambda run: stat.S_ISCHR(os.lstat("/dev/full").st_mode),
    )


def symlink_intact(link: str, target: str) -> Check:
    def holds(run: Run) -> bool:
        path = run.tmp / link
        return path.is_symlink() and (run.tmp / target).read_bytes() == TARGET

    return Check(f"{link} still a link, {target} unchanged", holds)


def old_file_kept(folder: str, name: str, content: bytes) -> Check:
    def holds(run: Run) -> bool:
        where = run.tmp / folder
        return sorted(os.listdir(where)) == [name] and (where / name).read_bytes() == content

    return Check(f"{folder}/{name} unchanged, no temporary file", holds)


def no_marker() -> Check:
    def holds(run: Run) -> bool:
        ran = (run.tmp / MARKER).exists()
        (run.tmp / MARKER).unlink(missing_ok=True)  # so the next case starts clean
        return not ran

    return Check("evil.py not imported", holds)


# --------------------------------------------------------------------------------------------
# The cases: compplan arguments, run in the temporary folder the fixtures fill.


@dataclass(frozen=True)
class Case:
    id: str
    args: str  # compplan's arguments (shlex), relative to the temporary folder
    checks: tuple[Check, ...] = ()
    fsize: int | None = None  # a file-size limit in bytes: a full disk


def case(id: str, args: str, *checks: Check, fsize: int | None = None) -> Case:
    return Case(id, args, checks, fsize)


D = "--model zoo:digits"
T = "--model tiny.py:build"  # a model of the user's (its file made in the folder)
SH = "--input-shape 1,1,8,8"
S = "search --model zoo:digits --trials 3 --storage memory"  # a cheap search
S4 = f"{S} --size-budget x4"
A = "apply --model zoo:digits --plan p8.json --epochs 0"  # a cheap apply
A1 = "apply --model zoo:digits --plan p8.json --epochs 1"
P = "profile --model zoo:digits --samples 2"
W = "worker --study s1 --trials 1"
WS = "worker --storage sqlite:///study.db"  # a study "s1" exists in it
PG = f"u:{SECRET}@127.0.0.1:1/db"  # nothing listens on port 1
FIT = "fit-latency r.csv --kind flops"
PRED = "predict-latency --model zoo:digits --plan p8.json --predictor"
LINK = symlink_intact("link.json", "target.json")
# fmt: off
CASES = [
    # models
    case("model-zoo-unknown", "inspect --model zoo:nope"),
    case("model-callable-missing", f"inspect --model tiny.py:missing {SH}"),
    case("model-not-a-module", f"inspect --model tiny.py:not_module {SH}"),
    case("model-raises-on-import", f"inspect --model raises.py:build {SH}"),
    case("model-module-missing", f"inspect --model no_such_pkg.mod:build {SH}"),
    case("model-file-missing", f"inspect --model nothere.py:build {SH}"),
    case("model-no-colon", f"inspect --model tiny.py {SH}"),
    case("model-no-shape", f"inspect {T}"),
    case("shape-zero", f"inspect {T} --input-shape 0"),
    case("shape-negative", f"inspect {T} --input-shape=-1,1,8,8"),
    case("shape-letters", f"inspect {T} --input-shape a,b,c"),
    case("shape-trailing-x", f"inspect {T} --input-shape 1x"),
    case("shape-wrong-rank", f"inspect {T} --input-shape 1,8,8"),
    case("shape-wrong-channels", f"inspect {T} --input-shape 1,3,8,8"),
    case("shape-zoo-wrong", f"inspect {D} --input-shape 1,1,8"),
    case("inputs-missing", f"inspect {D} --inputs nothere.npz"),
    case("inputs-not-npz", f"inspect {D} --inputs text.npz"),
    case("inputs-no-x", f"inspect {D} --inputs nox.npz"),
    case("inputs-pickle-object", f"inspect {D} --inputs object.npz"),
    case("inputs-wrong-suffix", f"inspect {D} --inputs data.txt"),
    case("inputs-wrong-shape", f"inspect {T} --inputs shape3.npz"),
    # plans
    case("plan-missing", f"size {D} --plan nothere.json"),
    case("plan-not-json", f"size {D} --plan notjson.json"),
    case("plan-json-list", f"size {D} --plan list.json"),
    case("plan-format-tag", f"size {D} --plan format.json"),
    case("plan-newer-schema", f"size {D} --plan schema99.json"),
    case("plan-unknown-layer", f"validate {D} --plan unknown_layer.json"),
    case("plan-k-not-allowed", f"validate {D} --plan k3.json"),
    case("plan-bits-5", f"validate {D} --plan bits5.json"),
    case("plan-keep-0", f"validate {D} --plan keep0.json"),
    case("plan-keep-1.5", f"validate {D} --plan keep15.json"),
    case("plan-duplicate-keys", f"validate {D} --plan dup.json"),
    case("plan-fingerprint", f"validate {D} --plan fingerprint.json"),
    case("plan-other-model", f"validate {D} --plan mnist1d.json"),
    case("plan-unknown-method", f"validate {D} --plan method.json"),
    case("validate-plan-missing", f"validate {D} --plan nothere.json"),
    case("size-preset-unknown", f"size {D} --preset nope"),
    case("preset-bits-bad", f"preset {D} --preset bits:5 --out pr1.json", absent("pr1.json")),
    case("preset-keep-bad", f"preset {D} --preset keep:2 --out pr2.json", absent("pr2.json")),
    case("apply-plan-missing", f"apply {D} --plan nothere.json --out a1.cpz --epochs 0"),
    case("apply-plan-other-model", f"apply {D} --plan mnist1d.json --out a2.cpz --epochs 0"),
    case("measure-plan-bits5", f"measure-latency {D} --plan bits5.json"),
    # budgets
    case("budget-abc", f"{S} --size-budget abc --out b1.json"),
    case("budget-negative", f"{S} --size-budget -1 --out b2.json"),
    case("budget-x0", f"{S} --size-budget x0 --out b3.json"),
    case("budget-unit", f"{S} --size-budget 1.2XB --out b4.json"),
    case("budget-impossible", f"{S} --size-budget x100000 --out b5.json"),
    case("budget-none", f"{S} --out b6.json"),
    case("latency-no-model", f"{S} --latency-budget 5 --out b7.json"),
    case("latency-model-missing", f"{S} --latency-budget 5 --latency-model no.json --out b8.json"),
    case("macs-zero", f"{S} --macs-budget 0 --out b9.json"),
    case("macs-negative", f"{S} --macs-budget -5 --out b10.json"),
    case("trials-negative", f"search {D} --size-budget x4 --trials -1 --out b11.json"),
    case("search-real-no-task", f"{S} {T} {SH} --size-budget x4 --objective real --out b12.json"),
    # storage
    case("storage-not-url", f"{S4} --storage localhost:5432/db --out s1.json"),
    case("storage-postgres-refused", f"{S4} --storage postgresql+psycopg2://{PG} --out s2.json",
         secret_hidden(), within(30)),
    case("storage-dialect", f"{S4} --storage foo://x --out s3.json"),
    case("worker-sqlite-misspelt", f"{W} --storage sqlite:///studiez.db", absent("studiez.db")),
    case("worker-journal-missing", f"{W} --storage journal:nothere.log", absent("nothere.log")),
    case("worker-study-absent", f"{WS} --study nope --trials 1"),
    case("worker-no-study", f"{WS} --trials 1"),
    case("worker-trials-0", f"{WS} --study s1 --trials 0"),
    case("worker-dialect", f"{W} --storage foo://x"),
    case("worker-postgres-no-driver", f"{W} --storage postgresql://{PG}", secret_hidden()),
    case("worker-postgres-refused", f"{W} --storage postgresql+psycopg2://{PG}",
         secret_hidden(), within(30)),
    case("worker-data-missing", f"{WS} --study s1 --trials 1 --data nothere.npz"),
    case("worker-not-a-db", f"{W} --storage sqlite:///text.npz"),
    # outputs
    case("out-dev-full", f"preset {D} --preset bits:8 --out /dev/full", dev_full_intact()),
    case("out-directory", f"preset {D} --preset bits:8 --out adir"),
    case("out-symlink", f"preset {D} --preset bits:8 --out link.json", LINK),
    case("out-missing-folder", f"preset {D} --preset bits:8 --out nofolder/p.json"),
    case("apply-out-dev-full", f"{A} --out /dev/full", dev_full_intact(), within(15)),
    case("apply-out-directory", f"{A} --out adir"),
    case("apply-out-symlink", f"{A} --out link.json", LINK),
    case("search-out-directory", f"{S4} --out adir"),
    case("search-csv-missing-folder",  # refused before 300 trials: no study made
         f"search {D} --size-budget x4 --trials 300 --storage sqlite:///csv.db --out o1.json "
         "--trials-csv nofolder/t.csv", within(10), absent("csv.db"), absent("o1.json")),
    case("search-plot-txt", f"{S4} --out o2.json --plot plot.txt", absent("o2.json")),
    case("profile-out-txt", f"{P} --out records.txt"),
    case("profile-out-missing-folder", f"{P} --out nofolder/r.csv"),
    case("fit-out-directory", f"{FIT} --out adir"),
    case("fit-out-dev-full", f"{FIT} --out /dev/full", dev_full_intact()),
    # full disk (a file-size limit); an old file at the path stays as it was
    case("disk-full-preset", f"preset {D} --preset bits:8 --out full1/plan.json",
         old_file_kept("full1", "plan.json", OLD_PLAN), fsize=64),
    case("disk-full-apply", f"{A} --out full2/x.cpz",
         old_file_kept("full2", "x.cpz", OLD_CPZ), fsize=4096),
    case("disk-full-fit", f"{FIT} --out full3/pred.json",
         old_file_kept("full3", "pred.json", OLD_PLAN), fsize=64),
    # records
    case("records-missing", "fit-latency nothere.csv --out f1.json"),
    case("records-random-columns", "fit-latency random.csv --out f2.json"),
    case("records-lookup-no-layers", "fit-latency r.csv --kind lookup --out f4.json"),
    case("records-evil-spec", "fit-latency evil.csv --out f5.json", no_marker()),
    case("records-empty", "fit-latency empty.csv --out f6.json"),
    case("records-parquet-text", "fit-latency fake.parquet --out f7.json"),
    case("records-wrong-suffix", "fit-latency data.txt --out f8.json"),
    case("records-unknown-kind", "fit-latency kinds.csv --out f9.json"),
    case("records-plan-garbage", "fit-latency badplan.csv --kind flops --out f10.json"),
    case("records-latency-text", "fit-latency badlat.csv --kind flops --out f11.json"),
    case("records-shape-garbage", "fit-latency badshape.csv --kind flops --out f12.json"),
    case("records-holdout-2", f"{FIT} --holdout 2 --out f13.json"),
    case("predictor-missing", f"{PRED} no.json"),
    case("predictor-not-json", f"{PRED} notjson.json"),
    case("predictor-empty-object", f"{PRED} empty_object.json"),
    case("predictor-is-a-plan", f"{PRED} p8.json"),
    case("predictor-plan-bits5", f"predict-latency {D} --plan bits5.json --predictor pred.json"),
    # exported files (.cpz); "resealed": the edited metadata's checksum recomputed to match
    case("eval-missing", "eval nothere.cpz"),
    case("eval-directory", "eval adir"),
    case("eval-text", "eval text.cpz"),
    case("eval-plain-safetensors", "eval plain.cpz"),
    case("eval-truncated", "eval truncated.cpz"),
    case("eval-flipped-byte", "eval flipped.cpz"),
    case("eval-meta-bits", "eval meta_bits.cpz"),
    case("eval-meta-bits-resealed", "eval meta_bits_sealed.cpz"),
    case("eval-meta-k", "eval meta_k.cpz"),
    case("eval-meta-k-resealed", "eval meta_k_sealed.cpz"),
    case("eval-meta-huge-shape", "eval meta_shape.cpz", within(30)),
    case("eval-meta-huge-shape-resealed", "eval meta_shape_sealed.cpz", within(30)),
    case("eval-meta-k-eff", "eval meta_keff.cpz", within(30)),
    case("eval-meta-k-eff-resealed", "eval meta_keff_sealed.cpz", within(30)),
    case("eval-meta-evil-spec", "eval meta_evil.cpz", no_marker()),
    case("eval-meta-evil-spec-resealed", "eval meta_evil_sealed.cpz", no_marker()),
    case("eval-meta-evil-task-resealed", "eval meta_evil_task.cpz", no_marker()),
    case("eval-meta-not-json", "eval meta_notjson.cpz"),
    case("eval-meta-newer", "eval meta_v99.cpz"),
    case("eval-other-model", "eval good.cpz --model zoo:mnist1d"),
    case("eval-data-missing", "eval good.cpz --data nothere.npz"),
    # task and data
    case("data-missing", f"{A} --out t1.cpz --data nothere.npz"),
    case("data-no-y", f"{A} --out t2.cpz --data noy.npz"),
    case("data-y-length", f"{A} --out t3.cpz --data ylen.npz"),
    case("data-y-beyond-classes", f"{A} --out t4.cpz --data ybig.npz"),
    case("data-pickle-pt", f"{A} --out t5.cpz --data pickled.pt"),
    case("data-empty-x", f"{A} --out t6.cpz --data emptyx.npz"),
    case("inputs-wrong-dtype", f"{A} --out t7.cpz --inputs strings.npz"),
    case("inputs-shape-for-model", f"{A} --out t8.cpz --inputs shape3.npz"),
    case("task-not-callable", f"{A} --out t9.cpz --task tasks.py:NOT_CALLABLE"),
    case("task-not-a-task", f"{A} --out t10.cpz --task tasks.py:not_task"),
    case("task-raises", f"{A} --out t11.cpz --task tasks.py:raises"),
    case("task-and-data", f"{A} --out t12.cpz --task zoo:digits --data noy.npz"),
    case("task-zoo-unknown", f"{A} --out t13.cpz --task zoo:nope"),
    case("distill-unknown", f"{A} --out t14.cpz --distill nope"),
    case("lr-zero", f"{A1} --out t15.cpz --lr 0", absent("t15.cpz")),
    case("lr-negative", f"{A1} --out t16.cpz --lr -1", absent("t16.cpz")),
    case("epochs-negative", f"apply {D} --plan p8.json --epochs -1 --out t17.cpz"),
    case("synthetic-zero", f"{A1} --no-data --synthetic 0 --out t18.cpz"),
    case("search-data-no-y", f"{S4} --data noy.npz --out t19.json"),
    # misc
    case("command-unknown", "frobnicate"),
    case("option-unknown", f"inspect {D} --frobnicate"),
    case("no-command", ""),
    case("search-no-out", f"search {D} --size-budget x4 --trials 3"),
    case("ray-trials-0", f"search {D} --size-budget x4 --backend ray --trials 0"),
    case("ray-address-refused", f"search {D} --size-budget x4 --backend ray --trials 3 "
         "--address 127.0.0.1:1 --out r1.json", within(60)),
    case("search-timeout-negative", f"{S4} --timeout -1 --out m1.json"),
    case("search-candidates-0", f"{S4} --objective real --candidates 0 --out m2.json"),
    case("measure-calls-0", f"measure-latency {D} --plan p8.json --calls 0"),
    case("measure-blocks-3", f"measure-latency {D} --plan p8.json --blocks 3"),
    case("measure-threads-0", f"measure-latency {D} --plan p8.json --threads 0"),
    case("measure-batch-0", f"measure-latency {D} --plan p8.json --batch 0"),
    case("profile-samples-0", f"profile {D} --samples 0 --out m3.csv", absent("m3.csv")),
    case("profile-calls-0", f"{P} --calls 0 --out m4.csv"),
    case("profile-device-bogus", f"{P} --device banana --out m5.csv"),
    case("profile-plan-missing", f"profile {D} --plan nothere.json --out m6.csv"),
    case("profile-processes-negative", f"{P} --processes -1 --out m7.csv"),
    case("profile-threads-0", f"{P} --threads 0 --out m8.csv"),
    case("profile-blocks-0", f"{P} --blocks 0 --out m9.csv"),
]
# fmt: on


# --------------------------------------------------------------------------------------------
# Fixtures: the files the cases name.

TINY = """\
from torch import nn

NOT_CALLABLE = 3


def build():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )


def not_module():
    return 42
"""
RAISES = 'raise RuntimeError("raises.py fails on import")\n'
EVIL = f"""\
from pathlib import Path

Path(__file__).with_name("{MARKER}").write_text("imported")


def build():
    from zoo.digits import DigitsNet

    return DigitsNet()


def task():
    from zoo.tasks import get_task

    return get_task("digits", seed=0)
"""
TASKS = """\
NOT_CALLABLE = 3


def not_task():
    return 42


def raises():
    raise RuntimeError("tasks.py:raises fails")
"""


def compplan(tmp: Path, args: str) -> None:
    """Run compplan in `tmp` for a fixture; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "planner.cli", *shlex.split(args)],
        cwd=tmp,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        sys.exit(f"fixture `compplan {args}` failed ({done.returncode}):\n{done.stderr}")


def edit_plan(tmp: Path, source: str, name: str, edit: Callable[[dict], object]) -> None:
    plan = json.loads((tmp / source).read_text())
    edited = edit(plan)
    (tmp / name).write_text(json.dumps(plan if edited is None else edited, indent=2))


def first_layer(plan: dict) -> dict:
    return next(iter(plan["layers"].values()))


def make_plans(tmp: Path) -> None:
    compplan(tmp, "preset --model zoo:digits --preset bits:8 --out p8.json")
    compplan(tmp, "preset --model zoo:digits --preset pqf-small --out pq.json")
    compplan(tmp, "preset --model zoo:mnist1d --preset bits:8 --out mnist1d.json")
    (tmp / "notjson.json").write_text("this is not JSON {\n")
    (tmp / "list.json").write_text("[1, 2, 3]\n")
    edit_plan(tmp, "p8.json", "format.json", lambda p: p.update(format="something-else"))
    edit_plan(tmp, "p8.json", "schema99.json", lambda p: p.update(schema_version=99))
    edit_plan(tmp, "p8.json", "unknown_layer.json", lambda p: p["layers"].update(nope={}))
    edit_plan(tmp, "pq.json", "k3.json", lambda p: first_layer(p)["weights"].update(k=3))
    edit_plan(tmp, "p8.json", "bits5.json", lambda p: first_layer(p)["weights"].update(bits=5))
    edit_plan(tmp, "p8.json", "keep0.json", lambda p: first_layer(p).update(keep=0))
    edit_plan(tmp, "p8.json", "keep15.json", lambda p: first_layer(p).update(keep=1.5))
    edit_plan(tmp, "p8.json", "fingerprint.json", lambda p: p.update(fingerprint="sha256:00"))
    method = {"method": "nope", "bits": 8}
    edit_plan(tmp, "p8.json", "method.json", lambda p: first_layer(p).update(weights=method))
    text = (tmp / "p8.json").read_text()  # the first layer named twice, with different bits
    layer = json.dumps(next(iter(json.loads(text)["layers"])))
    twice = f'{layer}: {{"weights": {{"method": "bits", "bits": 2}}}},\n    {layer}:'
    (tmp / "dup.json").write_text(text.replace(f"{layer}:", twice, 1))


def make_data(tmp: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    np.savez(tmp / "nox.npz", y=y)
    np.savez(tmp / "noy.npz", x=x)
    np.savez(tmp / "ylen.npz", x=x, y=y[:7])
    np.savez(tmp / "ybig.npz", x=x, y=y + 100)
    np.savez(tmp / "emptyx.npz", x=x[:0], y=y[:0])
    np.savez(tmp / "shape3.npz", x=rng.standard_normal((40, 3)).astype(np.float32))
    np.savez(tmp / "strings.npz", x=np.array(["a", "b", "c"]))
    np.savez(tmp / "object.npz", x=np.array([{"a": 1}, None], dtype=object))
    (tmp / "text.npz").write_text("not a zip archive\n")
    (tmp / "data.txt").write_text("1 2 3\n")
    import torch

    torch.save({"x": torch.from_numpy(x), "when": datetime.date(2020, 1, 1)}, tmp / "pickled.pt")


def make_records(tmp: Path) -> None:
    compplan(
        tmp,
        "profile --model zoo:digits --samples 3 --no-layers --processes 0 --out r.csv",
    )
    compplan(tmp, "fit-latency r.csv --kind flops --holdout 0 --out pred.json")
    import pandas as pd

    records = pd.read_csv(tmp / "r.csv", dtype=str)

    def variant(name: str, column: str, value: str) -> None:
        records.assign(**{column: value}).to_csv(tmp / name, index=False)

    variant("evil.csv", "model", "evil.py:build")
    variant("kinds.csv", "record", "bogus")
    variant("badplan.csv", "plan", "not a plan")
    variant("badlat.csv", "latency_ms", "fast")
    variant("badshape.csv", "input_shape", "big")
    (tmp / "random.csv").write_text("a,b\n1,2\n3,4\n")
    (tmp / "empty.csv").write_text("")
    (tmp / "fake.parquet").write_text("this is text, not parquet\n")
    (tmp / "empty_object.json").write_text("{}\n")


def make_exports(tmp: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from engine.export import _digest

    compplan(tmp, "apply --model zoo:digits --plan p8.json --out good.cpz --epochs 0")
    compplan(tmp, "apply --model zoo:digits --plan pq.json --out vq.cpz --epochs 0")
    good = (tmp / "good.cpz").read_bytes()
    (tmp / "text.cpz").write_text("not a safetensors file\n")
    save_file({"w": torch.zeros(4)}, str(tmp / "plain.cpz"))
    (tmp / "truncated.cpz").write_bytes(good[: len(good) // 2])
    header = 8 + int.from_bytes(good[:8], "little")
    flipped = bytearray(good)
    flipped[(header + len(good)) // 2] ^= 0xFF  # in the tensor area
    (tmp / "flipped.cpz").write_bytes(bytes(flipped))

    def edited(source: str, name: str, edit: Callable[[dict], None], *, reseal: bool) -> None:
        """`source` with its metadata edited; `reseal`: its checksum recomputed to match."""
        with safe_open(str(tmp / source), framework="pt") as handle:
            meta = json.loads(handle.metadata()["compplan"])
        tensors = load_file(str(tmp / source))
        edit(meta)
        if reseal:
            meta["sha256"] = _digest(tensors, meta)
        save_file(tensors, str(tmp / name), metadata={"compplan": json.dumps(meta)})

    def bits(meta: dict) -> None:
        first_layer(meta["plan"])["weights"]["bits"] = 4

    def k(meta: dict) -> None:
        first_layer(meta["plan"])["weights"]["k"] = 128

    def shape(meta: dict) -> None:
        meta["input_shape"] = [10**6, 1, 8, 8]

    def k_eff(meta: dict) -> None:
        for record in meta["layers"].values():
            if record["weights"]["method"] == "vq":
                record["weights"]["k_eff"] = 10**12

    def evil(meta: dict) -> None:
        meta["model_spec"] = "evil.py:build"

    def evil_task(meta: dict) -> None:
        meta["task"] = f"{tmp / 'evil.py'}:task"

    def v99(meta: dict) -> None:
        meta["version"] = 99

    for source, name, edit in (
        ("good.cpz", "meta_bits", bits),
        ("vq.cpz", "meta_k", k),
        ("good.cpz", "meta_shape", shape),
        ("vq.cpz", "meta_keff", k_eff),
        ("good.cpz", "meta_evil", evil),
    ):
        edited(source, f"{name}.cpz", edit, reseal=False)
        edited(source, f"{name}_sealed.cpz", edit, reseal=True)
    edited("good.cpz", "meta_evil_task.cpz", evil_task, reseal=True)
    edited("good.cpz", "meta_v99.cpz", v99, reseal=True)
    tensors = load_file(str(tmp / "good.cpz"))
    save_file(tensors, str(tmp / "meta_notjson.cpz"), metadata={"compplan": "{not json"})


def make_fixtures(tmp: Path) -> None:
    (tmp / "tiny.py").write_text(TINY)
    (tmp / "raises.py").write_text(RAISES)
    (tmp / "evil.py").write_text(EVIL)
    (tmp / "tasks.py").write_text(TASKS)
    (tmp / "adir").mkdir()
    (tmp / "target.json").write_bytes(TARGET)
    (tmp / "link.json").symlink_to("target.json")
    for folder, name, content in (
        ("full1", "plan.json", OLD_PLAN),
        ("full2", "x.cpz", OLD_CPZ),
        ("full3", "pred.json", OLD_PLAN),
    ):
        (tmp / folder).mkdir()
        (tmp / folder / name).write_bytes(content)
    make_plans(tmp)
    make_data(tmp)
    make_records(tmp)
    make_exports(tmp)
    compplan(tmp, "search --model zoo:digits --size-budget x4 --trials 0 "
             "--storage sqlite:///study.db --study s1")  # fmt: skip
    (tmp / MARKER).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Running the cases.


@dataclass
class Result:
    id: str
    argv: str
    exit: int | None
    stderr_lines: int
    first_line: str
    seconds: float
    verdict: str
    failed_checks: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)  # WRONG cases: their last lines


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("COMPPLAN_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_case(case: Case, tmp: Path) -> Result:
    args = shlex.split(case.args)
    if case.fsize is None:
        argv = [sys.executable, "-m", "planner.cli", *args]
        shown = f"compplan {case.args}".strip()
    else:
        argv = [sys.executable, "-c", FULL_DISK, str(case.fsize), *args]
        shown = f"[RLIMIT_FSIZE={case.fsize}] compplan {case.args}"
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            cwd=tmp,
            env=environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TIMEOUT_S,
        )
        rc, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as timeout:
        rc = None
        stdout = (timeout.stdout or b"").decode(errors="replace")
        stderr = (timeout.stderr or b"").decode(errors="replace")
    seconds = time.perf_counter() - start
    run = Run(tmp, rc, stdout, stderr, seconds)
    # Lines as a terminal shows them end in "\n"; a progress bar's "\r" redraws stay in one.
    lines = stderr.rstrip("\n").split("\n") if stderr.strip() else []
    first = shorten(lines[0].replace(str(tmp), "$TMP")) if lines else ""
    failed = [check.label for check in case.checks if not check.holds(run)]
    one_line = len(lines) == 1 and lines[0].startswith(PREFIX)
    verdict = "ok" if rc == 2 and one_line and not failed else "WRONG"
    tail = (
        [] if verdict == "ok" else [shorten(line.replace(str(tmp), "$TMP")) for line in lines[-3:]]
    )
    return Result(case.id, shown, rc, len(lines), first, round(seconds, 2), verdict, failed, tail)


def shorten(line: str, limit: int = 300) -> str:
    """A line as a terminal last shows it (after a progress bar's redraws), cut to `limit`."""
    line = next((part for part in reversed(line.split("\r")) if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def print_table(results: list[Result]) -> None:
    ordered = [r for r in results if r.verdict == "ok"] + [r for r in results if r.verdict != "ok"]
    width = max(len(r.id) for r in results)
    print(f"{'case':<{width}}  verdict  exit  lines  seconds  first stderr line")
    for r in ordered:
        exit_code = "timeout" if r.exit is None else str(r.exit)
        first = r.first_line if len(r.first_line) <= 150 else r.first_line[:147] + "..."
        print(f"{r.id:<{width}}  {r.verdict:<7}  {exit_code:>4}  {r.stderr_lines:>5}  "
              f"{r.seconds:>7.1f}  {first}")  # fmt: skip
    wrong = [r for r in ordered if r.verdict != "ok"]
    if wrong:
        print(f"\nWRONG ({len(wrong)}):")
        for r in wrong:
            checks = f"; failed checks: {', '.join(r.failed_checks)}" if r.failed_checks else ""
            print(f"  {r.id}: exit {r.exit}, {r.stderr_lines} stderr line(s){checks}")
            print(f"    $ {r.argv}")
            print(f"    first line: {shorten(r.first_line)}")
            if r.stderr_lines > 1:
                print("    last lines: " + " | ".join(r.stderr_tail))


def counts_of(results: list[Result]) -> dict:
    by_exit: dict[str, int] = {}
    for r in results:
        key = "timeout" if r.exit is None else str(r.exit)
        by_exit[key] = by_exit.get(key, 0) + 1
    return {
        "cases": len(results),
        "ok": sum(r.verdict == "ok" for r in results),
        "wrong": sum(r.verdict != "ok" for r in results),
        "by_exit_code": dict(sorted(by_exit.items())),
        "failed_checks": sum(bool(r.failed_checks) for r in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="PREFIX", help="cases whose id starts so")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON results")
    options = parser.parse_args()
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    cases = [c for c in CASES if not options.only or c.id.startswith(tuple(options.only))]
    tmp = Path(tempfile.mkdtemp(prefix="compplan-bad-inputs-"))
    try:
        print(f"making the fixtures in {tmp} ...", flush=True)
        make_fixtures(tmp)
        results = []
        for number, case in enumerate(cases, 1):
            result = run_case(case, tmp)
            print(f"[{number:>3}/{len(cases)}] {result.verdict:<5} {result.id} "
                  f"({result.exit}, {result.seconds:.1f} s)", flush=True)  # fmt: skip
            results.append(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print_table(results)
    counts = counts_of(results)
    print(f"\n{counts['cases']} bad inputs: {counts['ok']} ok, {counts['wrong']} WRONG; "
          f"exit codes {counts['by_exit_code']}")  # fmt: skip
    if not options.no_write and not options.only:
        document = {
            "cases": [vars(r) for r in results],
            "counts": counts,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        RESULTS.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The sweep of bad inputs across every command: each must end in one line and exit code 2.

Every failure is one line on stderr, `compplan: error: ...`, saying what to do, with exit code 2;
never an internal error (exit 1), a traceback, a second line, a file created or changed, or code
run that the user did not name. `CASES` are the bad inputs, each run as its own `compplan`
process (forked from one that imported everything once: `support.fork_runner`) in a folder
`make_fixtures` fills with the files the cases name (plans, data, records, exported models, a
study, model files that misbehave). `tests/planner/test_bad_inputs.py` asserts each case;
`scripts/bad_inputs.py` prints the table and writes benchmarks/results/bad_inputs.json.

A full disk is simulated by a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so a write past
it fails with EFBIG) set in the case's process before `planner.cli.main` runs.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import shlex
import sqlite3
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from support.fork_runner import ForkRunner

TIMEOUT_S = 120
PREFIX = "compplan: error: "
SECRET = "S3cretPW"
MARKER = "EVIL_RAN"  # evil.py writes it when imported
OLD_PLAN = b'{"old": "plan"}\n'  # under 64 bytes: the preset full-disk case's old file
OLD_CPZ = b"an old exported model\n"
TARGET = b"the symlink's target\n"


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


def says(text: str) -> Check:
    """The error line names the cause: it holds `text` (case-insensitive)."""
    return Check(f"says '{text}'", lambda run: text.lower() in run.stderr.lower())


def no_forged_line() -> Check:
    return Check(
        "no forged 'compplan: ok' line",
        lambda run: not any(line.startswith("compplan: ok") for line in run.stderr.splitlines()),
    )


@dataclass(frozen=True)
class Case:
    id: str
    args: str  # compplan's arguments (shlex), relative to the temporary folder
    checks: tuple[Check, ...] = ()
    fsize: int | None = None  # a file-size limit in bytes: a full disk
    slow: bool = False  # takes more than a few seconds (a search, Ray, a connection timeout)


def case(id: str, args: str, *checks: Check, fsize: int | None = None, slow: bool = False) -> Case:
    return Case(id, args, checks, fsize, slow)


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
    case("runtime-unknown", f"{S4} --runtime tflite --out b13.json"),
    case("runtime-predictor-other", f"{S4} --latency-model pred.json --latency-budget x0.9 "
         "--runtime torch --out b14.json"),
    case("verify-no-latency-budget", f"{S4} --verify 2 --out b15.json"),
    case("predict-runtime-other", f"predict-latency {D} --preset bits:8 --predictor pred.json "
         "--runtime torch"),
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
SAME = says("same file")
NL = "'new\nline"  # a name with a newline in it (shlex keeps it inside the quotes)
SQ = "search --model zoo:digits --trials 3 --size-budget x4"  # a search on the default storage
CASES += [
    # one output rule: no output is an input of the same command, or another output
    case("same-apply-out-plan", "apply --model zoo:digits --plan own.json --epochs 0 "
         "--out own.json", SAME),
    case("same-apply-out-plan-dotdot", "apply --model zoo:digits --plan own.json --epochs 0 "
         "--out adir/../own.json", SAME),
    case("same-apply-out-plan-link", "apply --model zoo:digits --plan ownlink.json --epochs 0 "
         "--out own.json", SAME),
    case("same-apply-out-plan-hardlink", "apply --model zoo:digits --plan own.json --epochs 0 "
         "--out ownhard.json", SAME),
    case("same-apply-out-data", f"{A} --data good.npz --out good.npz", SAME),
    case("same-apply-out-inputs", f"{A} --inputs good.npz --out good.npz", SAME),
    case("same-apply-out-model-file", f"apply {T} {SH} --plan tinyplan.json --epochs 0 "
         "--out tiny.py", SAME),
    case("same-apply-out-task-file", f"{A} --task tasks.py:raises --out tasks.py", SAME),
    case("same-search-out-csv", f"{S4} --out same.json --trials-csv same.json", SAME,
         absent("same.json")),
    case("same-search-out-plot", f"{S4} --out same.html --plot same.html", SAME,
         absent("same.html")),
    case("same-search-csv-plot", f"{S4} --out o5.json --trials-csv t.html --plot t.html", SAME),
    case("same-search-out-storage", f"{SQ} --storage sqlite:///study.db --out study.db", SAME),
    case("same-search-out-default-storage", f"{SQ} --out compplan-studies.db", SAME,
         absent("compplan-studies.db")),
    case("same-search-out-journal", f"{SQ} --storage journal:j1.log --out j1.log", SAME,
         absent("j1.log")),
    case("same-search-out-data", f"{S4} --data good.npz --out good.npz", SAME),
    case("same-search-csv-data", f"{S4} --data good.npz --out o6.json --trials-csv good.npz",
         SAME),
    case("same-search-out-latency-model", f"{S4} --latency-model pred.json --latency-budget x0.9 "
         "--out pred.json", SAME),
    case("same-search-out-model-file", f"search {T} {SH} --trials 3 --storage memory "
         "--size-budget x4 --out tiny.py", SAME),
    case("same-fit-out-records", "fit-latency r.csv --kind flops --out r.csv", SAME),
    case("same-fit-out-second-records", "fit-latency r.csv r2.csv --kind flops --out r2.csv",
         SAME),
    case("same-profile-out-plan", f"{P} --plan plan.csv --out plan.csv", SAME),
    case("same-profile-out-model-file", f"profile {T} {SH} --samples 2 --out tiny.py", SAME),
    case("same-preset-out-model-file", f"preset {T} {SH} --preset bits:8 --out tiny.py", SAME),
    case("same-preset-out-inputs", f"preset {T} --inputs good.npz --preset bits:8 "
         "--out good.npz", SAME),
    # user code that exits, is interrupted, or fails: one line, exit 2, both spec forms
    case("code-file-exit-0", f"inspect --model exit0.py:build {SH}", says("exit")),
    case("code-module-exit-0", f"inspect --model exit0:build {SH}", says("exit")),
    case("code-file-exit-3", f"inspect --model exit3.py:build {SH}", says("exit")),
    case("code-file-interrupt", f"inspect --model kbint.py:build {SH}", says("KeyboardInterrupt")),
    case("code-module-interrupt", f"inspect --model kbint:build {SH}", says("KeyboardInterrupt")),
    case("code-file-syntax", f"inspect --model syntax.py:build {SH}", says("SyntaxError")),
    case("code-module-syntax", f"inspect --model syntax:build {SH}", says("SyntaxError")),
    case("code-module-raises", f"inspect --model raises:build {SH}", says("RuntimeError")),
    case("code-file-import-error", f"inspect --model needs.py:build {SH}",
         says("no_such_dependency")),
    case("code-module-import-error", f"inspect --model needs:build {SH}",
         says("no_such_dependency")),
    case("code-call-exit", f"inspect --model misbehave.py:exits {SH}", says("exit")),
    case("code-call-raises", f"inspect --model misbehave.py:raises {SH}", says("ValueError")),
    case("code-call-interrupt", f"inspect --model misbehave.py:interrupts {SH}",
         says("KeyboardInterrupt")),
    case("code-call-returns-none", f"inspect --model misbehave.py:nothing {SH}",
         says("NoneType")),
    case("code-forward-exits", f"inspect --model misbehave.py:exits_in_forward {SH}",
         says("exit")),
    case("code-no-parameters", "inspect --model misbehave.py:no_parameters --input-shape 1,4",
         says("nothing to compress")),
    case("code-no-parameters-preset", "preset --model misbehave.py:no_parameters "
         "--input-shape 1,4 --preset bits:8 --out np.json", says("nothing to compress")),
    case("code-apply-exit", f"apply --model exit0.py:build {SH} --plan tinyplan.json "
         "--epochs 0 --out c1.cpz", says("exit")),
    case("code-search-exit", f"search --model exit0:build {SH} --size-budget x4 --trials 3 "
         "--storage memory --out c2.json", says("exit")),
    case("code-profile-exit", f"profile --model exit0.py:build {SH} --samples 2 --out c3.csv",
         says("exit")),
    case("code-task-file-exit", f"{A} --out c4.cpz --task exit0.py:build", says("exit")),
    case("code-task-call-exit", f"{A} --out c5.cpz --task misbehave.py:exits", says("exit")),
    case("code-task-module-raises", f"{A} --out c6.cpz --task raises:build",
         says("RuntimeError")),
    case("code-model-file-directory", f"inspect --model dir.py:build {SH}"),
    # limits on what a file makes us allocate
    case("limit-inputs-bomb", f"inspect {T} --inputs bomb.npz --max-data-bytes 1GiB",
         says("more than"), within(30)),
    case("limit-data-bomb", f"{A} --out l1.cpz --data bomb.npz --max-data-bytes 1GiB",
         says("more than"), within(30)),
    case("limit-data-pt-over", f"{A} --out l2.cpz --data good.pt --max-data-bytes 1KiB",
         says("more than")),
    case("limit-data-npz-over", f"{A} --out l3.cpz --data good.npz --max-data-bytes 1000",
         says("more than")),
    case("limit-max-data-bytes-0", f"{A} --out l4.cpz --data good.npz --max-data-bytes 0"),
    case("limit-max-data-bytes-text", f"inspect {D} --max-data-bytes lots"),
    case("limit-plan-nesting", f"size {D} --plan deep.json", says("nested")),
    case("limit-plan-digits", f"size {D} --plan digits.json", says("characters")),
    case("limit-plan-huge-float", f"validate {D} --plan hugefloat.json"),
    case("limit-plan-size", f"size {D} --plan huge.json", says("bytes")),
    case("limit-plan-dev-zero", f"size {D} --plan /dev/zero", says("special file"), within(15)),
    case("limit-plan-fifo", f"size {D} --plan fifo.json", says("special file"), within(15)),
    case("limit-plan-directory", f"size {D} --plan adir", says("directory")),
    case("limit-plan-not-utf8", f"size {D} --plan latin1.json", says("UTF-8")),
    case("limit-predictor-nesting", f"{PRED} deep.json", says("nested")),
    case("limit-predictor-digits", f"{PRED} digits.json", says("characters")),
    case("limit-predictor-dev-zero", f"{PRED} /dev/zero", says("special file"), within(15)),
    case("limit-predictor-fifo", f"{PRED} fifo.json", says("special file"), within(15)),
    case("limit-latency-model-fifo", f"{S4} --latency-model fifo.json --latency-budget x0.9 "
         "--out l5.json", says("special file"), within(15)),
    case("limit-records-fifo", "fit-latency fifo.csv --out l6.json", says("special file"),
         within(15)),
    case("limit-data-fifo", f"{A} --out l7.cpz --data fifo.npz", says("special file"),
         within(15)),
    case("limit-inputs-fifo", f"inspect {T} --inputs fifo.npz", says("special file"),
         within(15)),
    case("limit-eval-dev-zero", "eval /dev/zero", says("special file"), within(15)),
    case("limit-eval-fifo", "eval fifo.cpz", says("special file"), within(15)),
    case("limit-shape-huge", f"inspect {T} --input-shape 100000,100000,100000",
         says("elements"), within(15)),
    case("limit-shape-huge-zoo", f"inspect {D} --input-shape 100000000,1,8,8", says("elements"),
         within(15)),
    case("limit-shape-huge-apply", f"apply {T} --input-shape 65536,65536 --plan tinyplan.json "
         "--epochs 0 --out l8.cpz", says("elements"), within(15)),
    case("limit-data-text-npz", f"{A} --out l9.cpz --data text.npz", says("not a .npz")),
    # empty or degenerate splits, refused before any work
    case("split-val-empty", f"{A1} --out e1.cpz --data val0.npz", says("x_val has no rows")),
    case("split-test-empty", f"{A1} --out e2.cpz --data test0.npz", says("x_test has no rows")),
    case("split-one-class", f"{A1} --out e3.cpz --data oneclass.npz", says("one class")),
    case("split-inputs-val-empty", f"{A1} --out e4.cpz --inputs val0.npz",
         says("x_val has no rows")),
    case("split-val-no-y", f"{A1} --out e5.cpz --data valnoy.npz", says("y_val")),
    case("split-search-val-empty", f"{S4} --data val0.npz --out e6.json", says("no rows")),
    # one line means one line: names from files and URLs are printed escaped
    case("line-plan-layer-newline", f"validate {D} --plan newline_layer.json",
         no_forged_line(), says("\\n")),
    case("line-plan-layer-escape", f"validate {D} --plan escape_layer.json", says("\\x1b")),
    case("line-plan-path-newline", f"size {D} --plan {NL}.json'", says("control characters")),
    case("line-out-path-newline", f"preset {D} --preset bits:8 --out {NL}.json'",
         says("control characters")),
    case("line-data-path-newline", f"{A} --out n1.cpz --data {NL}.npz'", says("control")),
    case("line-model-spec-newline", f"inspect --model {NL}.py:build' {SH}"),
    case("line-storage-url-newline", f"{S4} --storage 'sqlite:///n.db\n' --out n2.json",
         says("control characters"), absent("n.db")),
    case("line-storage-path-newline", f"{S4} --storage 'sqlite:///new\nline.db' --out n3.json",
         says("control characters")),
    case("line-worker-storage-newline", "worker --storage 'sqlite:///study.db\n' --study s1",
         says("control characters")),
    case("line-records-model-newline", "fit-latency newline_model.csv --out n4.json"),
    case("line-meta-spec-newline", "eval meta_newline.cpz", no_marker()),
    case("line-pt-pickle-warning", f"{A} --out n5.cpz --data pickled.pt", says("--data")),
    # storage that is not ours, or cannot be made
    case("storage-foreign-sqlite", f"{SQ} --storage sqlite:///other.db --out f1.json",
         says("customers"), absent("f1.json")),
    case("storage-foreign-sqlite-worker", "worker --storage sqlite:///other.db --study s1",
         says("another program")),
    case("storage-not-sqlite", f"{SQ} --storage sqlite:///text.npz --out f2.json",
         says("text.npz")),
    case("storage-sqlite-directory", f"{SQ} --storage sqlite:///adir --out f3.json",
         says("directory")),
    case("storage-journal-directory", "worker --storage journal:adir --study s1",
         says("directory")),
    case("storage-journal-directory-search", f"{SQ} --storage journal:adir --out f4.json",
         says("directory")),
    case("storage-sqlite-dev-null", f"{SQ} --storage sqlite:////dev/null --out f5.json",
         says("special file")),
    case("storage-sqlite-full-disk", f"{SQ} --storage sqlite:///full4/s.db --out full4/p.json",
         absent("full4/s.db"), says("s.db"), fsize=2048),
    case("storage-journal-full-disk", f"{SQ} --storage journal:full5/j.log --out full5/p.json",
         absent("full5/j.log"), says("j.log"), fsize=16),
    # ONNX export and its files
    case("export-out-directory", "export good.cpz --out adir", says("directory")),
    case("export-out-same", "export good.cpz --out good.cpz", SAME),
    case("export-out-dev-full", "export good.cpz --out /dev/full", dev_full_intact()),
    case("export-checksum", "export flipped.cpz --out x1.onnx", absent("x1.onnx")),
    case("export-missing", "export nothere.cpz --out x2.onnx", absent("x2.onnx")),
    case("export-format", "export good.cpz --format tflite --out x3.onnx", absent("x3.onnx")),
    case("export-evil-spec", "export meta_evil_sealed.cpz --out x4.onnx", no_marker(),
         absent("x4.onnx")),
    case("eval-onnx-other-model", "eval good.onnx --model zoo:mnist1d", says("another model")),
    case("eval-onnx-text", "eval text.onnx", says("ONNX")),
    case("eval-onnx-fifo", "eval fifo.onnx", says("special file"), within(15)),
    case("measure-runtime-bogus", f"measure-latency {D} --plan p8.json --runtime tflite"),
    # budgets a number cannot hold
    case("budget-x1e400", f"{S4[: -len('x4')]}x1e400 --out g1.json", says("too large")),
    case("budget-xinf", f"{S4[: -len('x4')]}xinf --out g2.json", says("too large")),
    case("budget-xnan", f"{S4[: -len('x4')]}xnan --out g3.json"),
    case("budget-1e400-bytes", f"{S4[: -len('x4')]}1e400 --out g4.json"),
    case("budget-latency-x1e400", f"{S} --latency-model pred.json --latency-budget x1e400 "
         "--out g5.json", says("too large")),
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


def compplan(runner: ForkRunner, tmp: Path, args: str) -> None:
    """Run compplan in `tmp` for a fixture; it must succeed."""
    done = runner.run(shlex.split(args), tmp, timeout=600)
    if done.code != 0:
        raise RuntimeError(f"fixture `compplan {args}` failed ({done.code}):\n{done.stderr}")


def edit_plan(tmp: Path, source: str, name: str, edit: Callable[[dict], object]) -> None:
    plan = json.loads((tmp / source).read_text())
    edited = edit(plan)
    (tmp / name).write_text(json.dumps(plan if edited is None else edited, indent=2))


def first_layer(plan: dict) -> dict:
    return next(iter(plan["layers"].values()))


def make_plans(runner: ForkRunner, tmp: Path) -> None:
    compplan(runner, tmp, "preset --model zoo:digits --preset bits:8 --out p8.json")
    compplan(runner, tmp, "preset --model zoo:digits --preset pqf-small --out pq.json")
    compplan(runner, tmp, "preset --model zoo:mnist1d --preset bits:8 --out mnist1d.json")
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


def make_records(runner: ForkRunner, tmp: Path) -> None:
    compplan(
        runner,
        tmp,
        # Records to break, not to trust: the shortest protocol that writes them.
        "profile --model zoo:digits --samples 3 --no-layers --processes 0 --no-structured "
        "--min-time-ms 0 --blocks 4 --rounds 1 --out r.csv",
    )
    compplan(runner, tmp, "fit-latency r.csv --kind flops --holdout 0 --out pred.json")
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


def make_exports(runner: ForkRunner, tmp: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from engine.export import _digest

    compplan(runner, tmp, "apply --model zoo:digits --plan p8.json --out good.cpz --epochs 0")
    compplan(runner, tmp, "apply --model zoo:digits --plan pq.json --out vq.cpz --epochs 0")
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


EXIT0 = "raise SystemExit(0)\n"
EXIT3 = "import sys\n\nsys.exit(3)\n"
KBINT = "raise KeyboardInterrupt\n"
SYNTAX = "def build(:\n    pass\n"
NEEDS = "import no_such_dependency  # noqa\n\n\ndef build():\n    return None\n"
MISBEHAVE = """\
import sys

from torch import nn


class ExitsInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)

    def forward(self, x):
        sys.exit(0)


class NoParameters(nn.Module):
    def forward(self, x):
        return x * 2


def exits():
    sys.exit(0)


def raises():
    raise ValueError("misbehave.py:raises fails")


def interrupts():
    raise KeyboardInterrupt


def nothing():
    return None


def exits_in_forward():
    return ExitsInForward()


def no_parameters():
    return NoParameters()
"""
BOMB_MIB = 2289  # 2.4 GB of float32 zeros in a 2.3 MB .npz


def write_npz_bomb(path: Path, mib: int = BOMB_MIB) -> None:
    """An .npz whose `x` (float32, `mib` MiB of zeros, examples of 1x8x8) is a valid deflate
    stream of a few bytes per MiB: a decompression bomb, made without compressing gigabytes."""
    import struct

    examples = mib * 2**20 // 256
    buffer = io.BytesIO()
    shape = (examples, 1, 8, 8)
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    header = buffer.getvalue()
    zeros = bytes(2**20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)  # the same every MiB
    tail = deflate.flush(zlib.Z_FINISH)
    crc = zlib.crc32(header)
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    size = len(header) + mib * 2**20
    packed = len(head) + mib * len(block) + len(tail)
    name = b"x.npy"
    local = struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 8, 0, 0x21, crc, packed,
                        size, len(name), 0)  # fmt: skip
    central = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 8, 0, 0x21, crc,
                          packed, size, len(name), 0, 0, 0, 0, 0, 0)  # fmt: skip
    offset = len(local) + len(name) + packed
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), offset, 0)
    with open(path, "wb") as out:
        out.write(local + name + head)
        for _ in range(mib):
            out.write(block)
        out.write(tail + central + name + end)


def make_hostile(runner: ForkRunner, tmp: Path) -> None:
    """The files of the cases added for issue 34: same-file outputs, misbehaving code, files
    past the limits, degenerate splits, names with control characters, foreign storage."""
    import torch

    for name, text in (("exit0.py", EXIT0), ("exit3.py", EXIT3), ("kbint.py", KBINT),
                       ("syntax.py", SYNTAX), ("needs.py", NEEDS),
                       ("misbehave.py", MISBEHAVE)):  # fmt: skip
        (tmp / name).write_text(text)
    (tmp / "dir.py").mkdir()
    (tmp / "full4").mkdir()
    (tmp / "full5").mkdir()
    plan = (tmp / "p8.json").read_text()
    for name in ("own.json", "plan.csv"):
        (tmp / name).write_text(plan)
    (tmp / "ownlink.json").symlink_to("own.json")
    os.link(tmp / "own.json", tmp / "ownhard.json")
    (tmp / "r2.csv").write_bytes((tmp / "r.csv").read_bytes())
    compplan(runner, tmp, f"preset {T} {SH} --preset bits:8 --out tinyplan.json")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    np.savez(tmp / "good.npz", x=x, y=y)
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp / "good.pt")
    np.savez(tmp / "val0.npz", x=x, y=y, x_val=x[:0], y_val=y[:0])
    np.savez(tmp / "test0.npz", x=x, y=y, x_test=x[:0], y_test=y[:0])
    np.savez(tmp / "oneclass.npz", x=x, y=np.full(40, 3))
    np.savez(tmp / "valnoy.npz", x=x, y=y, x_val=x[:5])
    write_npz_bomb(tmp / "bomb.npz")
    (tmp / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    number = "1" + "0" * 5000
    (tmp / "digits.json").write_text('{"layers": {}, "budget": {"size_bytes": ' + number + "}}")
    edit_plan(tmp, "p8.json", "hugefloat.json", lambda p: first_layer(p).update(keep=1e400))
    with open(tmp / "huge.json", "wb") as huge:  # sparse: 70 MiB that takes no disk
        huge.truncate(70 * 2**20)
    (tmp / "latin1.json").write_bytes(b'{"layers": {"\xe9": {}}}')
    compplan(runner, tmp, "export good.cpz --out good.onnx")
    (tmp / "text.onnx").write_text("not an ONNX file\n")
    for name in ("fifo.json", "fifo.csv", "fifo.npz", "fifo.cpz", "fifo.onnx"):
        os.mkfifo(tmp / name)
    for name, layer in (("newline_layer.json", "stem.0\ncompplan: ok: plan accepted"),
                        ("escape_layer.json", "stem.0\x1b[2J")):  # fmt: skip
        edit_plan(tmp, "p8.json", name, lambda p, layer=layer: p["layers"].update({layer: {}}))
    import pandas as pd

    records = pd.read_csv(tmp / "r.csv", dtype=str)
    records.assign(model="tiny\ncompplan: ok.py:build").to_csv(tmp / "newline_model.csv",
                                                              index=False)  # fmt: skip
    _edited_export(tmp, "good.cpz", "meta_newline.cpz", "x.py:build\ncompplan: ok: trusted")
    with sqlite3.connect(tmp / "other.db") as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO customers (name) VALUES ('Ada')")
    db.close()


def _edited_export(tmp: Path, source: str, name: str, model_spec: str) -> None:
    """`source` with the model spec in its metadata replaced, and its checksum resealed."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from engine.export import _digest

    with safe_open(str(tmp / source), framework="pt") as handle:
        meta = json.loads(handle.metadata()["compplan"])
    tensors = load_file(str(tmp / source))
    meta["model_spec"] = model_spec
    meta["sha256"] = _digest(tensors, meta)
    save_file(tensors, str(tmp / name), metadata={"compplan": json.dumps(meta)})


def make_fixtures(runner: ForkRunner, tmp: Path) -> None:
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
    make_plans(runner, tmp)
    make_data(tmp)
    make_records(runner, tmp)
    make_exports(runner, tmp)
    compplan(runner, tmp, "search --model zoo:digits --size-budget x4 --trials 0 "
             "--storage sqlite:///study.db --study s1")  # fmt: skip
    make_hostile(runner, tmp)
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
    changed: list[str] = field(default_factory=list)  # files created, changed or removed


def folder_state(tmp: Path) -> dict[str, tuple]:
    """Every entry under `tmp` with its kind, size and modification time (links not followed)."""
    state = {}
    for root, folders, files in os.walk(tmp):
        for name in folders + files:
            path = Path(root, name)
            info = path.lstat()
            # A folder's own times change with its entries, which are compared themselves.
            changed = () if stat.S_ISDIR(info.st_mode) else (info.st_size, info.st_mtime_ns)
            state[str(path.relative_to(tmp))] = (info.st_mode, *changed)
    return state


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """The entries created, changed or removed between two `folder_state`s."""

    def what(name: str) -> str:
        return "created" if name not in before else "removed" if name not in after else "changed"

    return sorted(
        f"{name} {what(name)}"
        for name in before.keys() | after.keys()
        if before.get(name) != after.get(name)
    )


def run_case(case: Case, tmp: Path, runner: ForkRunner) -> Result:
    """Run one case and judge it: exit 2, exactly one stderr line starting with `PREFIX`, no
    traceback, no file under `tmp` created, changed or removed, and its own checks."""
    shown = f"compplan {case.args}".strip()
    if case.fsize is not None:
        shown = f"[RLIMIT_FSIZE={case.fsize}] {shown}"
    before = folder_state(tmp)
    done = runner.run(shlex.split(case.args), tmp, timeout=TIMEOUT_S, fsize=case.fsize)
    run = Run(tmp, done.code, done.stdout, done.stderr, done.seconds)
    failed = [check.label for check in case.checks if not check.holds(run)]
    changed = changes(before, folder_state(tmp))
    # Lines as a terminal shows them end in "\n"; a progress bar's "\r" redraws stay in one.
    lines = done.stderr.rstrip("\n").split("\n") if done.stderr.strip() else []
    first = shorten(lines[0].replace(str(tmp), "$TMP")) if lines else ""
    one_line = len(lines) == 1 and lines[0].startswith(PREFIX)
    clean = "Traceback" not in done.stderr and not changed
    verdict = "ok" if done.code == 2 and one_line and clean and not failed else "WRONG"
    tail = (
        [] if verdict == "ok" else [shorten(line.replace(str(tmp), "$TMP")) for line in lines[-3:]]
    )
    seconds = round(done.seconds, 2)
    return Result(
        case.id, shown, done.code, len(lines), first, seconds, verdict, failed, tail, changed
    )


def shorten(line: str, limit: int = 300) -> str:
    """A line as a terminal last shows it (after a progress bar's redraws), cut to `limit`."""
    line = next((part for part in reversed(line.split("\r")) if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."

"""The sweep of bad inputs across every command, as a report: does each end in one line and exit 2?

    .venv/bin/python scripts/bad_inputs.py [--only ID_PREFIX ...] [--no-write]

The cases, their fixtures and the verdict are `tests/support/bad_inputs.py`'s, the same the
test suite asserts (`tests/planner/test_bad_inputs.py`); this prints every case's verdict, exit
code, stderr line count and first line (WRONG cases last, with why), the counts by verdict and
exit code, and writes them to benchmarks/results/bad_inputs.json. Paths in the temporary folder
show as relative (the processes run in it) and as $TMP in stderr. It exits 0 whatever the
verdicts: it is a report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support.bad_inputs import CASES, Result, make_fixtures, run_case, shorten  # noqa: E402
from support.fork_runner import ForkRunner  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "bad_inputs.json"


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
            why = [f"failed checks: {', '.join(r.failed_checks)}"] if r.failed_checks else []
            why += [f"files: {', '.join(r.changed)}"] if r.changed else []
            print(f"  {r.id}: exit {r.exit}, {r.stderr_lines} stderr line(s); {'; '.join(why)}")
            print(f"    $ {r.argv}")
            print(f"    first line: {shorten(r.first_line)}")
            if r.stderr_lines > 1:
                print("    last lines: " + " | ".join(r.stderr_tail))


def counts_of(results: list[Result]) -> dict:
    by_exit: dict[str, int] = {}
    for r in results:
        key = "timeout" if r.exit is None else str(r.exit)
        by_exit[key] = by_exit.get(key, 0) + 1
    by_group: dict[str, dict[str, int]] = {}
    for r in results:
        group = by_group.setdefault(r.id.split("-")[0], {"cases": 0, "ok": 0})
        group["cases"] += 1
        group["ok"] += r.verdict == "ok"
    return {
        "cases": len(results),
        "ok": sum(r.verdict == "ok" for r in results),
        "wrong": sum(r.verdict != "ok" for r in results),
        "by_exit_code": dict(sorted(by_exit.items())),
        "failed_checks": sum(bool(r.failed_checks) for r in results),
        "by_group": dict(sorted(by_group.items())),
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
        with ForkRunner() as runner:
            print(f"making the fixtures in {tmp} ...", flush=True)
            make_fixtures(runner, tmp)
            results = []
            for number, case in enumerate(cases, 1):
                result = run_case(case, tmp, runner)
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

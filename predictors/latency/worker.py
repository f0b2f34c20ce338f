"""The measuring process: `python -m predictors.latency.worker`, fed by `profile`.

Reads {"jobs": [...], "settings": {...}} as JSON on stdin and writes JSON lines on stdout: an
empty object after each round of a job (progress), {"index": i, "timing": {...}} per finished job.
An error goes to stderr, with a non-zero exit.
"""

from __future__ import annotations

import json
import sys

from predictors.latency.profiling import _measure_jobs


def main() -> int:
    request = json.load(sys.stdin)

    def report(index: int, timing: dict) -> None:
        print(json.dumps({"index": index, "timing": timing}), flush=True)

    def progress() -> None:
        print("{}", flush=True)

    try:
        _measure_jobs(request["jobs"], request["settings"], report, progress)
    except Exception as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

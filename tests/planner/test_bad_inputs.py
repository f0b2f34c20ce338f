"""Every bad input of the sweep ends in one line on stderr and exit code 2, with nothing created,
changed or run that should not be (`support.bad_inputs`: the cases, their files, the verdict)."""

from __future__ import annotations

import pytest
from support.bad_inputs import CASES, make_fixtures, run_case
from support.fork_runner import ForkRunner


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(runner, folder): the fork server, and the folder holding every case's files."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    with ForkRunner() as runner:
        make_fixtures(runner, folder)
        yield runner, folder


def test_the_sweep_covers_enough_cases():
    assert len(CASES) >= 250
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES],
)
def test_bad_input_ends_in_one_line_and_exit_2(case, sweep):
    runner, folder = sweep
    result = run_case(case, folder, runner)
    assert result.verdict == "ok", (
        f"{result.argv}: exit {result.exit}, {result.stderr_lines} stderr line(s), first "
        f"{result.first_line!r}, last {result.stderr_tail}, failed checks {result.failed_checks}, "
        f"files {result.changed}"
    )

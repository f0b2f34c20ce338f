"""What a data file can make compplan allocate is capped from its headers, before reading: a
decompression bomb is refused within the cap, in one line, without taking the memory it
declares."""

from __future__ import annotations

import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.bad_inputs import write_npz_bomb
from support.fork_runner import REPO, environment

from search_spaces.data_file import DataFileError, read_arrays, set_max_data_bytes

ADDRESS_SPACE = 2 * 2**30  # RLIMIT_AS of the refused command: 2 GiB
# The command under the limit, reporting its own peak resident memory (KiB) on the last line.
PEAK = (
    "import resource, sys; from planner.cli import main; code = main(sys.argv[1:]); "
    "sys.stderr.flush(); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
    "sys.exit(code)"
)


@pytest.fixture
def cap():
    yield set_max_data_bytes
    set_max_data_bytes(None)


def test_a_decompression_bomb_is_refused_under_a_2_gib_address_space(tmp_path):
    write_npz_bomb(tmp_path / "bomb.npz")  # 2.3 MB on disk, 2.4 GB of float32 in memory
    assert (tmp_path / "bomb.npz").stat().st_size < 3 * 2**20

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    done = subprocess.run(
        [sys.executable, "-c", PEAK, "inspect", "--model", "zoo:digits", "--inputs", "bomb.npz"],
        cwd=tmp_path,
        env=environment() | {"PYTHONPATH": str(REPO)},
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("compplan: error: --inputs bomb.npz")
    assert "2,400,190,464 bytes" in lines[0] and "--max-data-bytes" in lines[0]
    peak_mib = int(done.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mib < 1024, f"peak resident memory {peak_mib:.0f} MiB"


def test_the_cap_counts_each_array_and_their_sum(tmp_path, cap):
    x = np.zeros((100, 10), np.float32)  # 4,000 bytes each
    np.savez(tmp_path / "d.npz", x=x, y=x)
    torch.save({"x": torch.from_numpy(x)}, tmp_path / "d.pt")
    cap(6000)
    with pytest.raises(DataFileError, match="8,000 bytes in memory \\(in all\\)"):
        read_arrays(tmp_path / "d.npz")
    cap(3000)
    with pytest.raises(DataFileError, match="array 'x' alone takes 4,000"):
        read_arrays(tmp_path / "d.npz")
    with pytest.raises(DataFileError, match="more than the 3,000 allowed"):
        read_arrays(tmp_path / "d.pt")
    cap(8000)
    assert sorted(read_arrays(tmp_path / "d.npz")) == ["x", "y"]


def test_a_text_file_named_npz_is_called_that(tmp_path):
    (tmp_path / "t.npz").write_text("1 2 3\n")
    with pytest.raises(DataFileError, match=r"not a \.npz archive") as refused:
        read_arrays(tmp_path / "t.npz")
    assert "pickle" not in str(refused.value)

"""The measuring process keeps freed memory: a large activation freed by one call is served
again from the heap by the next, not mapped afresh (`predictors.allocator`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from predictors.allocator import keep_freed_memory
from predictors.profile import time_calls

GLIBC = hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")

# In a fresh process: allocate and free a 16 MiB tensor, then say how many free bytes glibc's
# heap holds (mallinfo2's fordblks). Kept, the block stays there; by default glibc maps a first
# block that large on its own and gives it back when it is freed.
_PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys
    import torch
    from predictors.allocator import keep_freed_memory
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    agreed = keep_freed_memory() if sys.argv[1] == "keep" else None
    block = torch.ones(4 * 1024 * 1024)  # 16 MiB, written
    del block
    print(agreed, libc.mallinfo2().fordblks)
    """
)


def _free_heap_bytes_after_a_large_block(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(
    not GLIBC,
    reason="mallopt and mallinfo2 are glibc's: on another C library compplan leaves the "
    "allocator as it is",
)
def test_a_measuring_process_keeps_a_freed_activation_for_the_next_call():
    agreed, kept = _free_heap_bytes_after_a_large_block("keep")
    _, default = _free_heap_bytes_after_a_large_block("default")
    assert agreed == "True"
    assert kept >= 16 * 1024 * 1024  # the freed block is still in the heap
    assert default < 16 * 1024 * 1024  # without it, glibc gave the block back


def test_timing_a_module_sets_the_allocator_first():
    keep_freed_memory.cache_clear()
    time_calls(nn.Identity(), (torch.zeros(1),), runs=1, warmup=0)
    assert keep_freed_memory.cache_info().currsize == 1

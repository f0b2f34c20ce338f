"""Run a loop of small tensor operations on one thread.

k-means, the clip search of b-bit weights and the proxy table are thousands of operations on
tensors of a few hundred KiB. Spread over intra-op threads, each operation waits at a barrier for
every thread; where another process holds the cores (a second search, a worker, a test run on a
2-core machine) a thread is descheduled for a time slice at every barrier. Measured here on 2
cores with another torch process running: k-means of 65K points at k = 256 took 33 s on 2 threads
against 1.3 s on one, the proxy table of zoo:digits 37 s against 0.43 s; on an idle machine 2
threads were only 1.1–1.4× faster than one. So these loops run on one thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["one_thread"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads set to 1 for the block, and restored after it."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

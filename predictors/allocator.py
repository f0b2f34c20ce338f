"""`keep_freed_memory()`: tell glibc's malloc to keep freed memory, so that timing measures compute.

Eager PyTorch on CPU allocates every activation afresh and frees it after its last use. With
glibc's default settings a large freed block can go back to the kernel (it was mapped on its own,
or the heap's top is trimmed), and the next call maps it again and page-faults through it. How
often depends on what the process allocated before: measured here (one thread, MobileNetV2 at
1×3×224×224, whose expanded 112×112×96 maps are megabytes), a process whose heap held other
tensors timed the model at 59–81 calibration units with the defaults and at 42–48 with memory
kept, while `compplan profile`'s fresh worker processes timed it at 49 either way. A deployed
runtime plans its buffers once (and PyTorch's CPU guides recommend an allocator that keeps
memory, jemalloc or tcmalloc); with memory kept, every process measures that, whatever it held.

Kept memory is not returned to the system until the process ends: fine for a measuring process.
On a C library other than glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory"]

# mallopt(3) parameters; values are C ints.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit: larger values are refused
_TRIM_NEVER = 2**31 - 1  # the largest C int: the heap's top is never given back


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 32 MiB from its heap and never trim it; True when it
    agreed. Idempotent and cheap after the first call (cached).

    Setting the mmap threshold also stops glibc from moving it (its "dynamic threshold"), so
    the behaviour does not depend on which sizes the process happened to free first.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # no glibc: its allocator is not the one described above
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    trimmed = mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER)
    mapped = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    return bool(trimmed and mapped)

"""Keep freed memory in the process for reuse instead of handing it back to the kernel (glibc).

Every run of a compiled XLA program on CPU allocates its working buffers afresh and frees them
at the end. With glibc's defaults, buffers above 32 MB (and every heap of a thread's own arena)
come straight from ``mmap`` and go back with ``munmap``, so each run pays the kernel for fresh,
zeroed pages: decoding all of Multi30k test_2016_flickr (1,000 sentences, beam 4, 2 cores)
took ~480,000 page faults a pass and ~0.8 s of system time. With one arena, no ``mmap``
allocations and no trimming, the pages are faulted in once and reused: ~0 faults, system time
0.05 s, 7-10% less wall time (docs/performance_log.md).

The cost: the process keeps its peak heap (up to ``TRIM_THRESHOLD`` of free memory at the top),
as a long-running service would want anyway. Set ``JAX_NAMNMT_MALLOC=system`` to keep glibc's
defaults. Elsewhere than glibc (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "JAX_NAMNMT_MALLOC"
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
TRIM_THRESHOLD = 2**31 - 1  # free memory kept at the top of the heap (bytes; mallopt takes an int)
TOP_PAD = 64 << 20  # the heap grows by this much more than asked (fewer brk calls)
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))


def reuse_freed_memory() -> bool:
    """Apply ``SETTINGS`` through glibc's ``mallopt``; True if all took. Must run before other
    threads allocate (a thread keeps the arena it got): the package's ``__init__`` calls it.
    Does nothing (False) with ``JAX_NAMNMT_MALLOC=system``, or without glibc."""
    if os.environ.get(ENV, "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: musl has mallopt as a no-op
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in SETTINGS)

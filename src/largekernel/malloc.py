"""Keep freed memory in the process instead of returning it to the OS (glibc only).

glibc serves blocks over `M_MMAP_THRESHOLD` with fresh `mmap`s and trims the heap top above
`M_TRIM_THRESHOLD`, so every forward pass of a large model gets new pages and page-faults on them
(measured 1.2-1.7x slower at batch 32). `keep_freed_memory()` sets both thresholds high through
`mallopt`, which glibc allows at any time; later allocations reuse freed pages. The cost is that
the process keeps its peak footprint. The `largekernel` command calls it for its own process (set
LARGEKERNEL_MALLOC=default to opt out); a library import never changes the allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_done = False


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Raise glibc's trim and mmap thresholds to `threshold` bytes (default 1 GiB; glibc caps the
    mmap threshold at 32 MiB on 64-bit, above which blocks are still mmapped). Returns whether it
    took effect (False off glibc, or when LARGEKERNEL_MALLOC=default)."""
    global _done
    if _done:
        return True
    if os.environ.get("LARGEKERNEL_MALLOC", "") == "default" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(M_TRIM_THRESHOLD, threshold) == 1
    ok = libc.mallopt(M_MMAP_THRESHOLD, min(threshold, 32 << 20)) == 1 and ok
    _done = ok
    return ok

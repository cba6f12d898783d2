"""How the processes that train and time networks allocate memory: freed blocks are kept for reuse.

PyTorch's CPU tensors come from the C library's ``malloc``, and glibc serves every block above its mmap threshold
(at most 32 MB) with a fresh ``mmap`` and hands it back with ``munmap`` when the tensor dies: the next tensor of that
size is zero-filled page by page again. A layer with large intermediates pays that on every call — TedNet's x2
``BTTLinear`` on LeNet-5 builds two 284 MB intermediates per batch-64 forward and spent more time in page faults
(6.8 million in ten training steps) than in arithmetic: 1.64 s per step as glibc ships, 0.69 s with this policy.
:func:`keep_freed_memory` asks glibc (``mallopt``) to serve large blocks from the heap and to keep up to
:data:`KEEP_BYTES` of freed memory at its top, which is what jemalloc and tcmalloc do by default. The driver and
every worker apply it before their first cell, so every cell and every latency measurement runs under the same
policy whichever executor runs it. Other C libraries are left as they are.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
# Freed memory above this at the top of the heap goes back to the system (a network's eval batch can need GBs once).
KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Large blocks from the heap, up to :data:`KEEP_BYTES` of freed memory kept; ``False`` where glibc is absent."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0 and changes nothing.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))

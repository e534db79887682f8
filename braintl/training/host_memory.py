"""Keep freed host memory for the next batch instead of handing it back to the kernel.

glibc serves every block above 32 MB (and, until it adapts, above 128 KB) with a fresh ``mmap``
and unmaps it when freed. A training step on the CPU allocates and frees the same large tensors
every batch: the 64-103 MB weight gradient of the ``paper`` head at 224 px, a batch's early
activations. Each then arrives as untouched pages that the kernel zeroes and maps one 4 KB page
at a time: on this project's 2-core machine that made one step of MobileNetV2's 224 px head
66 ms instead of 37 ms, and a whole 224 px MobileNetV2 run 1.7× slower, for braintl and the
naive loop alike.

So training keeps freed memory in the heap: no ``mmap`` for large blocks, and trimming only
beyond :data:`KEEP_FREE_MB` of free memory at the heap's top. The cost: a process holds on to
its peak heap. glibc's limits: a thread other than the main one allocates from its own arena,
which still maps blocks above 64 MB (Ray Tune runs each trial in a thread; ``braintl train``
and Ray tasks, cross-validation folds included, train in the main thread). Linux with glibc
only; ``BRAINTL_HOST_MALLOC=default`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

OPT_OUT = "BRAINTL_HOST_MALLOC"
KEEP_FREE_MB = 1024
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt(3) parameters


@functools.cache
def reuse_freed_memory() -> bool:
    """Switch this process's allocator to keeping freed memory; True when it took effect.
    Process-wide and for good (glibc has no way back to its adaptive defaults)."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT, "") == "default":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, KEEP_FREE_MB << 20))
    return all(mallopt(option, value) == 1 for option, value in settings)

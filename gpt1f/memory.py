"""Host memory: stop glibc from keeping a training step's freed tensors resident.

PyTorch's CPU tensors come from ``malloc``. glibc serves a large request with its own ``mmap``,
returned to the system on ``free``, but it raises that threshold each time such a block is freed
(up to 32 MiB), so after the first step most activations and gradients are carved from the heap,
and the heap keeps what a step frees: the process stays at the high-water mark of the first step
plus fragmentation. ``benchmarks/bench_memory.py`` measures the compiled 117M training step's peak
both ways (results: ``benchmarks/results/*_memory*.json``; the README quotes them).

``limit_heap_retention()`` fixes the threshold (which also turns glibc's adjustment off) and trims
the heap once. It is process-wide and explicit: nothing in gpt1f calls it for you. It costs page
faults on every large allocation (measured in the same results files).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3            # glibc's mallopt parameter number (malloc.h)
DEFAULT_THRESHOLD = 1 << 20      # 1 MiB: every activation and gradient tensor of GPT-1 is larger
MAX_THRESHOLD = 32 << 20         # glibc refuses more than HEAP_MAX_SIZE / 2 on 64-bit


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library when it is glibc (``mallopt`` and ``malloc_trim`` exist), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        for symbol in ("mallopt", "malloc_trim", "gnu_get_libc_version"):   # glibc's alone
            getattr(libc, symbol)
    except (OSError, AttributeError):
        return None
    return libc


def limit_heap_retention(threshold_bytes: int = DEFAULT_THRESHOLD) -> bool:
    """Serve allocations of at least ``threshold_bytes`` with ``mmap`` (returned on free) and trim
    the heap now. Returns True when applied, False where the C library is not glibc."""
    if not isinstance(threshold_bytes, int) or not 0 < threshold_bytes <= MAX_THRESHOLD:
        raise ValueError(f"threshold_bytes must be an int in (0, {MAX_THRESHOLD}], got {threshold_bytes!r}")
    libc = _glibc()
    if libc is None:
        return False
    if libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes) != 1:
        return False
    libc.malloc_trim(0)
    return True

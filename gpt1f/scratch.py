"""Kept CPU buffers for the few tensors of a training step too large for malloc to recycle.

glibc serves an allocation above its mmap threshold (at most 32 MiB) with fresh pages from the
kernel and gives them back on free, so such a tensor pays a page fault per 4 KiB page when first
written, every step anew. At 117M three tensors of a step are that large: the dropped-out ``we``
and the LM loss's gradient of it (125 MB each) and the LM loss's logits chunk (83 MB), some 80k
faults a step. :func:`empty` hands out the memory of a buffer kept from an earlier call when no
tensor uses it any more (its storage's use count says so), and allocates otherwise: a tensor it
returns never shares memory with a live one. Buffers are kept per thread and per purpose, at most
:data:`KEEP` of each; CUDA tensors (PyTorch's caching allocator recycles them), small sizes and
calls under ``torch.compile`` tracing go straight to ``torch.empty``. :func:`release` lets the
kept buffers go.
"""
from __future__ import annotations

import math
import threading

import torch

MIN_BYTES = 32 * 2**20   # glibc's largest mmap threshold: smaller blocks come back from its heap
KEEP = 2                 # buffers kept per purpose: accumulating micro-batches holds one a while

_local = threading.local()


def _use_count(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


_UNUSED = _use_count(torch.empty(1))   # the count of a storage only its own tensor holds


def _kept() -> dict[tuple[str, torch.dtype], list[torch.Tensor]]:
    if not hasattr(_local, "buffers"):
        _local.buffers = {}
    return _local.buffers


def _alias(base: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A contiguous ``shape`` tensor over the start of ``base``'s memory: not a view (autograd
    treats it as any fresh tensor), and it counts as a user of the storage."""
    return base.new_empty(0).set_(base.untyped_storage(), 0, shape)   # no strides: contiguous


def empty(purpose: str, shape, *, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``, in a kept buffer of ``purpose`` (any
    name for what the tensor is for) when one is free and the tensor is large and on the CPU."""
    shape = tuple(int(s) for s in shape)
    device = torch.device(device)
    numel = math.prod(shape)
    if (device.type != "cpu" or numel * dtype.itemsize < MIN_BYTES
            or torch.compiler.is_compiling()):
        return torch.empty(shape, dtype=dtype, device=device)
    kept = _kept().setdefault((purpose, dtype), [])
    for base in kept:
        if base.numel() >= numel and _use_count(base) == _UNUSED:
            return _alias(base, shape)
    base = torch.empty(numel, dtype=dtype, device=device)
    kept.append(base)
    del kept[:-KEEP]
    return _alias(base, shape)


def release() -> None:
    """Let this thread's kept buffers go (tensors handed out stay valid: they hold their memory)."""
    _kept().clear()

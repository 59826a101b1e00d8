"""Counter-based randomness: a key is a 0-dim int32 tensor, every random bit a hash of (key, index).

Why not ``torch.Generator``: generators are hidden mutable state, do not trace through dynamo and
cannot be vmapped. Here a random tensor is a pure function of its key and its shape, written in
plain integer tensor ops, so it works unchanged under ``torch.func.grad``, ``torch.func.vmap``
(vmap over a ``[n]`` tensor of keys gives ``n`` independent streams) and
``torch.compile(fullgraph=True)``, where the hash fuses into the consuming kernel.

The hash runs in int32 with wrapping multiplication and arithmetic shifts, which eager CPU, CUDA,
inductor's C++ and Triton kernels all implement alike (tests compare eager and compiled masks bit
for bit); int64 would be exact C semantics too but is several times slower in eager CPU kernels.
"""
from __future__ import annotations

import math

import torch

_MIX = 0x45D9F3B            # multiplier of a well-studied 32-bit integer finaliser
_SPREAD = 0x61C88647          # odd, spreads consecutive counters apart
# Distinct salts per use keep zero seeds/counters off the hash's fixed point (mix(0) == 0) and
# keep the three derivations (seed -> key, key + data -> key, key + index -> bits) apart.
_SALT_SEED, _SALT_FOLD, _SALT_BITS = 0x2545F491, 0x4F1BBCDD, 0x1B873593


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash on int32 tensors (wrapping arithmetic)."""
    x = ((x >> 16) ^ x) * _MIX
    x = ((x >> 16) ^ x) * _MIX
    return (x >> 16) ^ x


def _i32(value: int) -> int:
    """A Python int reduced to the signed 32-bit range."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def key(seed: int, device=None) -> torch.Tensor:
    """A fresh key (0-dim int32) from a Python int seed."""
    return _mix32(torch.tensor(_i32(int(seed) * _SPREAD + _SALT_SEED), dtype=torch.int32, device=device))


def fold_in(key: torch.Tensor, data) -> torch.Tensor:
    """A new key from ``key`` and an int (or int tensor ``[...]``, giving keys ``[...]``)."""
    data = torch.as_tensor(data, device=key.device).to(torch.int32)
    return _mix32(key ^ _mix32(_spread(data, _SALT_FOLD)))


def split(key: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` independent keys ``[n]`` derived from ``key``."""
    return fold_in(key, torch.arange(n, dtype=torch.int32, device=key.device))


def _spread(counter: torch.Tensor, salt: int) -> torch.Tensor:
    """Counters moved apart before hashing. The xor comes first so that inductor cannot fold the
    multiplication into an (int64, then overflowing int32) affine index expression."""
    return (counter ^ _i32(salt)) * _i32(_SPREAD)


def bits(key: torch.Tensor, shape, device=None) -> torch.Tensor:
    """Uniform 32-bit patterns (int32 ``shape``), element ``i`` a hash of ``(key, i)``."""
    shape = tuple(shape)
    key = key if device is None else key.to(device)
    index = torch.arange(_numel(shape), dtype=torch.int32, device=key.device).reshape(shape)
    return bits_at(key, index)


def bits_at(key: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """The bits of :func:`bits` at given flat indices: ``bits(key, shape).flatten()[counters]``
    without the whole tensor.  counters [...] int32 -> [...] int32"""
    return _mix32(_mix32(_spread(counters, _SALT_BITS)) ^ key)


def uniform(key: torch.Tensor, shape, dtype=torch.float32, device=None) -> torch.Tensor:
    """Uniform floats in ``[0, 1)`` on a 2**-24 grid, ``shape``, on ``device`` (default: the key's)."""
    return _unit(bits(key, shape, device), dtype)


def uniform_at(key: torch.Tensor, counters: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The draws of :func:`uniform` at given flat indices.  counters [...] int32 -> [...]"""
    return _unit(bits_at(key.to(counters.device), counters), dtype)


def _unit(bits: torch.Tensor, dtype) -> torch.Tensor:
    """The low 24 bits as a float in ``[0, 1)``."""
    return (bits & 0xFFFFFF).to(dtype) * (1.0 / (1 << 24))


def _float32(p: float) -> float:
    """``p`` rounded to the nearest float32 (ties to even) in plain Python arithmetic, for ``p``
    in float32's normal range (a smaller ``p`` > 0 gives :func:`_kept` the same threshold, 1)."""
    mantissa, exponent = math.frexp(p)                     # p = mantissa * 2**exponent, 0.5 <= m < 1
    return math.ldexp(round(math.ldexp(mantissa, 24)), exponent - 24)


def _kept(bits: torch.Tensor, p: float, dtype) -> torch.Tensor:
    """1 where an element survives dropout at rate ``p``, else 0, in ``dtype``: exactly
    ``uniform >= p`` for the element's draw ``uniform = (bits & 0xFFFFFF) / 2**24`` compared in
    float32, i.e. ``bits & 0xFFFFFF >= ceil(float32(p) * 2**24)``.

    Written as integer arithmetic, not as a comparison: a comparison's bool tensor is what
    autograd's partitioner saves for backward, and inductor's CPU kernels store bools one element
    at a time, many times slower than they store float32 (README, "Speed on CPU").
    """
    threshold = math.ceil(_float32(p) * (1 << 24)) if p > 0 else 0
    below = ((bits & 0xFFFFFF) - threshold) >> 31         # -1 below the threshold, else 0
    return (below + 1).to(dtype)


def normal(key: torch.Tensor, shape, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard normal draws ``shape`` by Box-Muller from two independent uniform streams of ``key``.

    Element ``i`` is a pure function of ``(key, i)``, like every draw here: same key, same draw, in
    eager, under ``vmap`` over keys and compiled. The uniforms lie on a 2**-24 grid, so the tails
    stop at about 5.8 standard deviations (``sqrt(-2 log 2**-24)``).
    """
    u1 = 1.0 - uniform(fold_in(key, 0), shape, torch.float64 if dtype == torch.float64 else
                       torch.float32, device)                                   # (0, 1]
    u2 = uniform(fold_in(key, 1), shape, u1.dtype, device)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)).to(dtype)


def dropout(x: torch.Tensor, p: float, *, key: torch.Tensor | None, train: bool,
            noise_shape=None, counters: torch.Tensor | None = None) -> torch.Tensor:
    """TF ``nn.dropout``: keep each element with probability ``1 - p`` and scale by ``1/(1 - p)``.

    ``noise_shape`` (broadcastable to ``x.shape``) shares one mask along axes of size 1, as TF's
    ``noise_shape``. ``counters`` (int32, broadcastable to ``x.shape``) gives each element the mask
    of that flat index of a larger tensor (``gpt1f.packing``: the element's padded index). Returns
    ``x`` itself when not training or ``p == 0``; raises without a key.
    """
    if not train or p == 0.0:
        return x
    if key is None:
        raise ValueError("dropout with train=True needs a key: pass key=gpt1f.random.key(seed)")
    if counters is not None:
        drawn = bits_at(key.to(x.device), counters.to(x.device))
    else:
        drawn = bits(key, x.shape if noise_shape is None else noise_shape, device=x.device)
    return x * _kept(drawn, p, x.dtype) * (1.0 / (1.0 - p))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def gumbel(key: torch.Tensor, shape, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))``, ``shape``, from the open-interval uniform
    ``u = (24 bits + 1/2) / 2**24``; ``argmax(logits + gumbel)`` draws from ``softmax(logits)``.

    ``key`` may hold a batch of keys ``[..., 1]`` (one per row): each row's draws then equal the
    draws of its own key alone. The noise is bounded (|g| < 17.4), so a logit more than about 20
    below the largest is never drawn (probability below 2e-9).
    """
    u = ((bits(key, shape, device) & 0xFFFFFF).to(dtype) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(u))

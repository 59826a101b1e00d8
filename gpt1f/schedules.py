"""Learning-rate schedules of the TF release: pure functions of training progress ``x``.

``gpt1f.optim`` evaluates them at ``x = (t + 1) / t_total`` for update ``t`` (counted from 0).

Each takes ``x`` (a tensor of any shape, or a Python number) and returns a tensor of the same
shape: the factor that multiplies the base learning rate. ``x <= warmup`` is the linear warm-up
``x / warmup``; after it comes the decay. These are TF's formulas exactly (opt.py of the release):
``x == warmup`` still counts as warm-up, the cosine is not rescaled to the post-warm-up interval,
and ``warmup_linear`` multiplies its ramp by ``1 - x`` as well. Written with
``torch.where`` so they trace through ``torch.compile`` and ``vmap`` without host syncs.

``warmup == 0`` means no warm-up: TF would divide 0 by 0 at ``x == 0``; here the ramp is 1 there.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Schedule = Callable[..., torch.Tensor]


def _as_tensor(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _warmup(x: torch.Tensor, warmup: float, after: torch.Tensor) -> torch.Tensor:
    """``x / warmup`` while ``x <= warmup``, else ``after``. [any] -> [any]"""
    ramp = x / warmup if warmup > 0 else torch.ones_like(x)
    return torch.where(x <= warmup, ramp, after)


def warmup_cosine(x, warmup: float = 0.002) -> torch.Tensor:
    """Linear warm-up, then ``0.5 * (1 + cos(pi * x))``."""
    x = _as_tensor(x)
    return _warmup(x, warmup, 0.5 * (1 + torch.cos(math.pi * x)))


def warmup_constant(x, warmup: float = 0.002) -> torch.Tensor:
    """Linear warm-up, then 1."""
    x = _as_tensor(x)
    return _warmup(x, warmup, torch.ones_like(x))


def warmup_linear(x, warmup: float = 0.002) -> torch.Tensor:
    """The warm-up ramp times ``1 - x``: ``x / warmup * (1 - x)`` while ``x <= warmup``, then ``1 - x``.

    This is TF's ``(s * (x / warmup) + (1 - s)) * (1 - x)``: the decay multiplies the ramp too, so
    the factor peaks at ``1 - warmup``, reaches 0 at ``t == t_total`` and goes negative past it.
    """
    x = _as_tensor(x)
    return _warmup(x, warmup, torch.ones_like(x)) * (1 - x)


SCHEDULES: dict[str, Schedule] = {
    "warmup_cosine": warmup_cosine,
    "warmup_constant": warmup_constant,
    "warmup_linear": warmup_linear,
}


def get(name_or_fn: str | Schedule) -> Schedule:
    """A schedule by its TF name, or a callable ``fn(x, warmup) -> tensor`` passed through."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return SCHEDULES[name_or_fn]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown schedule {name_or_fn!r}; choose one of {sorted(SCHEDULES)} "
            "or pass a function fn(x, warmup) -> tensor") from None

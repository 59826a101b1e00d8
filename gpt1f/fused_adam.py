"""OpenAI Adam's in-place update as two compiled passes over each tensor: the CPU hot path.

Eager ``opt.update_`` runs about 15 ``torch._foreach_*`` passes over every parameter, each reading
and writing the whole model; compiled as one graph over all 147 tensors, inductor takes minutes
to schedule it. Here two small graphs with dynamic sizes, each compiled once and called on flat
views of every tensor in turn, do the same maths in two fused passes:

1. ``moments_``: the clipped gradient (zeros when the update is skipped), the new moments written
   in place, and the tensor's ``max|p|`` and ``max|lrt * u|`` with ``u = m / (sqrt(v) + e) (+ l2 p)``;
2. ``apply_``: ``p - lrt * u`` written in place, or ``p`` unchanged when the update is skipped.

Between them one 0-dim check decides the skip as ``update_`` does (a non-finite global norm, or
``max|p| + max|step|`` not finite for a group of one moment dtype), so the results, the skip
rule and the state's counts are those of ``opt.update_`` up to inductor's fusion and contraction
(a few ulps; ``tests/test_fused_adam.py``). The step's scalars stay tensors: a new step count or
learning rate does not recompile.

    update_ = gpt1f.fused_adam.fused_update_(opt)     # same signature as opt.update_
    params, state = update_(grads, state, params)
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from .optim import AdamState, Optimizer, Params, _Scalars, prepare_update


def _step_direction(w, m, v, e: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """``m / (sqrt(v) + e) + l2 * w`` in the moments' dtype, ``l2`` 0 where the tensor does not
    decay (``+ 0 * w`` changes no finite value; a non-finite ``w`` fails the bound either way).
    [n] x3, [], [] -> [n]"""
    return m / (torch.sqrt(v) + e) + w * l2


def moments_(p, g, m, v, s: _Scalars, e: torch.Tensor, l2: torch.Tensor):
    """Pass 1 over one tensor (flat views ``[n]``): writes the new ``m`` and ``v`` into place and
    returns ``(max|p|, max|lrt * u|)``, 0-dim, in the moments' dtype."""
    g = torch.where(s.ok, g.to(m.dtype) * s.scale, 0.0)          # clipped; zeros when skipping
    new_m = m * s.b1 + g * s.omb1
    new_v = v * s.b2 + s.omb2 * g * g
    m.copy_(new_m)
    v.copy_(new_v)
    w = p.to(m.dtype)
    return w.abs().amax(), (_step_direction(w, new_m, new_v, e, l2) * s.lrt).abs().amax()


def apply_(p, m, v, lrt: torch.Tensor, ok: torch.Tensor, e: torch.Tensor, l2: torch.Tensor) -> None:
    """Pass 2 over one tensor (flat views ``[n]``): ``p - lrt * u`` into place where ``ok``."""
    w = p.to(m.dtype)
    p.copy_(torch.where(ok, w - _step_direction(w, m, v, e, l2) * lrt, w).to(p.dtype))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over ``t``'s memory that is no view of it, its size dynamic: dynamo guards the
    shape of a view's base, which would compile a graph per parameter shape. (Sizes 1, as
    ``clf/b``, still get a graph of their own; an unbacked size would avoid that, but inductor
    then writes the new moments through a temporary as large as the tensor.) ``t`` must be
    contiguous."""
    if not t.is_contiguous():
        raise ValueError(f"the fused update needs contiguous tensors, got strides {t.stride()}")
    flat = t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))
    torch._dynamo.mark_dynamic(flat, 0)
    return flat


@functools.lru_cache(maxsize=None)
def _compiled(**compile_kwargs) -> tuple[Callable, Callable]:
    """The two passes compiled once per process (and per ``compile_kwargs``) for every size."""
    kwargs = {"fullgraph": True, "dynamic": True, **compile_kwargs}
    return torch.compile(moments_, **kwargs), torch.compile(apply_, **kwargs)


def fused_update_(opt: Optimizer, *, compiled: bool = True, **compile_kwargs) -> Callable:
    """``update_(grads, state, params, *, grad_norm=None) -> (params, state)``: ``opt.update_``'s
    maths and in-place contract in two fused passes a tensor (module doc). ``compiled=False`` runs
    the same two functions eagerly (for tests); ``compile_kwargs`` go to ``torch.compile``."""
    cfg = opt.config
    passes = _compiled(**compile_kwargs) if compiled else (moments_, apply_)

    @torch.no_grad()
    def update_(grads: Params, state: AdamState, params: Params, *,
                grad_norm: torch.Tensor | None = None) -> tuple[Params, AdamState]:
        moments, apply = passes
        by_dtype, decayed, ok = prepare_update(cfg, grads, state, params, grad_norm)
        device = ok.device
        e = {dt: torch.tensor(cfg.e, dtype=dt, device=device) for dt in by_dtype}
        decay = {dt: torch.tensor(cfg.l2, dtype=dt, device=device) for dt in by_dtype}
        no_decay = {dt: torch.zeros((), dtype=dt, device=device) for dt in by_dtype}
        l2 = {k: (decay if decayed[k] else no_decay)[m.dtype] for k, m in state.mu.items()}
        groups = {dt: [k for k, m in state.mu.items() if m.dtype == dt] for dt in by_dtype}
        flat = {k: (_flat(params[k]), _flat(state.mu[k]), _flat(state.nu[k])) for k in params}
        group_ok = {}
        for dtype, s in by_dtype.items():
            bounds = [moments(flat[k][0], _flat(grads[k]), *flat[k][1:], s, e[dtype], l2[k]) for k in groups[dtype]]
            bound = torch.stack([b[0] for b in bounds]).amax() + torch.stack([b[1] for b in bounds]).amax()
            group_ok[dtype] = s.ok & torch.isfinite(bound)
        for dtype, s in by_dtype.items():
            for k in groups[dtype]:
                apply(*flat[k], s.lrt, group_ok[dtype], e[dtype], l2[k])
        finite = functools.reduce(torch.logical_and, group_ok.values())
        ok = ok & finite
        state.count.add_(ok.to(torch.int64))
        state.skipped.add_((~ok).to(torch.int64))
        return params, state

    return update_

"""N fine-tuning runs in one step: params, optimizer states, batches and keys stacked on a leading
axis and the train step ``vmap``-ed over it.

Seed ``i`` of the ensemble computes what a run of its own computes: the same batch order (its
batch is row ``i`` of the stacked batch), the same dropout masks (its key is row ``i`` of the
keys) and the same update, up to the summation order of the batched matmuls.

Memory: every per-run tensor is held N times: params (4 bytes a parameter in float32), Adam's two
moments (8 bytes), gradients (4 bytes) and the activations of one micro-batch, so about
``N * (16 * n_params + activations)`` bytes at the peak, against ``16 * n_params + activations``
for one run stepped N times.
"""
from __future__ import annotations

from typing import Callable, Sequence

import optree
import torch

from .config import Config
from .optim import Optimizer
from .train import train_step

Tree = object


def stack(trees: Sequence[Tree]) -> Tree:
    """Trees of identical structure -> one tree whose leaves gain a leading axis ``[N, ...]``."""
    if not trees:
        raise ValueError("stack needs at least one tree")
    return optree.tree_map(lambda *xs: torch.stack(xs), *trees)


def unstack(tree: Tree) -> list[Tree]:
    """The inverse of :func:`stack`: ``[N, ...]`` leaves -> N trees."""
    leaves, spec = optree.tree_flatten(tree)
    n = {x.shape[0] for x in leaves}
    if len(n) != 1:
        raise ValueError(f"leaves disagree on the leading (ensemble) axis: {sorted(n)}")
    return [optree.tree_unflatten(spec, [x[i] for x in leaves]) for i in range(n.pop())]


def make_ensemble_step(cfg: Config, opt: Optimizer, *, lm_coef: float = 0.5, accum: int = 1,
                       compile: bool = False, **step_kwargs) -> Callable:
    """``step(params, opt_state, batch, keys) -> (params, opt_state, metrics)`` over N runs.

    Every argument has a leading ensemble axis: params and opt_state from :func:`stack`, the
    batch ``[N, B, ...]`` (each run's own examples), the keys ``[N]``; metrics come back ``[N]``.
    ``step_kwargs`` go to :func:`gpt1f.train_step` (``head``, ...); the pure ``update`` is used
    (in-place writes do not batch). ``compile`` wraps the vmapped step in ``torch.compile``.
    """
    if step_kwargs.get("inplace"):
        raise ValueError("make_ensemble_step uses the pure update: inplace=True does not vmap")

    def one_run(params, opt_state, batch, key):
        return train_step(params, opt_state, batch, key, cfg=cfg, opt=opt, lm_coef=lm_coef,
                          accum=accum, **step_kwargs)

    step = torch.func.vmap(one_run, in_dims=(0, 0, 0, 0))
    return torch.compile(step, fullgraph=True) if compile else step

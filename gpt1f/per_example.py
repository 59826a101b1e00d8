"""Per-example gradients of any loss: ``vmap`` of ``grad`` over the examples of a batch.

Each example is run as a batch of one with its own dropout key (``gpt1f.random.split(key, B)``),
so example ``i``'s gradient equals ``grad(loss)(params, batch[i:i+1], key=keys[i])``: a loop over
examples, vectorised. ``chunk_size`` bounds memory: ``vmap`` then runs that many examples at a
time. The fused LM loss (``gpt1f.fused_lm_loss``) works under it: its op has a loop rule for
``vmap``, so it runs once per example, as the loop would.
"""
from __future__ import annotations

from typing import Callable

import torch

from .random import split

Params = dict[str, torch.Tensor]
Batch = dict[str, torch.Tensor]


def batch_size(batch: Batch) -> int:
    """The common leading (example) axis of every tensor in ``batch``, else ValueError."""
    if not batch:
        raise ValueError("batch is empty: expected a dict of tensors with a leading example axis")
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in batch.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"batch tensors disagree on the leading (example) axis: {sizes}")
    return next(iter(sizes.values()))


def example_keys(key: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """One dropout key per example ``[n]``, or None for a deterministic loss."""
    return None if key is None else split(key, n)


def per_example_grads_and_losses(loss: Callable, params: Params, batch: Batch,
                                 key: torch.Tensor | None = None, *, chunk_size: int | None = None
                                 ) -> tuple[Params, torch.Tensor]:
    """``({name: [B, *shape]}, losses [B])``: each example's gradient and its loss, from one
    forward and backward per example (see :func:`per_example_grads`)."""
    n = batch_size(batch)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    keys = example_keys(key, n)

    def one(p: Params, example: Batch, k) -> torch.Tensor:
        return loss(p, {name: v.unsqueeze(0) for name, v in example.items()}, key=k)

    grad_one = torch.func.grad_and_value(one)
    in_dims = (None, 0, None if keys is None else 0)
    return torch.func.vmap(grad_one, in_dims=in_dims, chunk_size=chunk_size)(params, batch, keys)


def per_example_grads(loss: Callable, params: Params, batch: Batch, key: torch.Tensor | None = None,
                      *, chunk_size: int | None = None) -> Params:
    """``{name: [B, *shape]}``: the gradient of ``loss`` for every example of ``batch``.

    ``loss(params, batch, key=key) -> []`` is any head's training loss over a batch (for example
    ``functools.partial(gpt1f.loss_fn, cfg=cfg, train=True)``); it is called on batches of one.
    ``key=None`` runs it without a key (``train=False`` losses).
    """
    return per_example_grads_and_losses(loss, params, batch, key, chunk_size=chunk_size)[0]

"""The training loss of every head, one entry point: ``mean(task_losses) + lm_coef * mean(lm_losses)``.

TF takes means, not sums. ``gpt1f.loss_fn`` and ``gpt1f.train.train_step`` both go through
:func:`loss_and_parts`; only the LM term has two implementations, chosen by ``fused_lm``:

- ``False``: the mean of the per-sequence ``gpt1f.model.lm_losses`` (the full logits; exact under
  every transform, higher derivatives included);
- ``True``: ``gpt1f.fused_lm_loss.lm_loss_mean``, the same value and first derivatives without the
  full logits, computing its gradients in the forward pass (so paid even when only the value is
  wanted). ``train_step`` uses it by default.

``lm_coef == 0`` skips the LM head altogether.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .config import Config
from .fused_lm_loss import lm_loss_mean
from .checks import check_lm_coef
from .heads import HEADS, check_task_batch, read_lengths, trunk
from .model import lm_losses


class LossParts(NamedTuple):
    task: torch.Tensor   # [] mean of the head's per-example losses
    lm: torch.Tensor     # [] mean of the per-sequence LM losses; 0 when lm_coef == 0


def task_function(head: str | Callable) -> Callable:
    """``head``: a name in ``gpt1f.heads.HEADS`` or a task function of the same signature."""
    if callable(head):
        return head
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; use one of {sorted(HEADS)} or a task function")
    return HEADS[head]


def lm_term(we: torch.Tensor, hidden: torch.Tensor, batch, *, fused_lm: bool) -> torch.Tensor:
    """The mean LM loss over the batch's sequences.  [n_rows, E], [..., T, E] -> []"""
    if fused_lm:
        return lm_loss_mean(we, hidden, batch["tokens"], batch["mask"])
    return lm_losses(we, hidden, batch["tokens"], batch["mask"]).mean()


def loss_and_parts(params, batch, *, cfg: Config, head: str | Callable = "multiple_choice",
                   key=None, train: bool = False, lm_coef: float = 0.5, fused_lm: bool = False,
                   packed: bool | None = None, **head_kwargs) -> tuple[torch.Tensor, LossParts]:
    """``(loss, LossParts(task, lm))``, all scalars; ``head_kwargs`` go to the task function
    (e.g. ``objective='bce'`` for ``head='similarity'``). ``packed`` runs the trunk on the real
    tokens only where that is exact (a built-in head, not under ``vmap``: see
    ``gpt1f.heads.read_lengths``; ``None``, the default: on CPU); ``False`` runs every position."""
    check_lm_coef(lm_coef)
    task = task_function(head)
    check_task_batch(task, params, batch, cfg=cfg, key=key, with_lm=lm_coef != 0)
    lengths = read_lengths(task, batch, cfg=cfg, packed=packed)
    we, hidden = trunk(params, batch["tokens"], cfg=cfg, key=key, train=train, lengths=lengths)
    _, task_losses = task(params, batch, hidden, cfg=cfg, key=key, train=train, **head_kwargs)
    task = task_losses.mean()
    if lm_coef == 0:
        return task, LossParts(task, torch.zeros_like(task))
    lm = lm_term(we, hidden, batch, fused_lm=fused_lm)
    return task + lm_coef * lm, LossParts(task, lm)


def loss_fn(params, batch, *, cfg: Config, head: str | Callable = "multiple_choice", key=None,
            train: bool = False, lm_coef: float = 0.5, fused_lm: bool = False, packed: bool | None = None,
            **head_kwargs) -> torch.Tensor:
    """The training loss (a scalar) of ``head`` (default: multiple choice, as ROCStories) on
    ``batch``: ``mean(task_losses) + lm_coef * mean(lm_losses)``; see :func:`loss_and_parts`."""
    return loss_and_parts(params, batch, cfg=cfg, head=head, key=key, train=train,
                          lm_coef=lm_coef, fused_lm=fused_lm, packed=packed, **head_kwargs)[0]

"""Task heads over the transformer, as in the paper's Figure 1, and their losses.

Every head reads the hidden state at the first ``clf_token`` (``_classify_``) of a sequence and
applies ``model/clf``. Each returns its logits, per-example task losses and per-sequence LM losses,
so a loss is ``mean(task) + lm_coef * mean(lm)`` (TF takes means, not sums).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_head_batch, check_inputs
from .config import Config
from .fused_lm_loss import lm_loss_mean
from .model import CLF_TAG, embedding_matrix, lm_losses, sub_key, transformer_from_embedding
from .random import dropout


def pool_clf_token(hidden: torch.Tensor, tokens: torch.Tensor, clf_token: int) -> torch.Tensor:
    """Hidden state at the first ``clf_token`` of each sequence (position 0 if absent, as TF's argmax).

    [..., T, E], [..., T] -> [..., E]
    """
    first = (tokens == clf_token).to(torch.int32).argmax(-1)             # [...]
    index = first[..., None, None].expand(*first.shape, 1, hidden.shape[-1])
    return hidden.gather(-2, index).squeeze(-2)


def clf_head(params, pooled: torch.Tensor) -> torch.Tensor:
    """``model/clf``: a dense layer.  [..., E] -> [..., n_class]"""
    return pooled @ params["model/clf/w:0"] + params["model/clf/b:0"]


def _features(params, tokens, *, cfg: Config, key, train: bool):
    """Shared trunk: dropped ``we``, hidden states and pooled clf states.  [..., T] -> ..."""
    we = embedding_matrix(params, cfg=cfg, key=key, train=train)
    hidden = transformer_from_embedding(params, we, tokens, cfg=cfg, key=key, train=train)
    return we, hidden, pool_clf_token(hidden, tokens, cfg.clf_token)


def _lm_losses_or_zeros(we, hidden, batch, with_lm: bool, fused_lm: bool) -> torch.Tensor:
    """Per-sequence LM losses ``[...]``; their mean ``[]`` from the fused op when ``fused_lm``."""
    tokens = batch["tokens"]
    if not with_lm:
        return hidden.new_zeros(() if fused_lm else tokens.shape[:-1])
    if fused_lm:
        return lm_loss_mean(we, hidden, tokens, batch["mask"])
    return lm_losses(we, hidden, tokens, batch["mask"])


def multiple_choice(params, batch, *, cfg: Config, key=None, train: bool = False, with_lm: bool = True,
                    fused_lm: bool = False):
    """Multiple-choice scoring (ROCStories, RACE): one logit per choice, softmax over choices.

    batch: ``tokens`` [B, C, T] int64, ``mask`` [B, C, T] float, ``label`` [B] int64.
    Returns ``clf_logits`` [B, C], ``clf_losses`` [B], ``lm_losses`` [B, C] (zeros when
    ``with_lm=False``, which skips the LM head's cost; with ``fused_lm=True``, their mean as one
    scalar from :func:`gpt1f.fused_lm_loss.lm_loss_mean`, the training path). Classifier dropout shares one mask across
    the choices of an example (TF ``noise_shape=[B, 1, E]``).
    """
    check_head_batch(params, batch, cfg=cfg, key=key, layout="[batch, choices, time]",
                     n_labels="choices", with_lm=with_lm)
    we, hidden, pooled = _features(params, batch["tokens"], cfg=cfg, key=key, train=train)  # pooled [B, C, E]
    pooled = dropout(pooled, cfg.clf_pdrop, key=sub_key(key, CLF_TAG), train=train,
                     noise_shape=(pooled.shape[0], 1, pooled.shape[2]))
    clf_logits = clf_head(params, pooled)[..., 0]                         # [B, C]
    clf_losses = F.cross_entropy(_f32(clf_logits), batch["label"], reduction="none")
    return clf_logits, clf_losses.to(clf_logits.dtype), _lm_losses_or_zeros(we, hidden, batch, with_lm, fused_lm)


def multiple_choice_logits(params, tokens: torch.Tensor, *, cfg: Config) -> torch.Tensor:
    """Eval-time scores without the LM head.  [B, C, T] -> [B, C]"""
    check_inputs(params, tokens, cfg=cfg, layout="[batch, choices, time]", rank=3)
    _, _, pooled = _features(params, tokens, cfg=cfg, key=None, train=False)
    return clf_head(params, pooled)[..., 0]


def classify(params, batch, *, cfg: Config, key=None, train: bool = False, with_lm: bool = True,
             fused_lm: bool = False):
    """Text classification / entailment: ``model/clf/w:0`` is ``[E, n_class]``.

    batch: ``tokens`` [B, T], ``mask`` [B, T], ``label`` [B] int64.
    Returns ``logits`` [B, n_class], ``clf_losses`` [B], ``lm_losses`` [B].
    """
    check_head_batch(params, batch, cfg=cfg, key=key, layout="[batch, time]", what="classes",
                     n_labels=params["model/clf/b:0"].shape[0], with_lm=with_lm)
    we, hidden, pooled = _features(params, batch["tokens"], cfg=cfg, key=key, train=train)  # pooled [B, E]
    pooled = dropout(pooled, cfg.clf_pdrop, key=sub_key(key, CLF_TAG), train=train)
    logits = clf_head(params, pooled)
    clf_losses = F.cross_entropy(_f32(logits), batch["label"], reduction="none")
    return logits, clf_losses.to(logits.dtype), _lm_losses_or_zeros(we, hidden, batch, with_lm, fused_lm)


def similarity(params, batch, *, cfg: Config, key=None, train: bool = False, with_lm: bool = True,
               fused_lm: bool = False, objective: str = "mse"):
    """Sentence-pair similarity: both orderings run through the model, their clf states summed.

    batch: ``tokens`` [B, 2, T] (``A;B`` and ``B;A``), ``mask`` [B, 2, T], ``label`` [B] float.
    ``model/clf/w:0`` is ``[E, 1]``; the score is a scalar per pair. ``objective='mse'`` regresses
    the label (STS-B); ``'bce'`` treats the score as a logit of a 0/1 label (QQP, MRPC).
    Returns ``scores`` [B], ``losses`` [B], ``lm_losses`` [B, 2].
    """
    check_head_batch(params, batch, cfg=cfg, key=key, layout="[batch, 2, time]", n_labels=None,
                     with_lm=with_lm)
    we, hidden, pooled = _features(params, batch["tokens"], cfg=cfg, key=key, train=train)  # pooled [B, 2, E]
    summed = dropout(pooled.sum(-2), cfg.clf_pdrop, key=sub_key(key, CLF_TAG), train=train)
    scores = clf_head(params, summed)[..., 0]                             # [B]
    label = batch["label"].to(scores.dtype)
    if objective == "mse":
        losses = (scores - label).square()
    elif objective == "bce":
        losses = F.binary_cross_entropy_with_logits(scores, label, reduction="none")
    else:
        raise ValueError(f"unknown similarity objective {objective!r}; use 'mse' or 'bce'")
    return scores, losses, _lm_losses_or_zeros(we, hidden, batch, with_lm, fused_lm)


def task_loss(clf_losses: torch.Tensor, lm_losses: torch.Tensor, lm_coef: float) -> torch.Tensor:
    """``mean(clf_losses) + lm_coef * mean(lm_losses)``, the TF training objective."""
    if lm_coef == 0:
        return clf_losses.mean()
    return clf_losses.mean() + lm_coef * lm_losses.mean()


def loss_fn(params, batch, *, cfg: Config, key=None, train: bool = False, lm_coef: float = 0.5,
            fused_lm: bool = False):
    """Multiple-choice training loss (scalar); the LM head is skipped when ``lm_coef == 0``.

    ``fused_lm=True`` takes the LM term from :func:`gpt1f.fused_lm_loss.lm_loss_mean`: the same
    value and gradients, faster and without the full logits when differentiating, slower when not.
    """
    _, clf_losses, lm = multiple_choice(params, batch, cfg=cfg, key=key, train=train,
                                        with_lm=lm_coef != 0, fused_lm=fused_lm)
    return task_loss(clf_losses, lm, lm_coef)


def classify_loss_fn(params, batch, *, cfg: Config, key=None, train: bool = False, lm_coef: float = 0.5,
                     fused_lm: bool = False):
    _, clf_losses, lm = classify(params, batch, cfg=cfg, key=key, train=train, with_lm=lm_coef != 0,
                                 fused_lm=fused_lm)
    return task_loss(clf_losses, lm, lm_coef)


def similarity_loss_fn(params, batch, *, cfg: Config, key=None, train: bool = False,
                       lm_coef: float = 0.5, objective: str = "mse", fused_lm: bool = False):
    _, losses, lm = similarity(params, batch, cfg=cfg, key=key, train=train,
                               with_lm=lm_coef != 0, fused_lm=fused_lm, objective=objective)
    return task_loss(losses, lm, lm_coef)


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Losses in at least float32 (bf16 logits upcast; float64 kept)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))

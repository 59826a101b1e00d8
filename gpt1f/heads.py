"""Task heads over the transformer, as in the paper's Figure 1.

Every head reads the hidden state at the first ``clf_token`` (``_classify_``) of a sequence and
applies ``model/clf``. A head is a *task* function over the trunk's hidden states,
``task(params, batch, hidden, *, cfg, key, train) -> (outputs, task_losses [B])``; ``HEADS`` names
the built-in ones. The public functions ``multiple_choice``, ``classify`` and ``similarity`` run the
trunk, the task and the per-sequence LM losses and return one ``HeadOutput``, whose shapes depend
on the batch only. The training loss over any head is ``gpt1f.loss.loss_fn``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from .checks import check_head_batch, check_inputs
from .config import Config
from .dropout_keys import model_key
from .model import lm_losses, packed_trunk, trunk
from .packing import real_lengths, use_packing
from .random import dropout


class HeadOutput(NamedTuple):
    """What a head computes; unpacks as ``logits, task_losses, lm_losses = head(...)``."""

    logits: torch.Tensor       # multiple choice [B, C]; classify [B, n_class]; similarity [B]
    task_losses: torch.Tensor  # [B]
    lm_losses: torch.Tensor    # per sequence, tokens' leading shape: [B, C]; [B]; [B, 2]


def read_lengths(task: Callable, batch, *, cfg: Config, packed: bool | None) -> torch.Tensor | None:
    """What a built-in task and the LM loss read of each row (``gpt1f.packing.real_lengths``), for
    the padding-free trunk; None (the padded trunk) when ``packed`` is off, under ``vmap``, or for
    a user's task function, which may read any position. ``packed=None``: on CPU only (see
    ``gpt1f.packing.use_packing``).  -> [...] int64 or None"""
    tokens = batch["tokens"]
    if not use_packing(packed, tokens) or task not in BATCH_LAYOUTS:
        return None
    return real_lengths(batch["tokens"], cfg.clf_token, batch.get("mask"))


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


def multiple_choice_task(params, batch, hidden, *, cfg: Config, key=None, train: bool = False):
    """One logit per choice, softmax over the choices (ROCStories, RACE).

    batch: ``tokens`` [B, C, T], ``label`` [B] int64; hidden [B, C, T, E] -> logits [B, C],
    losses [B]. Classifier dropout shares one mask across the choices of an example (TF
    ``noise_shape=[B, 1, E]``).
    """
    pooled = pool_clf_token(hidden, batch["tokens"], cfg.clf_token)     # [B, C, E]
    pooled = dropout(pooled, cfg.clf_pdrop, key=model_key(key, "clf"), train=train,
                     noise_shape=(pooled.shape[0], 1, pooled.shape[2]))
    logits = clf_head(params, pooled)[..., 0]
    return logits, _cross_entropy(logits, batch["label"])


def classify_task(params, batch, hidden, *, cfg: Config, key=None, train: bool = False):
    """Text classification / entailment: ``model/clf/w:0`` is ``[E, n_class]``.

    batch: ``tokens`` [B, T], ``label`` [B] int64; hidden [B, T, E] -> logits [B, n_class], losses [B]
    """
    pooled = pool_clf_token(hidden, batch["tokens"], cfg.clf_token)     # [B, E]
    logits = clf_head(params, dropout(pooled, cfg.clf_pdrop, key=model_key(key, "clf"), train=train))
    return logits, _cross_entropy(logits, batch["label"])


def similarity_task(params, batch, hidden, *, cfg: Config, key=None, train: bool = False,
                    objective: str = "mse"):
    """Sentence-pair similarity: both orderings run through the model, their clf states summed.

    batch: ``tokens`` [B, 2, T] (``A;B`` and ``B;A``), ``label`` [B] float; hidden [B, 2, T, E] ->
    scores [B], losses [B]. ``model/clf/w:0`` is ``[E, 1]``. ``objective='mse'`` regresses the
    label (STS-B); ``'bce'`` treats the score as a logit of a 0/1 label (QQP, MRPC).
    """
    if objective not in ("mse", "bce"):
        raise ValueError(f"unknown similarity objective {objective!r}; use 'mse' or 'bce'")
    pooled = pool_clf_token(hidden, batch["tokens"], cfg.clf_token).sum(-2)   # [B, E]
    scores = clf_head(params, dropout(pooled, cfg.clf_pdrop, key=model_key(key, "clf"),
                                      train=train))[..., 0]
    label = batch["label"].to(scores.dtype)
    if objective == "mse":
        return scores, (scores - label).square()
    return scores, F.binary_cross_entropy_with_logits(scores, label, reduction="none")


HEADS: dict[str, Callable] = {"multiple_choice": multiple_choice_task, "classify": classify_task,
                              "similarity": similarity_task}


# task -> (tokens layout, labels: "choices" (tokens' axis 1), "classes" (clf/b's size) or None,
#          what the labels name)
BATCH_LAYOUTS = {
    multiple_choice_task: ("[batch, choices, time]", "choices", "choices"),
    classify_task: ("[batch, time]", "classes", "classes"),
    similarity_task: ("[batch, 2, time]", None, "choices"),
}


def check_task_batch(task: Callable, params, batch, *, cfg: Config, key, with_lm: bool) -> None:
    """The checks of :func:`gpt1f.checks.check_head_batch` for a built-in task's layout (token
    ids, ranks, labels, the mask when the LM loss is computed); a user's own task is unchecked."""
    if task not in BATCH_LAYOUTS:
        return
    layout, n_labels, what = BATCH_LAYOUTS[task]
    if n_labels == "classes":
        n_labels = params["model/clf/b:0"].shape[0]
    check_head_batch(params, batch, cfg=cfg, key=key, layout=layout, n_labels=n_labels, what=what,
                     with_lm=with_lm)


def head_output(task: Callable, params, batch, *, cfg: Config, key=None, train: bool = False,
                packed: bool | None = None, **task_kwargs) -> HeadOutput:
    """Trunk, ``task`` and the per-sequence LM losses (``gpt1f.model.lm_losses``) of one batch.

    ``packed`` runs the trunk on the real tokens only (see :func:`read_lengths`; ``None``: on CPU);
    the outputs are the same up to float rounding. ``False`` runs every position, padding included.
    """
    check_task_batch(task, params, batch, cfg=cfg, key=key, with_lm=True)
    lengths = read_lengths(task, batch, cfg=cfg, packed=packed)
    we, hidden = trunk(params, batch["tokens"], cfg=cfg, key=key, train=train, lengths=lengths)
    logits, task_losses = task(params, batch, hidden, cfg=cfg, key=key, train=train, **task_kwargs)
    return HeadOutput(logits, task_losses, lm_losses(we, hidden, batch["tokens"], batch["mask"]))


def multiple_choice(params, batch, *, cfg: Config, key=None, train: bool = False,
                    packed: bool | None = None) -> HeadOutput:
    """Multiple-choice scoring. batch: ``tokens`` [B, C, T] int64, ``mask`` [B, C, T] float,
    ``label`` [B] int64 -> ``HeadOutput(logits [B, C], task_losses [B], lm_losses [B, C])``."""
    return head_output(multiple_choice_task, params, batch, cfg=cfg, key=key, train=train, packed=packed)


def classify(params, batch, *, cfg: Config, key=None, train: bool = False,
             packed: bool | None = None) -> HeadOutput:
    """Classification. batch: ``tokens`` [B, T], ``mask`` [B, T], ``label`` [B] int64 ->
    ``HeadOutput(logits [B, n_class], task_losses [B], lm_losses [B])``."""
    return head_output(classify_task, params, batch, cfg=cfg, key=key, train=train, packed=packed)


def similarity(params, batch, *, cfg: Config, key=None, train: bool = False,
               objective: str = "mse", packed: bool | None = None) -> HeadOutput:
    """Similarity. batch: ``tokens`` [B, 2, T], ``mask`` [B, 2, T], ``label`` [B] float ->
    ``HeadOutput(scores [B], task_losses [B], lm_losses [B, 2])``; see :func:`similarity_task`."""
    return head_output(similarity_task, params, batch, cfg=cfg, key=key, train=train,
                       packed=packed, objective=objective)


def multiple_choice_logits(params, tokens: torch.Tensor, *, cfg: Config,
                           packed: bool | None = None) -> torch.Tensor:
    """Eval-time scores without the LM head.  [B, C, T] -> [B, C]

    ``packed`` runs the blocks on each row's tokens up to its first ``_classify_`` only and reads
    the classifier's input straight from the real tokens (``None``: on CPU, not under ``vmap``;
    see ``gpt1f.packing.use_packing``); ``packed=False`` runs every position.
    """
    check_inputs(params, tokens, cfg=cfg, layout="[batch, choices, time]", rank=3)
    if not use_packing(packed, tokens):
        _, hidden = trunk(params, tokens, cfg=cfg)
        return clf_head(params, pool_clf_token(hidden, tokens, cfg.clf_token))[..., 0]
    lengths = real_lengths(tokens, cfg.clf_token)                        # [B, C]
    _, hidden, _ = packed_trunk(params, tokens, lengths, cfg=cfg)
    pooled = hidden.index_select(0, lengths.flatten().cumsum(0) - 1)    # each row's last: [B C, E]
    return clf_head(params, pooled.view(*tokens.shape[:2], -1))[..., 0]


def _cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy in at least float32 (bf16 logits upcast), in the logits' dtype."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(wide, label, reduction="none").to(logits.dtype)

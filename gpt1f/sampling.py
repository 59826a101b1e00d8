"""Next-token choice from GPT-1's tied head: the rows that may be drawn, filters, Gumbel-max draws.

``model/we:0`` holds ``n_vocab`` token rows, then ``n_special`` task rows, then ``n_ctx`` position
rows. Only token rows are ever scored here (task rows too with ``allow_special``); position rows
are not even multiplied, so no position "word" can be drawn. Everything is tensor ops without
host syncs, for the compiled decode step.
"""
from __future__ import annotations

import torch

from . import random as grandom
from .config import Config


def n_choices(cfg: Config, allow_special: bool) -> int:
    """How many leading rows of ``we`` may be drawn: tokens, plus the task rows if allowed."""
    return cfg.n_vocab + (cfg.n_special if allow_special else 0)


def choice_logits(params, hidden: torch.Tensor, *, cfg: Config, allow_special: bool = False):
    """Tied-head logits over the drawable rows only.  [..., E] -> [..., n_choices]"""
    rows = params["model/we:0"][:n_choices(cfg, allow_special)]
    logits = hidden @ rows.T
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest logits of each row (ties: the lower ids), the rest ``-inf``.  [B, V] -> [B, V]"""
    index = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
    return logits.masked_fill(~keep, float("-inf"))


def keep_top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Nucleus filter: per row the smallest set of most likely tokens whose probability mass
    reaches ``p`` (a token is kept when the mass strictly before it is below ``p``), the rest
    ``-inf``.  [B, V], p [] -> [B, V]"""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs
    keep_sorted = before < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def filtered_logits(logits: torch.Tensor, *, temperature: torch.Tensor, top_k: int | None,
                    top_p: torch.Tensor | None) -> torch.Tensor:
    """``logits / temperature``, then top-k, then top-p, as transformers orders them.  [B, V] -> [B, V]"""
    logits = logits / temperature
    if top_k is not None:
        logits = keep_top_k(logits, top_k)
    if top_p is not None:
        logits = keep_top_p(logits, top_p)
    return logits


def draw(logits: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """One id per row from ``softmax(logits)`` by Gumbel-max, row ``b`` from ``keys[b]`` alone.

    [B, V], keys [B] int32 -> [B] int64
    """
    noise = grandom.gumbel(keys[:, None], logits.shape[-1:], dtype=logits.dtype)
    return torch.argmax(logits + noise, dim=-1)


def next_tokens(logits: torch.Tensor, keys: torch.Tensor, *, greedy: bool, temperature,
                top_k: int | None, top_p) -> torch.Tensor:
    """The next token of each row: the argmax when ``greedy``, else a filtered draw.  [B, V] -> [B]"""
    if greedy:
        return torch.argmax(logits, dim=-1)
    return draw(filtered_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p), keys)

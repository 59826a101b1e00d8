"""The GPT-1 transformer and its tied language-model head over a flat TF-named parameter dict."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_inputs, check_mask
from .config import Config
from .dropout_keys import block_key, model_key
from .layers import block
from .params import scope
from .random import dropout


def embedding_matrix(params, *, cfg: Config, key=None, train: bool = False) -> torch.Tensor:
    """``model/we:0`` after embedding dropout, as TF drops the whole matrix before the lookup.

    One token's mask is therefore shared wherever it occurs, and the tied LM head sees the same
    dropped matrix (the mask is a pure function of the key).  -> [n_rows, E]
    """
    return dropout(params["model/we:0"], cfg.embd_pdrop, key=model_key(key, "embd"), train=train)


def embed(we: torch.Tensor, tokens: torch.Tensor, *, cfg: Config) -> torch.Tensor:
    """Token rows plus position rows ``n_vocab + n_special + t``.  [n_rows, E], [..., T] -> [..., T, E]"""
    t = tokens.shape[-1]
    if t > cfg.n_ctx:
        raise ValueError(f"sequence length {t} exceeds cfg.n_ctx={cfg.n_ctx}")
    positions = torch.arange(cfg.pos_offset, cfg.pos_offset + t, device=tokens.device)
    return we[tokens] + we[positions]


def transformer_from_embedding(params, we: torch.Tensor, tokens: torch.Tensor, *, cfg: Config,
                               key=None, train: bool = False) -> torch.Tensor:
    """The blocks over an already dropped-out ``we``.  [..., T] -> [..., T, E]

    The blocks see one batch axis ``[N, T, E]``: inductor (torch 2.13) fails to compile causal
    SDPA over 5-D ``[B, C, H, T, D]`` head views, and 3-D matmuls are its fast path anyway.
    """
    h = embed(we, tokens, cfg=cfg)
    lead = h.shape[:-2]
    h = h.reshape(-1, *h.shape[-2:])
    for i in range(cfg.n_layer):
        h = block(scope(params, f"model/h{i}/"), h, cfg=cfg,
                  key=block_key(key, i), train=train)
    return h.reshape(*lead, *h.shape[-2:])


def transformer(params, tokens: torch.Tensor, *, cfg: Config, key=None,
                train: bool = False) -> torch.Tensor:
    """GPT-1's hidden states.  tokens [..., T] int64 -> hidden [..., T, E]

    ``key`` (see ``gpt1f.random``) drives every dropout mask; with ``train`` it is required as soon
    as a dropout rate is above 0 (a missing key raises there), and unused when every rate is 0.
    Under ``torch.func.vmap``, give each example its own key by vmapping over a ``[batch]`` tensor
    of keys (``gpt1f.random.split(key, batch)``), or pass one unbatched key to share masks.
    """
    check_inputs(params, tokens, cfg=cfg, key=key)
    we = embedding_matrix(params, cfg=cfg, key=key, train=train)
    return transformer_from_embedding(params, we, tokens, cfg=cfg, key=key, train=train)


def lm_logits(params, hidden: torch.Tensor, *, cfg: Config, key=None,
              train: bool = False) -> torch.Tensor:
    """Tied-embedding logits against every row of ``we`` (tokens, specials, positions), as TF does.

    When training, ``we`` is dropped out with the same mask ``transformer`` used for this key.
    hidden [..., T, E] -> [..., T, n_rows]
    """
    return hidden @ embedding_matrix(params, cfg=cfg, key=key, train=train).T


def lm_losses(we: torch.Tensor, hidden: torch.Tensor, tokens: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over ``mask[..., 1:]`` per sequence, as TF ``model()``.

    [n_rows, E], [..., T, E], [..., T], [..., T] -> [...]
    """
    check_mask(mask, tokens)
    logits = hidden[..., :-1, :] @ we.T                                  # [..., T-1, n_rows]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32 softmax
    nll = F.cross_entropy(logits.flatten(0, -2), tokens[..., 1:].flatten(),
                          reduction="none").view(tokens[..., 1:].shape)
    m = mask[..., 1:].to(nll.dtype)
    return ((nll * m).sum(-1) / m.sum(-1)).to(hidden.dtype)

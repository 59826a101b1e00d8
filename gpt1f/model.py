"""The GPT-1 transformer and its tied language-model head over a flat TF-named parameter dict."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_inputs, check_mask
from .config import Config
from .dropout_keys import block_key, model_key
from .packing import Packing, plan, scatter
from .params import scope
from .embedding import embedding_rows
from .regional import current_block, current_regions


def embedding_matrix(params, *, cfg: Config, key=None, train: bool = False) -> torch.Tensor:
    """``model/we:0`` after embedding dropout, as TF drops the whole matrix before the lookup.

    One token's mask is therefore shared wherever it occurs, and the tied LM head sees the same
    dropped matrix (the mask is a pure function of the key). Inside a regional step the dropout is
    one compiled pass (``gpt1f.regional``), with the same mask.  -> [n_rows, E]
    """
    return current_regions().dropout(params["model/we:0"], cfg.embd_pdrop, key=model_key(key, "embd"),
                                     train=train)


def embed(we: torch.Tensor, tokens: torch.Tensor, *, cfg: Config) -> torch.Tensor:
    """Token rows plus position rows ``n_vocab + n_special + t``.  [n_rows, E], [..., T] -> [..., T, E]"""
    t = tokens.shape[-1]
    if t > cfg.n_ctx:
        raise ValueError(f"sequence length {t} exceeds cfg.n_ctx={cfg.n_ctx}")
    positions = torch.arange(cfg.pos_offset, cfg.pos_offset + t, device=tokens.device)
    return we[tokens] + we[positions]


def blocks(params, h: torch.Tensor, *, cfg: Config, key=None, train: bool = False,
           packing: Packing | None = None) -> torch.Tensor:
    """The ``n_layer`` blocks.  [N, T, E] -> [N, T, E], or real tokens [n_real, E] -> [n_real, E]

    Each is ``gpt1f.layers.block``, or its compiled version inside ``gpt1f.regional.using_block``.
    """
    block = current_block()
    for i in range(cfg.n_layer):
        h = block(scope(params, f"model/h{i}/"), h, cfg=cfg, key=block_key(key, i), train=train,
                  packing=packing)
    return h


def packed_trunk(params, tokens: torch.Tensor, lengths: torch.Tensor, *, cfg: Config, key=None,
                 train: bool = False) -> tuple[torch.Tensor, torch.Tensor, Packing]:
    """The blocks over the real tokens only: row ``i`` of ``tokens`` is ``lengths[i]`` real tokens
    then padding (``gpt1f.packing``); embedding dropout and lookup in one step (``gpt1f.regional``
    runs them as one node).  [..., T], [...] -> we [n_rows, E], hidden [n_real, E], Packing"""
    packing = plan(lengths, tokens.shape[-1])
    we, h = current_regions().dropped_lookup(params["model/we:0"], embedding_rows(tokens, packing, cfg=cfg),
                                             cfg.embd_pdrop, key=model_key(key, "embd"), train=train)
    return we, blocks(params, h, cfg=cfg, key=key, train=train, packing=packing), packing


def transformer_from_embedding(params, we: torch.Tensor, tokens: torch.Tensor, *, cfg: Config,
                               key=None, train: bool = False) -> torch.Tensor:
    """The blocks over an already dropped-out ``we``, every position.  [..., T] -> [..., T, E]

    The blocks see one batch axis ``[N, T, E]``: inductor (torch 2.13) fails to compile causal
    SDPA over 5-D ``[B, C, H, T, D]`` head views, and 3-D matmuls are its fast path anyway.
    """
    h = embed(we, tokens, cfg=cfg)
    lead = h.shape[:-2]
    h = blocks(params, h.reshape(-1, *h.shape[-2:]), cfg=cfg, key=key, train=train)
    return h.reshape(*lead, *h.shape[-2:])


def trunk(params, tokens: torch.Tensor, *, cfg: Config, key=None, train: bool = False,
          lengths: torch.Tensor | None = None):
    """The dropped-out ``we`` (shared with the tied LM head) and the hidden states.

    tokens [..., T] -> we [n_rows, E], hidden [..., T, E]; with ``lengths`` [...] (each row's real
    tokens, padding after them) every per-token operation runs on the real tokens only
    (:func:`packed_trunk`): the hidden states at real positions are the same, those at padding 0.
    """
    if lengths is not None:
        we, hidden, packing = packed_trunk(params, tokens, lengths, cfg=cfg, key=key, train=train)
        return we, scatter(hidden, packing).reshape(*tokens.shape, hidden.shape[-1])
    we = embedding_matrix(params, cfg=cfg, key=key, train=train)
    return we, transformer_from_embedding(params, we, tokens, cfg=cfg, key=key, train=train)


def transformer(params, tokens: torch.Tensor, *, cfg: Config, key=None,
                train: bool = False, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """GPT-1's hidden states.  tokens [..., T] int64 -> hidden [..., T, E]

    ``key`` (see ``gpt1f.random``) drives every dropout mask; with ``train`` it is required as soon
    as a dropout rate is above 0 (a missing key raises there), and unused when every rate is 0.
    Under ``torch.func.vmap``, give each example its own key by vmapping over a ``[batch]`` tensor
    of keys (``gpt1f.random.split(key, batch)``), or pass one unbatched key to share masks.
    ``lengths`` [...] int64: row ``i`` holds ``lengths[i]`` real tokens, then padding; the
    per-token work then skips the padding, whose hidden states come back 0 (``gpt1f.packing``;
    not under ``vmap``).
    """
    check_inputs(params, tokens, cfg=cfg, key=key)
    return trunk(params, tokens, cfg=cfg, key=key, train=train, lengths=lengths)[1]


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

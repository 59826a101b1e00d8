"""The embedding of the real tokens: rows of ``we`` looked up, and ``we``'s dropout beside them.

A real token's input is its token row plus its position row of ``model/we:0``; the padding-free
path (``gpt1f.packing``) looks both up in one ``index_select`` of ``2 n_real`` rows.
"""
from __future__ import annotations

import torch

from .config import Config
from .packing import Packing, positions
from .random import dropout


def embedding_rows(tokens: torch.Tensor, packing: Packing, *, cfg: Config) -> torch.Tensor:
    """The rows of ``we`` that embed the real tokens: their token rows, then their position rows.

    [..., T] -> [2 n_real] int64"""
    if tokens.shape[-1] > cfg.n_ctx:
        raise ValueError(f"sequence length {tokens.shape[-1]} exceeds cfg.n_ctx={cfg.n_ctx}")
    ids = tokens.reshape(-1).index_select(0, packing.index)
    return torch.cat([ids, positions(packing) + cfg.pos_offset])


def lookup(we: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Token row plus position row of each real token, in one lookup (whose backward fills one
    zero ``[n_rows, E]``, not two).  [n_rows, E], [2 n_real] -> [n_real, E]"""
    both = we.index_select(0, rows).view(2, rows.shape[0] // 2, we.shape[-1])
    return both[0] + both[1]


def dropped_lookup(we: torch.Tensor, rows: torch.Tensor, p: float, *, key, train: bool):
    """``we`` after dropout and the :func:`lookup` of ``rows`` in it (``gpt1f.regional`` has a
    version that back-propagates through both with one ``[n_rows, E]`` buffer).
    -> we [n_rows, E], embedded [n_real, E]"""
    dropped = dropout(we, p, key=key, train=train)
    return dropped, lookup(dropped, rows)

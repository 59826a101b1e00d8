"""The dropout-key layout: which key each dropout mask is drawn from, written once.

The caller's key ``k`` (one per step, micro-batch or example) is split with ``fold_in``:

    site         mask over                       key
    embd         the whole ``we`` matrix         fold_in(k, 0)
    clf          the pooled ``_classify_`` state  fold_in(k, 1)
    block i      (not a mask: the block's key)   b_i = fold_in(k, 2 + i)
    attn_probs   block i's attention weights     fold_in(b_i, 0)
    attn_resid   block i's attention output      fold_in(b_i, 1)
    mlp_resid    block i's MLP output            fold_in(b_i, 2)

A ``None`` key stays ``None`` (evaluation), so callers need no branches.
"""
from __future__ import annotations

from .random import fold_in

MODEL_TAGS = {"embd": 0, "clf": 1}                             # tags on the caller's key
FIRST_BLOCK_TAG = 2                                            # block i: FIRST_BLOCK_TAG + i
BLOCK_TAGS = {"attn_probs": 0, "attn_resid": 1, "mlp_resid": 2}  # tags on a block's key


def model_key(key, site: str):
    """The key of a model-level site, ``'embd'`` or ``'clf'``."""
    return None if key is None else fold_in(key, MODEL_TAGS[site])


def block_key(key, layer: int):
    """Block ``layer``'s key, which that block splits further with :func:`block_site_key`."""
    return None if key is None else fold_in(key, FIRST_BLOCK_TAG + layer)


def block_site_key(block_key, site: str):
    """The key of a site inside a block, from that block's key."""
    return None if block_key is None else fold_in(block_key, BLOCK_TAGS[site])


def site_key(key, site: str, layer: int | None = None):
    """The key of any site from the caller's key: ``layer`` names the block for block sites."""
    if site in MODEL_TAGS:
        return model_key(key, site)
    return block_site_key(block_key(key, layer), site)

"""Padding-free dense layers: every per-token operation on the real tokens only.

A batch ``[N, T]`` of sequences padded at the end (ROCStories: ~28% padding) is run as its
``n_real`` real tokens ``[n_real, E]``: embeddings, layer norms, the ``c_attn``/``c_proj``/``c_fc``
matmuls, GELU and residual dropout. Only attention sees the padded layout: ``c_attn``'s output is
scattered to ``[N, T, 3E]`` (zeros at padding) and the attention output gathered back. Padding
comes after a sequence's real tokens, so a causal mask never lets a real token see it, and the
hidden states at real positions equal the padded computation's up to summation order.

Dropout masks are drawn at each element's *padded* index (``gpt1f.random.dropout``'s
``counters``), so a mask is bit for bit the one the padded computation draws.

A row's real length is what the heads and losses read: up to the first ``_classify_`` token
(the classifier's input; TF's argmax reads position 0 of a row without one) and up to the last
position the LM loss's mask covers. Everything after that position is padding, which nothing reads.

The plan (:class:`Packing`) holds the indices of the real tokens, whose number depends on the data:
``nonzero`` (a host sync in eager, an unbacked size under ``torch.compile``, which needs
``torch._dynamo.config.capture_dynamic_output_shape_ops``: :func:`compile_packed` sets it, so a
new number of real tokens does not recompile). Under ``torch.func.vmap`` the number of real tokens
would differ per example, so :func:`can_pack` sends vmapped calls (per-example gradients) down
the padded path.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch


class Packing(NamedTuple):
    """Where the real tokens of a padded ``[N, T]`` batch lie."""

    index: torch.Tensor   # [n_real] int64: flat padded position n * T + t, row by row, t ascending
    n: int                # N, the rows
    t: int                # T, the padded length


def real_lengths(tokens: torch.Tensor, clf_token: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Positions a row's outputs are read at: up to its first ``clf_token`` (position 0 without
    one, as ``heads.pool_clf_token``) and, with ``mask``, up to its last nonzero.

    tokens [..., T] int64, mask [..., T] -> [...] int64 in ``1 .. T``
    """
    t = tokens.shape[-1]
    first_clf = (tokens == clf_token).to(torch.int32).argmax(-1).to(torch.int64) + 1
    if mask is None:
        return first_clf
    after_last = ((mask != 0).to(torch.int64) * torch.arange(1, t + 1, device=tokens.device)).amax(-1)
    return torch.maximum(first_clf, after_last)


def plan(lengths: torch.Tensor, t: int) -> Packing:
    """The real tokens of rows of ``lengths`` real tokens padded to ``t``.  [...] -> Packing"""
    rows = lengths.reshape(-1)
    real = torch.arange(t, device=rows.device) < rows[:, None]              # [N, T]
    return Packing(real.flatten().nonzero().squeeze(1), rows.shape[0], t)


def gather(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """The real tokens of a padded tensor.  [N, T, ...] -> [n_real, ...]"""
    return x.reshape(packing.n * packing.t, *x.shape[2:]).index_select(0, packing.index)


def scatter(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Real tokens back in the padded layout, zeros at padding.  [n_real, ...] -> [N, T, ...]"""
    rest = x.shape[1:]
    full = x.new_zeros(packing.n * packing.t, *rest).index_copy(0, packing.index, x)
    return full.view(packing.n, packing.t, *rest)


def positions(packing: Packing) -> torch.Tensor:
    """Each real token's position in its row.  -> [n_real] int64"""
    return packing.index % packing.t


def element_counters(packing: Packing, width: int) -> torch.Tensor:
    """Each element's flat index in the padded ``[N, T, width]`` tensor, the counter its dropout
    mask is drawn from.  -> [n_real, width] int32"""
    index = packing.index.to(torch.int32)
    return index[:, None] * width + torch.arange(width, dtype=torch.int32, device=index.device)


def _vmapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is batched by ``torch.func.vmap`` at any level."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            return True
        t = functorch.get_unwrapped(t)
    return False


def can_pack(tokens: torch.Tensor) -> bool:
    """Whether the padding-free path applies to a call on ``tokens``: not under ``vmap`` (each
    example would have its own number of real tokens) and, while ``torch.compile`` traces, only
    with dynamic output shapes captured (see :func:`compile_packed`); else the padded path runs."""
    if torch.compiler.is_compiling():
        return bool(torch._dynamo.config.capture_dynamic_output_shape_ops)
    return not _vmapped(tokens)


def use_packing(packed: bool | None, tokens: torch.Tensor) -> bool:
    """Whether to run a call on ``tokens`` padding-free: ``packed`` if given, else on CPU only (on
    CUDA the host sync of the plan and the changing sizes would break CUDA graphs, and no
    measurement there says it pays), and in either case only where :func:`can_pack`."""
    wanted = tokens.device.type == "cpu" if packed is None else packed
    return bool(wanted) and can_pack(tokens)


def compile_packed(fn, **compile_kwargs):
    """``torch.compile(fn, **compile_kwargs)`` whose calls capture data-dependent sizes (the number
    of real tokens) as dynamic, so the padding-free path is compiled once for every batch."""
    graph = torch.compile(fn, **compile_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            return graph(*args, **kwargs)
    return call

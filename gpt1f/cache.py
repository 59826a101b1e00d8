"""The transformer over a fixed-shape key/value cache: prefill a prompt, then decode token by token.

The cache is a plain dict of tensors, ``{'h{i}/k': [B, H, max_len, D], 'h{i}/v': ...}``, allocated
once by ``init_cache``; its shapes never change while decoding, so a compiled decode step
(``T_new = 1``) compiles once. Row ``b``'s tokens sit at cache positions ``0 .. length_b - 1``
(prompts are left-aligned); a query at position ``p`` attends to cache positions ``<= p`` of its
own row, so whatever a row holds beyond its own length (padding of a shorter prompt, zeros) is
never read before it is overwritten.

``forward_cached`` is pure (the new keys and values go into copies of the cache tensors);
``forward_cached_`` writes them into the given cache, for speed, as ``update_`` does for the
optimizer. Both are eval-mode forwards: no dropout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import Config
from .layers import conv1d, layer_norm, merge_heads, mlp, split_heads
from .params import scope


def cache_shape(cfg: Config, batch: int, max_len: int) -> tuple[int, int, int, int]:
    return (batch, cfg.n_head, max_len, cfg.head_dim)


def init_cache(cfg: Config, batch: int, max_len: int, *, dtype: torch.dtype = torch.float32,
               device=None) -> dict[str, torch.Tensor]:
    """Zeroed keys and values of every layer, ``[batch, n_head, max_len, head_dim]`` each."""
    for name, value, high in (("batch", batch, None), ("max_len", max_len, cfg.n_ctx)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
        if high is not None and value > high:
            raise ValueError(f"{name}={value} exceeds cfg.n_ctx={high}, the number of positions")
    shape = cache_shape(cfg, batch, max_len)
    return {f"h{i}/{kv}": torch.zeros(shape, dtype=dtype, device=device)
            for i in range(cfg.n_layer) for kv in ("k", "v")}


def check_cache(cache: dict[str, torch.Tensor], cfg: Config, batch: int) -> int:
    """The cache's ``max_len`` after checking its keys and shapes against ``cfg`` and ``batch``."""
    expected = {f"h{i}/{kv}" for i in range(cfg.n_layer) for kv in ("k", "v")}
    if not isinstance(cache, dict) or set(cache) != expected:
        got = sorted(cache) if isinstance(cache, dict) else type(cache).__name__
        raise ValueError(f"cache must hold 'h{{i}}/k' and 'h{{i}}/v' for the {cfg.n_layer} layers "
                         f"(see gpt1f.init_cache), got {got}")
    shape = tuple(cache["h0/k"].shape)
    if len(shape) != 4 or shape != cache_shape(cfg, batch, shape[2]):
        raise ValueError(f"cache['h0/k'] has shape {list(shape)}, expected "
                         f"{list(cache_shape(cfg, batch, 'max_len'))} for {batch} rows")
    for name, t in cache.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"cache[{name!r}] has shape {list(t.shape)}, expected {list(shape)}")
    if shape[2] > cfg.n_ctx:
        raise ValueError(f"cache max_len {shape[2]} exceeds cfg.n_ctx={cfg.n_ctx}")
    return shape[2]


def check_inputs(tokens: torch.Tensor, pos: torch.Tensor, cache, cfg: Config) -> None:
    """Shape and dtype checks that need no look at tensor values (no host sync)."""
    if tokens.dim() != 2 or tokens.shape[1] < 1 or tokens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"tokens must be an integer tensor [batch, T_new >= 1], got "
                         f"{tokens.dtype} {list(tokens.shape)}")
    if not isinstance(pos, torch.Tensor) or pos.dtype not in (torch.int32, torch.int64) \
            or pos.dim() > 1 or pos.dim() == 1 and pos.shape[0] != tokens.shape[0]:
        raise ValueError(f"pos must be an integer tensor, one shared position [] or one per row "
                         f"[{tokens.shape[0]}], got "
                         f"{pos.dtype if isinstance(pos, torch.Tensor) else type(pos).__name__} "
                         f"{list(pos.shape) if isinstance(pos, torch.Tensor) else ''}")
    max_len = check_cache(cache, cfg, tokens.shape[0])
    if tokens.shape[1] > max_len:
        raise ValueError(f"tokens has {tokens.shape[1]} new positions but the cache holds {max_len}")


def positions(pos: torch.Tensor, batch: int, t_new: int) -> torch.Tensor:
    """Absolute positions of the new tokens.  pos [] or [B] -> [B, T_new] int64"""
    start = pos.to(torch.int64).reshape(-1, 1).expand(batch, 1)
    return start + torch.arange(t_new, device=pos.device)


def visible(query_pos: torch.Tensor, max_len: int) -> torch.Tensor:
    """Which cache positions each query sees: ``j <= p``.  [B, T_new] -> [B, 1, T_new, max_len] bool"""
    j = torch.arange(max_len, device=query_pos.device)
    return (j <= query_pos[..., None])[:, None]


def write(cache_kv: torch.Tensor, new: torch.Tensor, index: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``new`` [B, H, T_new, D] written at cache positions ``index`` [B, T_new] of ``cache_kv``."""
    index = index[:, None, :, None].expand(new.shape)
    if inplace:
        return cache_kv.scatter_(2, index, new)
    return cache_kv.scatter(2, index, new)


def attn_cached(p, x: torch.Tensor, cache_k, cache_v, query_pos, mask, *, cfg: Config,
                inplace: bool):
    """Self-attention of the new positions over the cache they were just written into.

    [B, T_new, E] -> ([B, T_new, E], new cache_k, new cache_v)
    """
    q, k, v = conv1d(x, p["attn/c_attn/w:0"], p["attn/c_attn/b:0"]).chunk(3, dim=-1)
    q, k, v = (split_heads(t, cfg.n_head) for t in (q, k, v))      # [B, H, T_new, D]
    cache_k = write(cache_k, k, query_pos, inplace)
    cache_v = write(cache_v, v, query_pos, inplace)
    a = F.scaled_dot_product_attention(q, cache_k, cache_v, attn_mask=mask)
    return conv1d(merge_heads(a), p["attn/c_proj/w:0"], p["attn/c_proj/b:0"]), cache_k, cache_v


def block_cached(p, x, cache_k, cache_v, query_pos, mask, *, cfg: Config, inplace: bool):
    """``layers.block`` in eval mode over the cache.  [B, T_new, E] -> ([B, T_new, E], k, v)"""
    a, cache_k, cache_v = attn_cached(p, x, cache_k, cache_v, query_pos, mask, cfg=cfg,
                                      inplace=inplace)
    n = layer_norm(x + a, p["ln_1/g:0"], p["ln_1/b:0"])
    h = layer_norm(n + mlp(p, n, cfg=cfg, key=None, train=False), p["ln_2/g:0"], p["ln_2/b:0"])
    return h, cache_k, cache_v


def run_cached(params, tokens, cache, pos, *, cfg: Config, inplace: bool):
    """The unchecked body of ``forward_cached`` / ``forward_cached_``."""
    batch, t_new = tokens.shape
    max_len = cache["h0/k"].shape[2]
    query_pos = positions(pos, batch, t_new)                        # [B, T_new]
    we = params["model/we:0"]
    h = we[tokens] + we[cfg.pos_offset + query_pos]                 # [B, T_new, E]
    mask = visible(query_pos, max_len)
    new_cache = {}
    for i in range(cfg.n_layer):
        h, new_cache[f"h{i}/k"], new_cache[f"h{i}/v"] = block_cached(
            scope(params, f"model/h{i}/"), h, cache[f"h{i}/k"], cache[f"h{i}/v"], query_pos, mask,
            cfg=cfg, inplace=inplace)
    return h, new_cache


def forward_cached(params, tokens: torch.Tensor, cache: dict[str, torch.Tensor], pos: torch.Tensor,
                   *, cfg: Config) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hidden states of ``tokens`` at positions ``pos .. pos + T_new - 1``, and the cache with their
    keys and values added; the given cache is not modified.

    tokens [B, T_new] int64, pos [] or [B] int64 (a shared start or one per row), cache from
    ``init_cache`` -> (hidden [B, T_new, E], cache). Positions must satisfy
    ``pos + T_new <= max_len``, and the cache must hold every earlier position of each row.
    """
    check_inputs(tokens, pos, cache, cfg)
    return run_cached(params, tokens, cache, pos, cfg=cfg, inplace=False)


def forward_cached_(params, tokens: torch.Tensor, cache: dict[str, torch.Tensor], pos: torch.Tensor,
                    *, cfg: Config) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``forward_cached`` writing the new keys and values into ``cache`` itself (returned too)."""
    check_inputs(tokens, pos, cache, cfg)
    with torch.no_grad():
        return run_cached(params, tokens, cache, pos, cfg=cfg, inplace=True)

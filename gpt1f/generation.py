"""Text continuation: prefill every prompt into a fixed-shape cache, then one decode step per token.

    new = gpt1f.generate(params, [[3570, 1276], [249]], cfg=cfg, key=gpt1f.random.key(0),
                         max_new_tokens=40, top_k=40)      # [[...40 ids], [...40 ids]]

The loop is gpt-fast's: one (eager) prefill of the left-aligned prompts, then ``max_new_tokens - 1``
calls of one decode step with fixed shapes, ``[B, 1]`` tokens at per-row positions ``pos [B]``,
which writes its keys and values into the cache by index, draws the next token with tensor ops
and never reads a tensor on the host. ``compile=True`` compiles that step once (``fullgraph``; on
CUDA ``mode="reduce-overhead"``, CUDA graphs) and reuses it for every step and every later call
with the same shapes and settings.

Rows are independent: a row's positions, attention mask and random key are its own, so each row
of a batch of prompts of different lengths continues exactly as it would alone. Row ``b`` draws
the token at position ``p`` with the key ``fold_in(row_key_b, p)``.

Stop tokens: a row that has drawn one is marked done and repeats it; the steps keep running (fixed
shapes), and the host checks every ``STOP_CHECK_EVERY`` steps, outside the compiled step, whether
every row is done, to end early. Rows are returned cut after their first stop token.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from . import random as grandom
from .cache import forward_cached_, init_cache, run_cached
from .config import Config
from .sampling import choice_logits, n_choices, next_tokens

STOP_CHECK_EVERY = 16  # decode steps between the host's looks at the done mask
CACHE_BUCKET = 64      # cache lengths are rounded up to a multiple of this (capped at n_ctx), so
                       # prompts of other lengths reuse the compiled step


# ---------------------------------------------------------------------------------------------
# Checking the request (host side, before any tensor work)


def check_prompts(prompts, cfg: Config, max_new_tokens: int, allow_special: bool) -> list[list[int]]:
    """Prompts as lists of ints after checking ids and lengths; errors name ``prompts[i]``."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompts must be a list of id lists or a 2-D tensor [batch, T], got a "
                             f"tensor of shape {list(prompts.shape)}")
        prompts = prompts.tolist()
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists "
                         "(TextEncoder.encode(texts) gives one)")
    n, out = n_choices(cfg, allow_special), []
    for i, prompt in enumerate(prompts):
        prompt = prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt
        if isinstance(prompt, (str, bytes, numbers.Number)) or not isinstance(prompt, Sequence):
            raise ValueError(f"prompts[{i}] must be a list of token ids, got {type(prompt).__name__}")
        if len(prompt) == 0:
            raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
        for j, t in enumerate(prompt):
            if not isinstance(t, numbers.Integral) or isinstance(t, bool) or not 0 <= t < n:
                rows = (f"token rows 0 .. {cfg.n_vocab - 1}" if not allow_special else
                        f"token and special rows 0 .. {n - 1}")
                hint = "" if allow_special else " (special ids need allow_special=True)"
                raise ValueError(f"prompts[{i}][{j}] = {t!r} is outside the {rows}{hint}")
        if len(prompt) + max_new_tokens > cfg.n_ctx:
            raise ValueError(
                f"prompts[{i}] has {len(prompt)} tokens and max_new_tokens={max_new_tokens}: "
                f"{len(prompt) + max_new_tokens} positions, but cfg.n_ctx={cfg.n_ctx}; "
                f"{max(cfg.n_ctx - len(prompt), 0)} new tokens fit after this prompt")
        out.append([int(t) for t in prompt])
    return out


def check_settings(*, max_new_tokens, temperature, top_k, top_p, greedy) -> None:
    if not isinstance(max_new_tokens, numbers.Integral) or isinstance(max_new_tokens, bool) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number, got {temperature!r}")
    if temperature <= 0 and not greedy:
        raise ValueError(f"temperature={temperature} must be > 0 for sampling "
                         "(greedy=True picks the most likely token)")
    if top_k is not None and (not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool)
                              or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or lie in (0, 1], got {top_p!r}")


def check_stop_tokens(stop_tokens, cfg: Config, allow_special: bool) -> list[int]:
    n = n_choices(cfg, allow_special)
    stop = list(stop_tokens)
    for i, t in enumerate(stop):
        if not isinstance(t, numbers.Integral) or isinstance(t, bool) or not 0 <= t < n:
            raise ValueError(f"stop_tokens[{i}] = {t!r} is not a drawable id (0 .. {n - 1})")
    return [int(t) for t in stop]


def row_keys(key, batch: int, greedy: bool, device) -> torch.Tensor:
    """One key per row ``[B]``: ``split(key, B)`` for a single key, a ``[B]`` tensor as given."""
    if key is None:
        if not greedy:
            raise ValueError("key is required for sampling: pass key=gpt1f.random.key(seed) "
                             "(or greedy=True)")
        return torch.zeros(batch, dtype=torch.int32, device=device)
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int32 or key.dim() > 1 \
            or key.dim() == 1 and key.shape[0] != batch:
        got = f"{key.dtype} {list(key.shape)}" if isinstance(key, torch.Tensor) else type(key).__name__
        raise ValueError(f"key must be an int32 key from gpt1f.random (shape []) or one per row "
                         f"(shape [{batch}]), got {got}")
    key = key.to(device)
    return grandom.split(key, batch) if key.dim() == 0 else key


# ---------------------------------------------------------------------------------------------
# The decode step


def decode_step(params, cache, token, pos, keys, done, stop, temperature, top_p, *, cfg: Config,
                greedy: bool, top_k, allow_special: bool):
    """Feed ``token`` [B] at positions ``pos`` [B] (cache written in place), draw the next token
    for position ``pos + 1``. Rows already ``done`` [B] repeat their token.

    -> (next token [B], pos + 1 [B], done [B])
    """
    hidden, _ = run_cached(params, token[:, None], cache, pos, cfg=cfg, inplace=True)
    logits = choice_logits(params, hidden[:, 0], cfg=cfg, allow_special=allow_special)
    pos = pos + 1
    drawn = next_tokens(logits, grandom.fold_in(keys, pos), greedy=greedy,
                        temperature=temperature, top_k=top_k, top_p=top_p)
    drawn = torch.where(done, token, drawn)
    return drawn, pos, done | torch.isin(drawn, stop)


_COMPILED: dict = {}


def compiled_decode_step(device: torch.device, options: dict | None):
    """``decode_step`` under ``torch.compile(fullgraph=True)``, one wrapper per set of options
    (default: ``mode="reduce-overhead"`` on CUDA, inductor's default elsewhere)."""
    if options is None:
        options = {"mode": "reduce-overhead"} if device.type == "cuda" else {}
    tag = tuple(sorted((k, id(v) if callable(v) else v) for k, v in options.items()))
    if tag not in _COMPILED:
        _COMPILED[tag] = torch.compile(decode_step, fullgraph=True, dynamic=False, **options)
    return _COMPILED[tag]


def cache_length(needed: int, cfg: Config) -> int:
    """``needed`` rounded up to a multiple of ``CACHE_BUCKET``, at most ``cfg.n_ctx``."""
    return min(cfg.n_ctx, -(-needed // CACHE_BUCKET) * CACHE_BUCKET)


def cut_at_stop(rows: list[list[int]], stop: list[int]) -> list[list[int]]:
    stop_set = set(stop)
    out = []
    for row in rows:
        end = next((i + 1 for i, t in enumerate(row) if t in stop_set), len(row))
        out.append(row[:end])
    return out


# ---------------------------------------------------------------------------------------------
# generate


@torch.no_grad()
def generate(params, prompts, *, cfg: Config, key=None, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             greedy: bool = False, stop_tokens=(), allow_special: bool = False,
             compile: bool = False, compile_options: dict | None = None) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens; returns the new ids of each row.

    ``prompts``: token-id lists of any lengths (or a ``[B, T]`` tensor), ids among the token rows
    (``0 .. n_vocab - 1``; the special rows too with ``allow_special``). Each new token is drawn
    from ``softmax(logits / temperature)`` over the same rows, after keeping the ``top_k`` most
    likely and then the smallest set whose mass reaches ``top_p``; ``greedy`` takes the argmax.
    Position rows of ``we`` are never drawn. ``key``: one key (row ``b`` uses
    ``split(key, B)[b]``) or a ``[B]`` tensor of keys, one per row; same keys, same tokens.
    A row ends after its first token in ``stop_tokens``, which it includes.
    ``compile=True`` runs the decode step compiled (``compile_options`` go to ``torch.compile``).
    """
    check_settings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, greedy=greedy)
    prompts = check_prompts(prompts, cfg, max_new_tokens, allow_special)
    stop = check_stop_tokens(stop_tokens, cfg, allow_special)
    we = params["model/we:0"]
    device, batch = we.device, len(prompts)
    keys = row_keys(key, batch, greedy, device)
    if max_new_tokens == 0:
        return [[] for _ in prompts]

    lengths = torch.tensor([len(p) for p in prompts], device=device)
    longest = max(len(p) for p in prompts)
    padded = torch.tensor([p + [0] * (longest - len(p)) for p in prompts], device=device)
    cache = init_cache(cfg, batch, cache_length(longest + max_new_tokens, cfg), dtype=we.dtype,
                       device=device)
    hidden, cache = forward_cached_(params, padded, cache, torch.zeros_like(lengths), cfg=cfg)
    last = hidden[torch.arange(batch, device=device), lengths - 1]          # [B, E]
    temperature_t = torch.tensor(float(temperature), dtype=torch.float32, device=device)
    top_p_t = None if top_p is None or top_p == 1 else torch.tensor(float(top_p), device=device)
    settings = dict(greedy=greedy, top_k=top_k, allow_special=allow_special)
    logits = choice_logits(params, last, cfg=cfg, allow_special=allow_special)
    token = next_tokens(logits, grandom.fold_in(keys, lengths), greedy=greedy,
                        temperature=temperature_t, top_k=top_k, top_p=top_p_t)
    stop_t = torch.tensor(stop, dtype=torch.int64, device=device)
    done = torch.isin(token, stop_t)

    step = decode_step
    if compile:
        step = compiled_decode_step(device, compile_options)
        if device.type == "cuda":  # CUDA graphs replay on fixed addresses
            for t in [*cache.values(), *params.values()]:
                torch._dynamo.mark_static_address(t)
    out = torch.empty(batch, max_new_tokens, dtype=torch.int64, device=device)
    out[:, 0] = token
    pos, n = lengths, 1
    while n < max_new_tokens:
        token, pos, done = step(params, cache, token, pos, keys, done, stop_t, temperature_t,
                                top_p_t, cfg=cfg, **settings)
        if compile and device.type == "cuda":
            token, pos, done = token.clone(), pos.clone(), done.clone()
        out[:, n] = token
        n += 1
        if stop and n % STOP_CHECK_EVERY == 0 and bool(done.all()):
            break
    return cut_at_stop(out[:, :n].tolist(), stop)

"""Checks of what a caller hands the public entry points; every error names the argument.

Shape, dtype and cfg-vs-params checks are host-side and cost nothing. Value checks (token ids,
labels) read the tensor once on the host; they are skipped while ``torch.compile`` traces (the
compiled train step checks its batch before entering the graph) and on tensors wrapped by a
``torch.func`` transform, whose values cannot be read under ``vmap``: a vmapped call is checked
only in shape and dtype.
"""
from __future__ import annotations

import math

import torch

from .config import Config


def _values_readable(t: torch.Tensor) -> bool:
    """Whether ``t``'s values can be read here: not while compiling, not batched by ``vmap``
    at any level (``grad``'s wrappers can be read through), not on the meta device."""
    if torch.compiler.is_compiling() or t.device.type == "meta":
        return False
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t) or not functorch.is_gradtrackingtensor(t):
            return False
        t = functorch.get_unwrapped(t)
    return t.device.type != "meta"


def _first_bad(bad: torch.Tensor) -> tuple[int, ...] | None:
    """Index of the first True of ``bad``, or None (one host sync)."""
    if not bool(bad.any()):
        return None
    return tuple(int(i) for i in bad.nonzero()[0])


def check_params_match(params, cfg: Config) -> None:
    """``model/we:0`` and the block count must be those of ``cfg``.  Raises ValueError."""
    we = params.get("model/we:0") if isinstance(params, dict) else None
    if we is None:
        raise ValueError("params has no 'model/we:0': expected the flat TF-named dict of "
                         "gpt1f.init_params / load_openai / load_hf")
    want = (cfg.n_rows, cfg.n_embd)
    if tuple(we.shape) != want:
        raise ValueError(
            f"params['model/we:0'] is {list(we.shape)} but cfg expects {list(want)} (n_vocab="
            f"{cfg.n_vocab} + n_special={cfg.n_special} + n_ctx={cfg.n_ctx} rows, n_embd="
            f"{cfg.n_embd}): pass the cfg these params were made for")
    if f"model/h{cfg.n_layer - 1}/attn/c_attn/w:0" not in params:
        raise ValueError(f"cfg.n_layer={cfg.n_layer} but params have no "
                         f"model/h{cfg.n_layer - 1}/: they hold fewer blocks")
    if f"model/h{cfg.n_layer}/attn/c_attn/w:0" in params:
        raise ValueError(f"cfg.n_layer={cfg.n_layer} but params also hold model/h{cfg.n_layer}/: "
                         "they hold more blocks")


def check_key(key) -> None:
    """None or a key of :mod:`gpt1f.random` (an int32 tensor).  Raises TypeError."""
    if key is not None and not (isinstance(key, torch.Tensor) and key.dtype == torch.int32):
        got = f"a {key.dtype} tensor" if isinstance(key, torch.Tensor) else type(key).__name__
        raise TypeError(f"key must be None or a gpt1f.random.key(seed) (an int32 tensor), got {got}")


def check_tokens(tokens, cfg: Config, *, name: str = "tokens", layout: str | None = None,
                 rank: int | None = None) -> None:
    """int64 ids in the token and special-token rows of ``model/we:0``, ``rank`` dims if given."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64:
        got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise TypeError(f"{name} must be an int64 (torch.long) tensor of token ids, got {got}")
    if rank is not None and tokens.dim() != rank:
        raise ValueError(f"{name} must be {layout or f'{rank}-D'}, got shape {list(tokens.shape)}")
    if tokens.dim() < 1:
        raise ValueError(f"{name} must be [..., time], got a 0-dim tensor")
    if not _values_readable(tokens):
        return
    limit = cfg.n_vocab + cfg.n_special
    where = _first_bad((tokens < 0) | (tokens >= limit))
    if where is not None:
        raise ValueError(
            f"{name}[{', '.join(map(str, where))}] = {int(tokens[where])} lies outside the token and "
            f"special-token rows 0 .. {limit - 1} of model/we:0 (rows {limit} .. {cfg.n_rows - 1} "
            "are positions)")


def check_inputs(params, tokens, *, cfg: Config, key=None, layout: str | None = None,
                 rank: int | None = None) -> None:
    """The checks every forward entry point makes: params against cfg, tokens, key."""
    check_params_match(params, cfg)
    check_tokens(tokens, cfg, layout=layout, rank=rank)
    check_key(key)


def check_mask(mask, tokens: torch.Tensor, *, name: str = "mask") -> None:
    """The LM loss's mask: float or bool, exactly ``tokens``'s shape (no broadcasting)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a tensor shaped like tokens, got {type(mask).__name__}")
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise TypeError(f"{name} must be float or bool, got {mask.dtype}")
    if mask.shape != tokens.shape:
        raise ValueError(f"{name} has shape {list(mask.shape)}, tokens {list(tokens.shape)}: the LM "
                         "loss needs one mask value per token (no broadcasting)")


def check_labels(label, n: int, *, what: str, batch: int, name: str = "label") -> None:
    """int64 labels ``[batch]``, each in ``0 .. n-1`` (``n`` choices or classes)."""
    if not isinstance(label, torch.Tensor) or label.dtype != torch.int64:
        got = label.dtype if isinstance(label, torch.Tensor) else type(label).__name__
        raise TypeError(f"{name} must be an int64 tensor of {what} indices, got {got}")
    if tuple(label.shape) != (batch,):
        raise ValueError(f"{name} must be [batch] = [{batch}], got shape {list(label.shape)}")
    if not _values_readable(label):
        return
    where = _first_bad((label < 0) | (label >= n))
    if where is not None:
        raise ValueError(f"{name}[{where[0]}] = {int(label[where])} is not one of the {n} {what} "
                         f"(expected 0 .. {n - 1})")


def check_lm_coef(lm_coef) -> None:
    if not (isinstance(lm_coef, (int, float)) and math.isfinite(lm_coef) and lm_coef >= 0):
        raise ValueError(f"lm_coef must be a finite number >= 0, got {lm_coef!r}")


def tensor_norms(tensors: list, ord: float = 2, dtype=None) -> list:
    """Each tensor's ``ord``-norm: one ``torch._foreach_norm``, or one norm a tensor under vmap
    (foreach ops have no batching rule)."""
    if tensors and torch._C._functorch.is_batchedtensor(tensors[0]):
        return [torch.linalg.vector_norm(t, ord, dtype=dtype) for t in tensors]
    return torch._foreach_norm(tensors, ord, dtype=dtype)


def all_finite(params) -> torch.Tensor:
    """One 0-dim bool: every element of every tensor is finite (one fused max-abs reduction)."""
    norms = tensor_norms(list(params.values()), math.inf)
    return torch.isfinite(torch.stack(norms)).all()


def check_head_batch(params, batch, *, cfg: Config, key, layout: str, n_labels,
                     what: str = "choices", with_lm: bool = True) -> None:
    """A head's batch: ``tokens`` in ``layout`` (its rank), ``label`` in ``0 .. n_labels-1``
    (``"choices"``: tokens' axis 1; unchecked when None), ``mask`` shaped like tokens when the
    LM loss is computed."""
    if not isinstance(batch, dict) or "tokens" not in batch:
        raise TypeError("batch must be a dict with 'tokens' (and 'label', 'mask'), got "
                        f"{type(batch).__name__}")
    tokens = batch["tokens"]
    check_inputs(params, tokens, cfg=cfg, key=key, layout=layout, rank=layout.count(",") + 1)
    if n_labels == "choices":
        n_labels = tokens.shape[1]
    if n_labels is not None and "label" in batch:
        check_labels(batch["label"], n_labels, what=what, batch=tokens.shape[0])
    if with_lm:
        check_mask(batch.get("mask"), tokens)

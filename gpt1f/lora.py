"""LoRA as a parameter transform: low-rank adapters merged into frozen TF-named weights.

For a targeted weight ``model/h{i}/{target}/w:0`` ``[1, nx, nf]`` the adapters are two tensors
keyed beside it, ``model/h{i}/{target}/lora_a:0`` ``[1, nx, r]`` and ``.../lora_b:0`` ``[1, r, nf]``,
and the merged weight is ``w + scale * a @ b`` (Hu et al. 2021). ``b`` starts at zero, so at
initialisation the merged params are the base params exactly. The adapters are a plain dict of
tensors like the params, so the optimizer, ``torch.func.grad`` and ``vmap`` take them as they
take params; the base is never differentiated.

A new task's classifier (``model/clf/*``) has no pre-trained value to adapt, so by default it is
trained in full: :func:`init` copies it into the adapter dict (``train_head=True``), and
:func:`apply` uses that copy.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import re
from typing import Callable

import torch

from .config import Config
from .optim import Optimizer
from .random import fold_in, normal

Params = dict[str, torch.Tensor]
DEFAULT_TARGETS = ("attn/c_attn", "attn/c_proj")
TARGETS = ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")
HEAD = ("model/clf/w:0", "model/clf/b:0")
A, B = "lora_a:0", "lora_b:0"
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter.safetensors"


def targeted_weights(params: Params, targets=DEFAULT_TARGETS) -> list[str]:
    """The weight names ``model/h{i}/{target}/w:0`` of ``params`` that ``targets`` select."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"unknown LoRA targets {unknown or list(targets)}; choose from {TARGETS}")
    pattern = re.compile(r"model/h\d+/(%s)/w:0" % "|".join(map(re.escape, targets)))
    return [k for k in params if pattern.fullmatch(k)]


def init(params: Params, *, rank: int, targets=DEFAULT_TARGETS, key: torch.Tensor,
         train_head: bool = True) -> Params:
    """Adapters for ``params``: ``a`` drawn N(0, 1/nx) from ``key`` (weight j from
    ``fold_in(key, j)``), ``b`` zeros, in the dtype and device of each weight."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    adapters = {}
    for j, name in enumerate(targeted_weights(params, targets)):
        w = params[name]
        _, nx, nf = w.shape
        if rank > min(nx, nf):
            raise ValueError(f"rank {rank} exceeds the smaller side of {name} {tuple(w.shape)}")
        prefix = name[:-len("w:0")]
        adapters[prefix + A] = normal(fold_in(key, j), (1, nx, rank), w.dtype, w.device) / math.sqrt(nx)
        adapters[prefix + B] = torch.zeros((1, rank, nf), dtype=w.dtype, device=w.device)
    if train_head:
        adapters.update({k: params[k].detach().clone() for k in HEAD if k in params})
    return adapters


def apply(params: Params, adapters: Params, *, scale: float = 1.0) -> Params:
    """The merged params (pure): targeted weights ``w + scale * a @ b``; adapter-held head tensors
    replace the base's; everything else is the base tensor itself."""
    merged = dict(params)
    for name in adapters:
        if name.endswith(A):
            prefix = name[:-len(A)]
            weight = prefix + "w:0"
            if weight not in params or prefix + B not in adapters:
                raise ValueError(f"adapter {name!r} has no {weight!r} in params or no {B} beside it")
            merged[weight] = params[weight] + scale * (adapters[name] @ adapters[prefix + B])
        elif name in HEAD:
            merged[name] = adapters[name]
        elif not name.endswith(B):
            raise ValueError(f"{name!r} is not a LoRA adapter or a head tensor")
    return merged


def count(adapters: Params) -> int:
    """Trainable numbers in the adapter dict."""
    return sum(t.numel() for t in adapters.values())


def save(adapters: Params, path, *, rank: int, targets, scale: float = 1.0) -> pathlib.Path:
    """Write ``adapter.safetensors`` + ``adapter_config.json`` into the folder ``path``
    (beside whatever base release the user keeps elsewhere); needs ``safetensors``."""
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: t.detach().contiguous().cpu() for k, t in adapters.items()},
              str(path / WEIGHTS_NAME))
    config = {"rank": rank, "targets": list(targets), "scale": scale, "names": sorted(adapters)}
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
    return path


def load(path, *, device=None) -> tuple[Params, dict]:
    """``(adapters, config)`` from a folder :func:`save` wrote; errors name the file."""
    from safetensors.torch import load_file

    path = pathlib.Path(path)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found: not a gpt1f LoRA adapter folder")
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        rank, names = int(config["rank"]), set(config["names"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path / CONFIG_NAME}: not a valid adapter config ({e})") from None
    adapters = load_file(str(path / WEIGHTS_NAME), device=str(device or "cpu"))
    if set(adapters) != names:
        raise ValueError(f"{path / WEIGHTS_NAME} holds {sorted(adapters)}, its config names "
                         f"{sorted(names)}")
    bad = [k for k, t in adapters.items() if k.endswith(A) and t.shape[-1] != rank]
    if bad:
        raise ValueError(f"{path / WEIGHTS_NAME}: {bad} do not have rank {rank}")
    return adapters, config


def make_train_step(cfg: Config, opt: Optimizer, base: Params, *, scale: float = 1.0,
                    **step_kwargs) -> Callable:
    """``step(adapters, opt_state, batch, key) -> (adapters, opt_state, metrics)``: the train step
    of :func:`gpt1f.make_train_step` (``step_kwargs``: lm_coef, accum, head, compile, ...) with
    the gradient taken with respect to the adapters only; ``opt`` is initialised on the adapters
    (``opt.init(adapters)``), the base stays as it is."""
    from .train import make_train_step as make_params_step

    return make_params_step(cfg, opt, transform=functools.partial(apply, base, scale=scale),
                            **step_kwargs)

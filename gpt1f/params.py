"""The parameter pytree: a flat dict keyed by the TF variable names of the fine-tuning graph."""
from __future__ import annotations

import torch

from .config import Config

# Per-layer variables in the order of the original release (params_shapes.json).
LAYER_VARIABLES = (
    "attn/c_attn/w:0", "attn/c_attn/b:0", "attn/c_proj/w:0", "attn/c_proj/b:0",
    "ln_1/g:0", "ln_1/b:0",
    "mlp/c_fc/w:0", "mlp/c_fc/b:0", "mlp/c_proj/w:0", "mlp/c_proj/b:0",
    "ln_2/g:0", "ln_2/b:0",
)


def layer_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Shapes of one block's variables, keyed by their name below ``model/h{i}/``."""
    e = cfg.n_embd
    return {
        "attn/c_attn/w:0": (1, e, 3 * e), "attn/c_attn/b:0": (3 * e,),
        "attn/c_proj/w:0": (1, e, e), "attn/c_proj/b:0": (e,),
        "ln_1/g:0": (e,), "ln_1/b:0": (e,),
        "mlp/c_fc/w:0": (1, e, 4 * e), "mlp/c_fc/b:0": (4 * e,),
        "mlp/c_proj/w:0": (1, 4 * e, e), "mlp/c_proj/b:0": (e,),
        "ln_2/g:0": (e,), "ln_2/b:0": (e,),
    }


def param_shapes(cfg: Config, n_class: int = 1) -> dict[str, tuple[int, ...]]:
    """Every variable's TF name and shape, in graph order: ``we``, blocks, classifier head."""
    shapes = {"model/we:0": (cfg.n_rows, cfg.n_embd)}
    for i in range(cfg.n_layer):
        shapes.update({f"model/h{i}/{k}": s for k, s in layer_shapes(cfg).items()})
    shapes["model/clf/w:0"] = (cfg.n_embd, n_class)
    shapes["model/clf/b:0"] = (n_class,)
    return shapes


def init_value(name: str, shape, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """TF initialisers: N(0, 0.02) for ``we`` and every ``w``, zeros for ``b``, ones for ``g``."""
    kind = name.rsplit("/", 1)[-1]
    if kind in ("w:0", "we:0"):
        return torch.randn(shape, generator=generator, dtype=dtype) * 0.02
    if kind == "g:0":
        return torch.ones(shape, dtype=dtype)
    if kind == "b:0":
        return torch.zeros(shape, dtype=dtype)
    raise ValueError(f"no initialiser for variable {name!r}")


def init_params(cfg: Config, *, seed: int, n_class: int = 1,
                dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Fresh parameters, every variable its own draw from one seeded stream (global RNG untouched)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: init_value(name, shape, generator, dtype)
            for name, shape in param_shapes(cfg, n_class).items()}


def scope(params: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The variables under ``prefix`` (e.g. ``'model/h3/'``), keyed by the rest of their name."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def count_params(params: dict[str, torch.Tensor]) -> int:
    return sum(p.numel() for p in params.values())


def is_decayed(shape, vector_l2: bool = False) -> bool:
    """TF's rule for weight decay: matrices (``we``, ``[1, nx, nf]`` weights, ``clf/w``) decay;
    vectors (biases, gains) only when ``vector_l2``."""
    return len(shape) > 1 or vector_l2

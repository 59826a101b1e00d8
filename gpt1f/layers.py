"""The pieces of one GPT-1 block, as pure functions of TF-named parameters.

``p`` below is one block's parameters as given by ``scope(params, 'model/h{i}/')``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from .config import Config
from .dropout_keys import block_site_key
from .packing import Packing, element_counters, gather, scatter
from .random import dropout

MASK_VALUE = -1e9  # TF's ``w * b - 1e9 * (1 - b)``; transformers uses -1e4


def layer_norm(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """OpenAI layer norm ``(x - mean) * rsqrt(var + eps) * g + b`` over the last axis, var biased.

    ``F.layer_norm`` computes exactly this formula in one fused kernel.  [..., n] -> [..., n]
    """
    return F.layer_norm(x, x.shape[-1:], g, b, eps)


GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU in the tanh form of the TF original: ``0.5 x (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``.

    Inside a compiled graph it is written ``x * sigmoid(2u)``, the same function
    (``1 + tanh(u) = 2 sigmoid(2u)``): inductor's CPU kernels then take one ``exp`` instead of a
    much slower ``tanh`` forward and again backward, and the negative tail keeps its relative
    precision, where ``1 + tanh(u)`` cancels. Eagerly it is ``F.gelu``'s one fused kernel.
    Only rounding differs between the two (``tests/test_model.py``).
    """
    if torch.compiler.is_compiling():
        return x * torch.sigmoid((2.0 * GELU_C) * (x + 0.044715 * x * x * x))
    return F.gelu(x, approximate="tanh")


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


ACTIVATION_FNS = {"gelu": gelu, "relu": F.relu, "swish": swish}


def conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """TF ``conv1d`` with a width-1 filter, i.e. a dense layer.  [..., nx], [1, nx, nf], [nf] -> [..., nf]

    ``w`` is read as ``[nx, nf]`` (``w[0]``'s backward would fill a zero ``[1, nx, nf]`` and copy).
    """
    return torch.matmul(x, w.reshape(w.shape[-2:])) + b


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    return rearrange(x, "... t (h d) -> ... h t d", h=n_head)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "... h t d -> ... t (h d)")


def causal_attention_reference(q, k, v, *, attn_pdrop: float, key, train: bool) -> torch.Tensor:
    """Masked softmax attention as TF computes it, with dropout on the probabilities.

    [..., H, T, D] x3 -> [..., H, T, D]. The mask writes exactly ``-1e9`` above the diagonal, which
    equals TF's ``w * b - 1e9 * (1 - b)`` bit for bit for finite scores.
    """
    t = q.shape[-2]
    w = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    w = torch.where(causal, w, torch.full_like(w, MASK_VALUE))
    w = dropout(torch.softmax(w, dim=-1), attn_pdrop, key=key, train=train)
    return torch.matmul(w, v)


def causal_attention(q, k, v, *, attn_pdrop: float, key, train: bool) -> torch.Tensor:
    """Causal attention; the fused SDPA kernel whenever no attention dropout is drawn.

    SDPA's ``is_causal`` masks with ``-inf`` where TF uses ``-1e9``; both give probability exactly
    0 after the softmax (every row keeps its finite diagonal), so only rounding differs.
    Attention-probability dropout must come from our key, so training with ``attn_pdrop > 0``
    takes the reference path.  [..., H, T, D] x3 -> [..., H, T, D]
    """
    if train and attn_pdrop > 0:
        return causal_attention_reference(q, k, v, attn_pdrop=attn_pdrop, key=key, train=train)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def resid_dropout(x: torch.Tensor, *, cfg: Config, key, train: bool,
                  packing: Packing | None) -> torch.Tensor:
    """Residual dropout; on real tokens ``[n_real, E]`` (``packing``) each element gets the mask
    of its padded ``[N, T, E]`` index, as the padded computation draws it."""
    counters = None
    if packing is not None and train and cfg.resid_pdrop > 0:
        counters = element_counters(packing, x.shape[-1])
    return dropout(x, cfg.resid_pdrop, key=key, train=train, counters=counters)


def attn(p, x: torch.Tensor, *, cfg: Config, key, train: bool,
         packing: Packing | None = None) -> torch.Tensor:
    """Self-attention sub-layer with residual dropout after ``c_proj``.  [..., T, E] -> [..., T, E]

    With ``packing``, ``x`` is the real tokens ``[n_real, E]`` (``gpt1f.packing``): only the
    attention itself runs in the padded layout.
    """
    qkv = conv1d(x, p["attn/c_attn/w:0"], p["attn/c_attn/b:0"])
    if packing is not None:
        qkv = scatter(qkv, packing)                                      # [N, T, 3E]
    q, k, v = (split_heads(t, cfg.n_head) for t in qkv.chunk(3, dim=-1))
    a = causal_attention(q, k, v, attn_pdrop=cfg.attn_pdrop, key=block_site_key(key, "attn_probs"),
                         train=train)
    a = merge_heads(a)
    if packing is not None:
        a = gather(a, packing)                                           # [n_real, E]
    a = conv1d(a, p["attn/c_proj/w:0"], p["attn/c_proj/b:0"])
    return resid_dropout(a, cfg=cfg, key=block_site_key(key, "attn_resid"), train=train, packing=packing)


def mlp(p, x: torch.Tensor, *, cfg: Config, key, train: bool,
        packing: Packing | None = None) -> torch.Tensor:
    """Position-wise feed-forward sub-layer.  [..., T, E] -> [..., T, E]; with ``packing``
    [n_real, E] -> [n_real, E], dropout masks drawn at the padded index."""
    h = ACTIVATION_FNS[cfg.afn](conv1d(x, p["mlp/c_fc/w:0"], p["mlp/c_fc/b:0"]))
    h = conv1d(h, p["mlp/c_proj/w:0"], p["mlp/c_proj/b:0"])
    return resid_dropout(h, cfg=cfg, key=block_site_key(key, "mlp_resid"), train=train, packing=packing)


def block(p, x: torch.Tensor, *, cfg: Config, key=None, train: bool = False,
          packing: Packing | None = None) -> torch.Tensor:
    """Post-norm block: ``n = ln_1(x + attn(x)); h = ln_2(n + mlp(n))``.  [..., T, E] -> [..., T, E]

    ``key`` is this block's key (``gpt1f.dropout_keys.block_key``). With ``packing``, ``x`` is
    the real tokens ``[n_real, E]`` of a padded ``[N, T, E]`` batch (``gpt1f.packing``).
    """
    a = attn(p, x, cfg=cfg, key=key, train=train, packing=packing)
    n = layer_norm(x + a, p["ln_1/g:0"], p["ln_1/b:0"])
    m = mlp(p, n, cfg=cfg, key=key, train=train, packing=packing)
    return layer_norm(n + m, p["ln_2/g:0"], p["ln_2/b:0"])

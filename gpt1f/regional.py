"""Regional compilation: one compiled block reused by all ``n_layer`` layers of an eager step.

Compiling the whole train step unrolls the 12 blocks into one graph, and the cold compile grows
with them. Here the step stays eager (gradients by ``torch.autograd``, which compiled regions take
part in; ``torch.func.grad`` does not trace into a compiled function) and each block call goes
through one ``torch.compile``d function whose inputs are that block's parameters, the hidden
states, the block's dropout key and the packing plan: the 12 calls hit one graph (forward and
backward), and a new number of real tokens does not recompile (the token axis is dynamic).
The optimizer update stays eager by default: compiled on its own (``compile_update=True``), its
graph of every parameter tensor took inductor's scheduler longer than the rest together (117M,
measured on the 2-core CPU). Gradients equal the eager step's up to float rounding (tests:
``tests/test_regional.py``).

    step = gpt1f.train.make_train_step(cfg, opt, compile="regional")
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable

import torch

from .config import Config
from .layers import block
from .packing import Packing

Params = dict[str, torch.Tensor]

_BLOCK: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("gpt1f_block", default=None)


def current_block() -> Callable:
    """The block function the model runs now: :func:`gpt1f.layers.block` unless inside
    :func:`using_block` (never while ``torch.compile`` traces the model as a whole)."""
    if torch.compiler.is_compiling():
        return block
    return _BLOCK.get() or block


@contextlib.contextmanager
def using_block(fn: Callable):
    """Run the model's blocks through ``fn`` (same signature as ``gpt1f.layers.block``) here."""
    token = _BLOCK.set(fn)
    try:
        yield
    finally:
        _BLOCK.reset(token)


def compiled_block(**compile_kwargs) -> Callable:
    """``block(p, x, *, cfg, key, train, packing)`` through one compiled graph per
    ``(cfg, train, dropout or not, packed or not)``, reused by every layer and call."""
    graphs: dict = {}

    def graph(cfg: Config, train: bool):
        if (cfg, train) not in graphs:
            def run(p, x, key, index, n: int, t: int):
                packing = None if index is None else Packing(index, n, t)
                return block(p, x, cfg=cfg, key=key, train=train, packing=packing)
            graphs[cfg, train] = torch.compile(run, fullgraph=True, **compile_kwargs)
        return graphs[cfg, train]

    def call(p, x, *, cfg: Config, key=None, train: bool = False, packing: Packing | None = None):
        if packing is None:
            return graph(cfg, train)(p, x, key, None, 0, 0)
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(packing.index, 0)
        return graph(cfg, train)(p, x, key, packing.index, packing.n, packing.t)
    return call


def autograd_grad_and_value(fn: Callable, has_aux: bool = False) -> Callable:
    """``torch.func.grad_and_value(fn, has_aux)`` by ``torch.autograd`` on detached leaves of the
    first argument (a dict of tensors), so that compiled regions inside ``fn`` are differentiated
    by their compiled backward. First derivatives only; not for use under ``torch.func``."""
    def grad_and_value(params: Params, *args, **kwargs):
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        with torch.enable_grad():
            out = fn(leaves, *args, **kwargs)
            value, aux = out if has_aux else (out, None)
            grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}
        aux = torch.utils._pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, aux)
        return grads, (value.detach(), aux) if has_aux else value.detach()
    return grad_and_value


@functools.lru_cache(maxsize=None)
def _default_block() -> Callable:
    return compiled_block()


def regional_step(step: Callable, opt, *, block_fn: Callable | None = None, compile_update: bool = False,
                  **compile_kwargs):
    """``step(params, opt_state, batch, key, opt=..., grad_and_value=...)`` (``gpt1f.train``'s
    step with its settings bound) run eagerly with compiled blocks, and with ``compile_update``
    a compiled optimizer update. -> ``regional(params, opt_state, batch, key)``"""
    block_fn = block_fn or (compiled_block(**compile_kwargs) if compile_kwargs else _default_block())
    compiled_opt = opt
    if compile_update:
        compiled_opt = opt._replace(update=torch.compile(opt.update, fullgraph=True, **compile_kwargs),
                                    update_=torch.compile(opt.update_, fullgraph=True, **compile_kwargs))

    def regional(params, opt_state, batch, key):
        with using_block(block_fn):
            return step(params, opt_state, batch, key, opt=compiled_opt,
                        grad_and_value=autograd_grad_and_value)
    return regional

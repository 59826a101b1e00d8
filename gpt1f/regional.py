"""Regional compilation: the step stays eager, its hot regions are small compiled graphs.

Compiling the whole train step unrolls the 12 blocks into one graph, and the cold compile grows
with them. Here the step stays eager (gradients by ``torch.autograd``, which compiled regions take
part in; ``torch.func.grad`` does not trace into a compiled function) and runs three kinds of
compiled region, each one graph with dynamic sizes reused for every call:

- the block: every layer's call goes through one ``torch.compile``d function whose inputs are that
  block's parameters, the hidden states, the block's dropout key and the packing plan (a new
  number of real tokens does not recompile);
- the dropout of the whole ``we`` matrix and the embedding lookup in it, as one autograd node
  (``gpt1f.model.packed_trunk``): eagerly, the counter hash is some 25 passes over
  ``[n_rows, E]``, each a fresh 125 MB tensor at 117M, and the backward fills, adds and masks
  more; here one compiled pass forward, into a buffer kept from the step before
  (``gpt1f.scratch``), and one backward (the mask recomputed from the key), written into the
  fused LM loss's gradient buffer;
- with ``inplace=True``, the optimizer update: ``gpt1f.fused_adam``'s two fused passes a tensor.

On this project's 2-core CPU, fresh tensors the size of ``we`` cost tens of milliseconds each in
page faults, so the regions avoid them where the data flow allows. Gradients equal the eager
step's up to float rounding (tests: ``tests/test_regional.py``).

    step = gpt1f.train.make_train_step(cfg, opt, compile="regional", inplace=True)
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable, NamedTuple

import torch

from . import scratch
from .config import Config
from .embedding import dropped_lookup, lookup
from .fused_adam import fused_update_
from .fused_lm_loss import FRESH_GRAD
from .layers import block
from .packing import Packing
from .random import dropout

Params = dict[str, torch.Tensor]


class Regions(NamedTuple):
    """The functions the model runs its hot regions through."""

    block: Callable            # gpt1f.layers.block's signature
    dropout: Callable          # gpt1f.random.dropout's signature: the dropout of the whole ``we``
    dropped_lookup: Callable   # gpt1f.embedding.dropped_lookup's: ``we``'s dropout and the lookup


EAGER = Regions(block, dropout, dropped_lookup)
_REGIONS: contextvars.ContextVar[Regions | None] = contextvars.ContextVar("gpt1f_regions", default=None)


def current_regions() -> Regions:
    """The regions the model runs now: :data:`EAGER` unless inside :func:`using_regions` (never
    while ``torch.compile`` traces the model as a whole)."""
    if torch.compiler.is_compiling():
        return EAGER
    return _REGIONS.get() or EAGER


def current_block() -> Callable:
    """The block function the model runs now (``gpt1f.layers.block`` outside a regional step)."""
    return current_regions().block


@contextlib.contextmanager
def using_regions(regions: Regions):
    """Run the model's regions through ``regions`` here."""
    token = _REGIONS.set(regions)
    try:
        yield
    finally:
        _REGIONS.reset(token)


def using_block(fn: Callable):
    """Run the model's blocks through ``fn`` (same signature as ``gpt1f.layers.block``) here."""
    return using_regions(current_regions()._replace(block=fn))


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


def _dropout_graphs(**compile_kwargs) -> Callable:
    """``graph(p, write="new")``: one compiled dropout at rate ``p`` per way of writing it, for
    every shape: ``"new"`` ``(x, key) -> dropout(x)``, ``"inplace"`` ``(x, key)`` into ``x``,
    ``"into"`` ``(out, x, key)`` into ``out``."""
    graphs: dict[tuple[float, str], Callable] = {}

    def graph(p: float, write: str = "new") -> Callable:
        if (p, write) not in graphs:
            def drop(x, key):                   # p a constant of the graph, not an input
                return dropout(x, p, key=key, train=True)

            def drop_(x, key):
                x.copy_(dropout(x, p, key=key, train=True))

            def drop_into(out, x, key):
                out.copy_(dropout(x, p, key=key, train=True))
            fn = {"new": drop, "inplace": drop_, "into": drop_into}[write]
            graphs[p, write] = torch.compile(fn, fullgraph=True, dynamic=True, **compile_kwargs)
        return graphs[p, write]
    return graph


def compiled_dropout(graph: Callable) -> Callable:
    """``gpt1f.random.dropout`` with the whole-tensor case (no ``noise_shape``, no ``counters``)
    through the compiled ``graph(p)``: the same masks, bit for bit, in one pass."""
    def call(x, p: float, *, key, train: bool, noise_shape=None, counters=None):
        if not train or p == 0.0 or key is None or noise_shape is not None or counters is not None:
            return dropout(x, p, key=key, train=train, noise_shape=noise_shape, counters=counters)
        return graph(p)(x, key)
    return call


class _DroppedLookup(torch.autograd.Function):
    """``gpt1f.embedding.dropped_lookup`` as one autograd node. Forward: the compiled dropout of
    ``we`` and the lookup in it. Backward: the gradient of ``we`` is ``mask * (g_we + the looked-up
    rows' gradients scattered)``: one compiled pass over ``g_we`` into a fresh buffer, then the
    rows' gradients, masked at their elements' counters, added into it. The pass writes into
    ``g_we`` itself when that is the fused LM loss's buffer (``FRESH_GRAD``), which no one else
    holds. Eagerly, autograd would fill a zero ``[n_rows, E]`` for the lookup, add the two and
    mask the sum, a buffer each."""

    @staticmethod
    def forward(ctx, we, rows, key, p: float, graph):
        # into a kept buffer (gpt1f.scratch: no page faults); the detached ``we`` and the plain
        # output keep the graph's guards free of requires_grad, which its backward use lacks
        dropped = scratch.empty("dropped_we", we.shape, dtype=we.dtype, device=we.device)
        graph(p, "into")(dropped, we.detach(), key)
        ctx.save_for_backward(rows, key)
        ctx.p, ctx.graph, ctx.we = p, graph, (we.shape, we.dtype, we.device)
        return dropped, lookup(dropped, rows)

    @staticmethod
    def backward(ctx, grad_we, grad_embedded):
        rows, key = ctx.saved_tensors
        shape, dtype, device = ctx.we
        if grad_we is None:                          # no LM head: the lookup's gradient alone
            grad = torch.zeros(shape, dtype=dtype, device=device)
        elif getattr(grad_we, FRESH_GRAD, False):    # the LM loss's own buffer: masked in place
            delattr(grad_we, FRESH_GRAD)             # it becomes we's gradient, an ordinary one
            ctx.graph(ctx.p, "inplace")(grad_we, key)
            grad = grad_we
        else:
            grad = ctx.graph(ctx.p)(grad_we, key)
        if grad_embedded is None:
            return grad, None, None, None, None
        width = shape[-1]
        counters = (rows.to(torch.int32)[:, None] * width
                    + torch.arange(width, dtype=torch.int32, device=rows.device))
        both = dropout(grad_embedded.repeat(2, 1), ctx.p, key=key, train=True, counters=counters)
        return grad.index_add_(0, rows, both), None, None, None, None


def compiled_dropped_lookup(graph: Callable) -> Callable:
    """``gpt1f.embedding.dropped_lookup`` with dropout as one :class:`_DroppedLookup` node."""
    def call(we, rows, p: float, *, key, train: bool):
        if not train or p == 0.0 or key is None:
            return dropped_lookup(we, rows, p, key=key, train=train)
        return _DroppedLookup.apply(we, rows, key, p, graph)
    return call


def compiled_regions(**compile_kwargs) -> Regions:
    graph = _dropout_graphs(**compile_kwargs)
    return Regions(compiled_block(**compile_kwargs), compiled_dropout(graph), compiled_dropped_lookup(graph))


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
def _default_regions() -> Regions:
    return compiled_regions()


def with_regions(fn: Callable, regions: Regions | None = None) -> Callable:
    """``fn`` run with the model's regions compiled (default: this process's shared ones), e.g. an
    evaluation forward: its blocks compile once more, for inference."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with using_regions(regions or _default_regions()):
            return fn(*args, **kwargs)
    return call


def regional_step(step: Callable, opt, *, inplace: bool, regions: Regions | None = None,
                  **compile_kwargs):
    """``step(params, opt_state, batch, key, opt=..., grad_and_value=...)`` (``gpt1f.train``'s
    step with its settings bound) run eagerly with compiled regions; an in-place step's update is
    ``gpt1f.fused_adam.fused_update_(opt)`` (a functional step keeps ``opt.update``, eager).
    -> ``regional(params, opt_state, batch, key)``"""
    regions = regions or (compiled_regions(**compile_kwargs) if compile_kwargs else _default_regions())
    fused_opt = opt._replace(update_=fused_update_(opt, **compile_kwargs)) if inplace else opt

    def regional(params, opt_state, batch, key):
        with using_regions(regions):
            return step(params, opt_state, batch, key, opt=fused_opt,
                        grad_and_value=autograd_grad_and_value)
    return regional

"""One training step: gradients (optionally accumulated over micro-batches) and an optimizer update.

``train_step`` is where state changes; everything it returns is tensors, so it compiles into one
graph (``make_train_step(..., compile=True)``) and a new batch, key, step or learning rate does
not recompile.
"""
from __future__ import annotations

from typing import Callable

import torch

from .checks import check_inputs, check_key, check_lm_coef, check_tokens
from .config import Config
from .loss import loss_and_parts
from .optim import AdamState, Optimizer, global_norm
from .packing import compile_packed
from .random import fold_in
from .regional import regional_step

Params = dict[str, torch.Tensor]
Batch = dict[str, torch.Tensor]


def split_batch(batch: Batch, accum: int) -> list[Batch]:
    """``accum`` equal micro-batches along the leading (example) axis.

    [B, ...] -> accum x [B / accum, ...]; ``[batch]`` itself when ``accum == 1``.
    """
    sizes = {k: v.shape[0] for k, v in batch.items()}
    n = next(iter(sizes.values()))
    if any(s != n for s in sizes.values()):
        raise ValueError(f"batch tensors disagree on the leading (example) axis: {sizes}")
    if not isinstance(accum, int) or accum < 1 or n % accum:
        raise ValueError(
            f"a batch of {n} examples does not split into accum={accum!r} equal micro-batches")
    if accum == 1:
        return [batch]
    size = n // accum
    return [{k: v[i * size:(i + 1) * size] for k, v in batch.items()} for i in range(accum)]


def accumulated_grads(params: Params, batch: Batch, key, *, cfg: Config, lm_coef: float = 0.5,
                      accum: int = 1, head: str | Callable = "multiple_choice",
                      fused_lm: bool = True, transform: Callable | None = None,
                      micro_batches: tuple[int, int] | None = None, packed: bool | None = None,
                      grad_and_value: Callable = torch.func.grad_and_value):
    """Mean gradients and loss parts over ``accum`` micro-batches: ``(grads, (loss, clf, lm))``.

    The loss is :func:`gpt1f.loss.loss_and_parts` of ``head`` with dropout (``train=True``).

    Micro-batch ``i`` gets its own dropout key ``fold_in(key, i)``, as TF's data-parallel towers
    each drew their own masks; with ``accum == 1`` the key is used as it is. The mean of the
    micro-batch means is the full-batch mean, so the result does not depend on ``accum`` except
    through dropout. With ``transform``, ``params`` are what is differentiated and the model runs
    on ``transform(params)`` (:mod:`gpt1f.lora` differentiates adapters merged into a frozen base).

    ``micro_batches=(offset, total)`` (one rank's share, :func:`gpt1f.distributed.micro_batch_share`):
    ``batch`` is the whole update, split into ``total`` micro-batches, of which this runs the
    ``accum`` from global index ``offset`` on, micro-batch ``g`` with key ``fold_in(key, g)``
    (``key`` itself when ``total == 1``). The default is ``(0, accum)``: all of them.
    """
    offset, total = (0, accum) if micro_batches is None else micro_batches
    if not 0 <= offset <= offset + accum <= total:
        raise ValueError(f"micro_batches=(offset={offset}, total={total}) has no room for "
                         f"accum={accum} micro-batches")

    def loss(p, micro, micro_key):
        model_params = p if transform is None else transform(p)
        return loss_and_parts(model_params, micro, cfg=cfg, head=head, key=micro_key, train=True,
                              lm_coef=lm_coef, fused_lm=fused_lm, packed=packed)

    grad_fn = grad_and_value(loss, has_aux=True)
    mine = split_batch(batch, total)[offset:offset + accum]
    keys = [key] if total == 1 else [fold_in(key, offset + i) for i in range(accum)]
    summed, sums = None, None
    for micro, micro_key in zip(mine, keys):
        grads, (value, (clf, lm)) = grad_fn(params, micro, micro_key)
        if summed is None:
            summed, sums = grads, (value, clf, lm)
        else:      # into the first micro-batch's gradients, fresh tensors: no 117M allocation each
            for k, g in grads.items():
                summed[k].add_(g)
            sums = tuple(s + x for s, x in zip(sums, (value, clf, lm)))
    if accum == 1:
        return summed, sums
    return {k: g.div_(accum) for k, g in summed.items()}, tuple(s / accum for s in sums)


def train_step(params: Params, opt_state: AdamState, batch: Batch, key, *, cfg: Config,
               opt: Optimizer, lm_coef: float = 0.5, accum: int = 1, inplace: bool = False,
               head: str | Callable = "multiple_choice", fused_lm: bool = True,
               transform: Callable | None = None, micro_batches: tuple[int, int] | None = None,
               reduce_grads: Callable | None = None, packed: bool | None = None,
               grad_and_value: Callable = torch.func.grad_and_value
               ) -> tuple[Params, AdamState, dict[str, torch.Tensor]]:
    """Gradients of the loss with dropout (``key``), then one ``opt`` update.

    The loss is ``gpt1f.loss_fn(..., head=head, lm_coef=lm_coef, fused_lm=fused_lm,
    train=True)``. batch: ``tokens`` [B, C, T], ``mask`` [B, C, T], ``label`` [B] for the
    default multiple-choice head; ``accum`` splits it into that many micro-batches (see
    :func:`accumulated_grads`). ``inplace=True`` uses ``opt.update_``, which writes into
    ``params`` and ``opt_state`` (and returns them) instead of allocating new tensors.
    ``fused_lm`` (the default here, since a step always differentiates) takes the LM term from
    :func:`gpt1f.fused_lm_loss.lm_loss_mean`; ``False`` differentiates the plain per-sequence
    ``lm_losses``. ``packed`` runs the model on the real tokens only (``gpt1f.loss.loss_and_parts``;
    default: on CPU).

    Data parallel: ``micro_batches=(offset, total)`` runs one rank's share of the update (see
    :func:`accumulated_grads`) and ``reduce_grads(grads, (loss, clf, lm)) -> (grads, parts)``
    (:func:`gpt1f.distributed.grad_reducer`) averages them over the ranks before the clip, so
    every rank runs the same update.

    Returns ``(params, opt_state, metrics)``; metrics are 0-dim tensors: ``loss``, ``clf_loss``,
    ``lm_loss`` (means over the batch), ``grad_norm`` (global, before clipping), ``lr`` (the
    scheduled learning rate of this update, before bias correction) and ``nonfinite`` (1 when the
    update was skipped, its gradients or the parameters it would give not being finite, else 0).
    """
    check_lm_coef(lm_coef)
    grads, parts = accumulated_grads(
        params, batch, key, cfg=cfg, lm_coef=lm_coef, accum=accum, head=head, fused_lm=fused_lm,
        transform=transform, micro_batches=micro_batches, packed=packed,
        grad_and_value=grad_and_value)
    if reduce_grads is not None:
        grads, parts = reduce_grads(grads, parts)
    loss, clf_loss, lm_loss = parts
    grad_norm = global_norm(grads)
    metrics = {"loss": loss.detach(), "clf_loss": clf_loss.detach(), "lm_loss": lm_loss.detach(),
               "grad_norm": grad_norm, "lr": opt.learning_rate(opt_state),
               "nonfinite": opt_state.skipped.clone()}
    update = opt.update_ if inplace else opt.update
    params, opt_state = update(grads, opt_state, params, grad_norm=grad_norm)
    metrics["nonfinite"] = opt_state.skipped - metrics["nonfinite"]   # 0 or 1
    return params, opt_state, metrics


def make_train_step(cfg: Config, opt: Optimizer, *, lm_coef: float = 0.5, accum: int = 1,
                    inplace: bool = False, head: str | Callable = "multiple_choice",
                    fused_lm: bool = True, transform: Callable | None = None,
                    micro_batches: tuple[int, int] | None = None, reduce_grads: Callable | None = None,
                    packed: bool | None = None, compile: bool | str = False, **compile_kwargs) -> Callable:
    """``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``: :func:`train_step`
    with its settings bound, compiled with ``fullgraph=True`` when ``compile`` (``compile_kwargs``
    go to ``torch.compile``, e.g. ``backend`` or ``mode``). The number of real tokens is a dynamic
    size of that graph (``gpt1f.packing.compile_packed``). ``compile='regional'`` compiles one
    block, reused by every layer, and the optimizer update, inside an eager step whose gradients
    come from ``torch.autograd`` (``gpt1f.regional``): a much shorter cold compile.

    With ``opt`` built with ``nonfinite='raise'``, the compiled step skips a non-finite update in
    the graph, then this wrapper checks ``metrics['nonfinite']`` on the host (one sync a step) and
    raises ``FloatingPointError``; the parameters passed in are untouched either way.
    """
    check_lm_coef(lm_coef)

    def step(params, opt_state, batch, key, opt=opt, grad_and_value=torch.func.grad_and_value):
        return train_step(params, opt_state, batch, key, cfg=cfg, opt=opt, lm_coef=lm_coef,
                          accum=accum, inplace=inplace, head=head, fused_lm=fused_lm,
                          transform=transform, micro_batches=micro_batches,
                          reduce_grads=reduce_grads, packed=packed, grad_and_value=grad_and_value)

    if not compile:
        return step
    if compile == "regional":
        graph = regional_step(step, opt, inplace=inplace, **compile_kwargs)
    elif compile is True:
        graph = compile_packed(step, fullgraph=True, **compile_kwargs)   # a new real length: no recompile
    else:
        raise ValueError(f"compile={compile!r}: use False, True (the whole step) or 'regional'")

    def compiled(params, opt_state, batch, key):
        if transform is None:                                    # values: outside the graph
            check_inputs(params, batch["tokens"], cfg=cfg, key=key)
        else:                       # params are what is trained (e.g. adapters): tokens and key
            check_tokens(batch["tokens"], cfg)
            check_key(key)
        return graph(params, opt_state, batch, key)

    if opt.config.nonfinite != "raise":
        return compiled

    def checked_step(params, opt_state, batch, key):
        params, opt_state, metrics = compiled(params, opt_state, batch, key)
        if bool(metrics["nonfinite"]):
            raise FloatingPointError(
                f"update skipped: non-finite gradients (global norm {float(metrics['grad_norm'])}) "
                "or parameters that would not be finite")
        return params, opt_state, metrics

    return checked_step

"""OpenAIAdam: ``opt.adam`` of the TF release as a pair of pure functions, in the optax style.

For every update, with ``t = state.count`` (0 on the first update)::

    g     = clip_by_global_norm(grads, max_grad_norm)     if max_grad_norm > 0 (one norm, all tensors)
    lrt   = lr * sqrt(1 - b2**(t+1)) / (1 - b1**(t+1)) * schedule((t+1) / t_total)
    m     = b1*m + (1-b1)*g ;   v = b2*v + (1-b2)*g*g
    p     = p - lrt * (m / (sqrt(v) + e) + l2*p)          if (p.ndim > 1 or vector_l2) and l2 > 0
    p     = p - lrt * (m / (sqrt(v) + e))                 otherwise
    count = t + 1

So the decay uses the old ``p`` inside the bias-corrected step, clipping is global, and the schedule
sees the count *after* the increment, like the bias correction. ``opt.py`` reads as if the schedule
saw ``t``, but nothing orders its ``t.assign(t + 1)`` against the schedule's read of ``t``: run in
TF's graph mode, each variable's read sees ``t + 1`` whenever the assign happens to run first, and
the 2018 port always uses ``t + 1``, so ``t + 1`` is the deterministic reading of both (and the first
update under ``warmup_linear`` is not wasted).
Matrices (``we``, the ``[1, nx, nf]`` weights, ``clf/w``) decay; biases and gains only with
``vector_l2``.

Mixed precision: the moments are float32 (float64 for float64 parameters) whatever the parameter
dtype. The step is computed in the moments' dtype from an upcast copy of the parameter and rounded
back to the parameter's dtype; no float32 master copy is kept, so bf16 parameters lose updates
smaller than their rounding step. Keep parameters in float32 (and autocast the forward) to train
exactly as TF did.

Non-finite gradients (a non-finite global norm: a NaN or inf anywhere, or squares that overflow)
never reach the parameters. ``nonfinite='skip'`` (the default) leaves parameters, moments and
``count`` unchanged and adds 1 to ``state.skipped``, all with tensor ops, so it compiles.
An update whose new parameters would not all be finite (a finite gradient times a huge lr) is
skipped the same way: ``update`` checks the result (one fused max-abs reduction) and keeps the old
params, moments and ``count``; ``update_``, which has written the moments by then, checks
``max|p| + max|step|`` before writing the parameters and leaves them and ``count`` unchanged
(its moments have moved: the one way it then differs from ``update``).
``nonfinite='raise'`` does the same inside compiled code; called eagerly, ``update`` and ``update_``
check on the host before touching anything and raise ``FloatingPointError`` naming the tensors.

The base learning rate lives in the state (``state.lr``, a 0-dim float32 tensor, float64 for float64
parameters) as do the step counts, so a new step or a new ``lr``
(``state._replace(lr=torch.tensor(3e-5))``) does not recompile. The step size ``lrt`` (bias
correction and schedule) is computed in float64 and rounded once to the moments' dtype.

Speed: eager ``update_`` runs ~15 ``torch._foreach_*`` passes over the parameters; compiled
(``torch.compile(opt.update_, fullgraph=True)``, or the whole step through
``gpt1f.train.make_train_step(..., compile=True)``) it is one fused pass plus the norm, and agrees
with eager to a few ulps (inductor fuses and contracts differently; eager ``update`` and
``update_`` agree bit for bit).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import torch

from . import schedules
from .checks import all_finite, tensor_norms
from .params import is_decayed

Params = dict[str, torch.Tensor]
NONFINITE_MODES = ("skip", "raise")


class AdamState(NamedTuple):
    """The optimizer's state: a plain pytree of tensors (optree flattens it; save ``_asdict()``)."""
    count: torch.Tensor      # int64 [], updates applied so far: t of the maths
    mu: Params               # first moments, keyed and shaped like params, float32 or float64
    nu: Params               # second moments, likewise
    lr: torch.Tensor         # [] float32 (float64 for float64 params), base learning rate: replace
                             # it to change lr without recompiling
    skipped: torch.Tensor    # int64 [], updates skipped for non-finite gradients


@dataclasses.dataclass(frozen=True)
class AdamConfig:
    """The static hyper-parameters of :func:`openai_adam` (``lr`` is only the initial value)."""
    lr: float
    schedule: str | Callable
    warmup: float
    t_total: float
    b1: float
    b2: float
    e: float
    l2: float
    vector_l2: bool
    max_grad_norm: float
    nonfinite: str


class Optimizer(NamedTuple):
    """``init(params) -> state``; ``update(grads, state, params) -> (params, state)``, pure;
    ``update_`` the same maths written in place into ``params`` and ``state`` (bit-identical).
    Both take an optional ``grad_norm=global_norm(grads)`` when the caller already has it;
    ``learning_rate(state)`` the next update's ``lr * schedule((count + 1) / t_total)``, float64 []."""
    init: Callable[[Params], AdamState]
    update: Callable[[Params, AdamState, Params], tuple[Params, AdamState]]
    update_: Callable[[Params, AdamState, Params], tuple[Params, AdamState]]
    learning_rate: Callable[[AdamState], torch.Tensor]
    config: AdamConfig


def moment_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/float32 parameters, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def global_norm(grads: Params) -> torch.Tensor:
    """``sqrt(sum of every element squared)`` over all tensors, in float32 (float64 if any is). -> []"""
    tensors = list(grads.values())
    dtype = functools.reduce(torch.promote_types, (moment_dtype(g.dtype) for g in tensors))
    return torch.linalg.vector_norm(torch.stack(tensor_norms(tensors, 2, dtype=dtype)))


def clip_factor(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """TF's ``clip_by_global_norm`` factor ``max_norm * min(1 / norm, 1 / max_norm)``. [] -> []"""
    return max_norm * torch.clamp(1.0 / norm, max=1.0 / max_norm)


def clip_by_global_norm(grads: Params, max_norm: float) -> tuple[Params, torch.Tensor]:
    """Every tensor scaled by one factor so that the global norm is at most ``max_norm``.

    Returns the clipped grads (each in its own dtype) and the global norm before clipping.
    """
    norm = global_norm(grads)
    factor = clip_factor(norm, max_norm)
    return {k: (g * factor).to(g.dtype) for k, g in grads.items()}, norm


class _Scalars(NamedTuple):
    """The 0-dim factors of one update, in the moments' dtype. Skipping makes it the identity."""
    ok: torch.Tensor       # bool: the global norm is finite
    scale: torch.Tensor    # the clipping factor (1 without clipping)
    b1: torch.Tensor       # b1, or 1 when skipping
    omb1: torch.Tensor     # 1 - b1, or 0 when skipping
    b2: torch.Tensor
    omb2: torch.Tensor
    lrt: torch.Tensor      # the bias-corrected, scheduled step size, or 0 when skipping

    def to(self, dtype: torch.dtype) -> "_Scalars":
        return _Scalars(self.ok, *(s.to(dtype) for s in self[1:]))


FLOAT32_MAX = torch.finfo(torch.float32).max


def _validate(cfg: AdamConfig) -> None:
    for name in ("lr", "warmup", "t_total", "e", "l2", "b1", "b2", "max_grad_norm"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            hint = " (max_grad_norm=0 turns clipping off)" if name == "max_grad_norm" else ""
            raise ValueError(f"{name} must be a finite number, got {value!r}{hint}")
    if cfg.lr > FLOAT32_MAX:
        raise ValueError(f"lr={cfg.lr!r} overflows float32 (the state's lr is float32)")
    if not cfg.t_total > 0:
        raise ValueError(f"t_total must be > 0 (the number of updates), got {cfg.t_total!r}")
    for name in ("lr", "warmup", "e", "l2"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    for name in ("b1", "b2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"{name} must lie in [0, 1), got {getattr(cfg, name)!r}")
    if cfg.nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite={cfg.nonfinite!r} is unknown; choose one of {NONFINITE_MODES}")
    schedules.get(cfg.schedule)


def check_like_params(name: str, tree: Params, params: Params) -> None:
    """Raise ValueError unless ``tree`` has exactly the keys and shapes of ``params``."""
    if tree.keys() != params.keys():
        missing, extra = sorted(params.keys() - tree.keys()), sorted(tree.keys() - params.keys())
        raise ValueError(f"{name} keys differ from params: missing {missing}, unexpected {extra}")
    for k, p in params.items():
        if tree[k].shape != p.shape:
            raise ValueError(
                f"{name}[{k!r}] has shape {tuple(tree[k].shape)}, the parameter {tuple(p.shape)}")


def _raise_if_nonfinite(grads: Params, norm: torch.Tensor) -> None:
    """Host check for ``nonfinite='raise'``: one sync, then the culprits on failure."""
    if not bool(torch.isfinite(norm)):
        bad = [k for k, g in grads.items() if not bool(torch.isfinite(g).all())]
        where = f"non-finite tensors: {bad}" if bad else "every tensor finite: the squares overflowed"
        raise FloatingPointError(f"gradient global norm is {float(norm)}; {where}")


def openai_adam(lr: float = 6.25e-5, *, schedule: str | Callable = "warmup_linear",
                warmup: float = 0.002, t_total: float, b1: float = 0.9, b2: float = 0.999,
                e: float = 1e-8, l2: float = 0.01, vector_l2: bool = False,
                max_grad_norm: float = 1.0, nonfinite: str = "skip") -> Optimizer:
    """TF's Adam with decoupled weight decay, global-norm clipping and warm-up schedules.

    ``schedule``: a name in :data:`gpt1f.schedules.SCHEDULES` or ``fn(x, warmup) -> tensor``.
    ``t_total``: the number of updates of the run (update ``t``, counted from 0, sees ``x = (t + 1) / t_total``).
    ``max_grad_norm <= 0`` turns clipping off. ``nonfinite``: ``'skip'`` or ``'raise'`` (module doc).
    """
    cfg = AdamConfig(lr, schedule, warmup, t_total, b1, b2, e, l2, vector_l2, max_grad_norm,
                     nonfinite)
    _validate(cfg)

    def init(params: Params) -> AdamState:
        if not params:
            raise ValueError("params is empty")
        device = next(iter(params.values())).device
        zeros = lambda: {k: torch.zeros_like(p, dtype=moment_dtype(p.dtype), requires_grad=False)  # noqa: E731
                         for k, p in params.items()}
        count = torch.zeros((), dtype=torch.int64, device=device)
        # A float64 0-dim input makes dynamo restart its first trace; float32 does not.
        lr_dtype = functools.reduce(torch.promote_types,
                                    (moment_dtype(p.dtype) for p in params.values()))
        return AdamState(count=count, mu=zeros(), nu=zeros(),
                         lr=torch.tensor(lr, dtype=lr_dtype, device=device),
                         skipped=torch.zeros_like(count))

    def learning_rate(state: AdamState) -> torch.Tensor:
        """The scheduled rate of the next update (before bias correction). -> float64 []"""
        return scheduled_lr(cfg, state)

    def next_counts(state: AdamState, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return state.count + ok.to(torch.int64), state.skipped + (~ok).to(torch.int64)

    def update(grads: Params, state: AdamState, params: Params, *,
               grad_norm: torch.Tensor | None = None) -> tuple[Params, AdamState]:
        by_dtype, decayed, ok = prepare_update(cfg, grads, state, params, grad_norm)
        new_p, new_m, new_v = {}, {}, {}
        for k, p in params.items():
            m, v = state.mu[k], state.nu[k]
            new_p[k], new_m[k], new_v[k] = _adam_leaf(
                p, grads[k], m, v, by_dtype[m.dtype], e=e, l2=l2 if decayed[k] else 0.0)
        count, skipped = next_counts(state, ok)
        return _keep_if_finite(new_p, AdamState(count, new_m, new_v, state.lr, skipped),
                               params, state)

    @torch.no_grad()
    def update_(grads: Params, state: AdamState, params: Params, *,
                grad_norm: torch.Tensor | None = None) -> tuple[Params, AdamState]:
        by_dtype, decayed, ok = prepare_update(cfg, grads, state, params, grad_norm)
        finite = torch.ones_like(ok)   # cleared by a group whose new params are not all finite
        for dtype, s in by_dtype.items():
            keys = [k for k, m in state.mu.items() if m.dtype == dtype]
            _adam_foreach_([params[k] for k in keys], [grads[k] for k in keys],
                           [state.mu[k] for k in keys], [state.nu[k] for k in keys],
                           [decayed[k] for k in keys], s, e=e, l2=l2, finite=finite)
        ok = ok & finite
        state.count.add_(ok.to(torch.int64))
        state.skipped.add_((~ok).to(torch.int64))
        return params, state

    return Optimizer(init, update, update_, learning_rate, cfg)


def scheduled_lr(cfg: AdamConfig, state: AdamState) -> torch.Tensor:
    """``lr * schedule((count + 1) / t_total)``: the next update's rate. -> float64 []"""
    t1 = state.count.to(torch.float64) + 1
    return state.lr.to(torch.float64) * schedules.get(cfg.schedule)(t1 / cfg.t_total, cfg.warmup)


def step_scalars(cfg: AdamConfig, state: AdamState, norm: torch.Tensor) -> _Scalars:
    """The 0-dim factors of the next update given the gradients' global norm (float64)."""
    ok = torch.isfinite(norm)
    t1 = state.count.to(torch.float64) + 1
    lrt = scheduled_lr(cfg, state) * torch.sqrt(1 - cfg.b2 ** t1) / (1 - cfg.b1 ** t1)
    one, zero = torch.ones_like(t1), torch.zeros_like(t1)
    pick = lambda value, skipped: torch.where(ok, one * value, skipped)  # noqa: E731
    scale = clip_factor(norm, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else torch.ones_like(norm)
    return _Scalars(ok, torch.where(ok, scale, 0), pick(cfg.b1, one), pick(1 - cfg.b1, zero),
                    pick(cfg.b2, one), pick(1 - cfg.b2, zero), torch.where(ok, lrt, zero))


def prepare_update(cfg: AdamConfig, grads: Params, state: AdamState, params: Params,
                   norm: torch.Tensor | None):
    """What every update variant starts with: the key and shape checks (static under compile),
    the global norm (unless given), the host check of ``nonfinite='raise'`` (eager only), the
    step's scalars in each moment dtype and which tensors decay.
    -> ``({dtype: _Scalars}, {name: decays}, ok [] bool)``"""
    check_like_params("grads", grads, params)
    check_like_params("state.mu", state.mu, params)
    check_like_params("state.nu", state.nu, params)
    norm = global_norm(grads) if norm is None else norm
    if cfg.nonfinite == "raise" and not torch.compiler.is_compiling():
        _raise_if_nonfinite(grads, norm)
    s = step_scalars(cfg, state, norm)
    by_dtype = {dt: s.to(dt) for dt in dict.fromkeys(m.dtype for m in state.mu.values())}
    decayed = {k: cfg.l2 > 0 and is_decayed(p.shape, cfg.vector_l2) for k, p in params.items()}
    return by_dtype, decayed, s.ok


def _adam_leaf(p, g, m, v, s: _Scalars, *, e: float, l2: float):
    """One tensor's step in the moments' dtype. -> new (p, m, v), each [shape of p]."""
    g = torch.where(s.ok, g.to(m.dtype) * s.scale, 0.0)   # clipped; zeros when skipping
    m = m * s.b1 + g * s.omb1
    v = v * s.b2 + s.omb2 * g * g
    u = m / (torch.sqrt(v) + e)
    w = p.to(m.dtype)
    if l2:
        u = u + w * l2
    return (w - u * s.lrt).to(p.dtype), m, v


def _keep_if_finite(new_p: Params, new_state: AdamState, params: Params, state: AdamState):
    """``(new_p, new_state)`` when every new parameter is finite, else the old params and state
    with ``skipped + 1``: an update that overflows (huge lr, huge steps) is skipped like a
    non-finite gradient, in tensor ops (one fused max-abs reduction), so it compiles."""
    ok = all_finite(new_p)

    def keep(new: Params, old: Params) -> Params:
        return {k: torch.where(ok, new[k], old[k]) for k in new}
    skipped = torch.where(ok, new_state.skipped, state.skipped + 1)
    return keep(new_p, params), AdamState(torch.where(ok, new_state.count, state.count),
                                          keep(new_state.mu, state.mu), keep(new_state.nu, state.nu),
                                          state.lr, skipped)


def _adam_foreach_(ps, gs, ms, vs, decayed, s: _Scalars, *, e: float, l2: float,
                   finite: torch.Tensor | None = None) -> None:
    """:func:`_adam_leaf`'s ops, in the same order, with ``torch._foreach_*`` and written in place.

    Two scratch lists ``a``, ``b`` the size of the group are reused throughout: on CPU a fresh
    117M-float buffer per op costs more in page faults than the op itself.
    """
    if not ps:
        return
    dtype = ms[0].dtype
    a = torch._foreach_mul([g.to(dtype) for g in gs], s.scale)     # g, clipped
    skip = ~s.ok
    for x in a:
        x.masked_fill_(skip, 0.0)                                    # zeros when skipping
    b = torch._foreach_mul(a, s.omb2)
    torch._foreach_mul_(b, a)                                        # (1 - b2) * g * g
    torch._foreach_mul_(vs, s.b2)
    torch._foreach_add_(vs, b)
    torch._foreach_mul_(a, s.omb1)                                   # g * (1 - b1)
    torch._foreach_mul_(ms, s.b1)
    torch._foreach_add_(ms, a)
    torch._foreach_copy_(b, vs)
    torch._foreach_sqrt_(b)
    torch._foreach_add_(b, e)                                        # sqrt(v) + e
    torch._foreach_copy_(a, ms)
    torch._foreach_div_(a, b)                                        # u = m / (sqrt(v) + e)
    ws = [p if p.dtype == dtype else p.to(dtype) for p in ps]
    if l2 and any(decayed):
        pick = lambda xs: [x for x, d in zip(xs, decayed) if d]      # noqa: E731
        bd = pick(b)
        torch._foreach_copy_(bd, pick(ws))
        torch._foreach_mul_(bd, l2)
        torch._foreach_add_(pick(a), bd)                             # u + l2 * p
    torch._foreach_mul_(a, s.lrt)
    if finite is not None:   # max|p| + max|step| finite => every p - step finite; else no step
        bound = (torch.stack(torch._foreach_norm(ws, math.inf)).amax()
                 + torch.stack(torch._foreach_norm(a, math.inf)).amax())
        group_ok = torch.isfinite(bound)
        finite.logical_and_(group_ok)
        for x in a:
            x.masked_fill_(~group_ok, 0.0)
    torch._foreach_sub_(ws, a)                                       # p - lrt * u
    for p, w in zip(ps, ws):
        if p.dtype != dtype:
            p.copy_(w)

"""TF's ``opt.adam`` and its schedules written out in numpy float64, to check ``gpt1f.optim`` against.

Deliberately independent of gpt1f's code. The schedule of the update that follows ``t`` earlier
updates is evaluated at ``(t + 1) / t_total``: the original's graph reads its step variable for the
schedule with no order against the increment, and run in TF's graph mode (TF 2.21, v1 behaviour)
that read saw the incremented count whenever the increment ran first; the 2018 PyTorch port always
uses the incremented count. ``(t + 1)`` is the deterministic reading of both.
"""
from __future__ import annotations

import numpy as np


def schedule(name: str, x: float, warmup: float) -> float:
    s = 1.0 if x <= warmup else 0.0
    if name == "warmup_cosine":
        return s * (x / warmup) + (1 - s) * (0.5 * (1 + np.cos(np.pi * x)))
    if name == "warmup_constant":
        return s * (x / warmup) + (1 - s) * 1
    if name == "warmup_linear":
        return (s * (x / warmup) + (1 - s)) * (1 - x)
    raise ValueError(name)


def init(params: dict[str, np.ndarray]) -> dict:
    return {"t": 0, "m": {k: np.zeros_like(v) for k, v in params.items()},
            "v": {k: np.zeros_like(v) for k, v in params.items()}}


def step(params, grads, state, *, lr, schedule_name, warmup, t_total, b1, b2, e, l2, vector_l2,
         max_grad_norm):
    """One update: ``(new params, new state)``; the inputs are not modified."""
    t = state["t"]
    if max_grad_norm > 0:
        norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
        grads = {k: g * max_grad_norm / max(norm, max_grad_norm) for k, g in grads.items()}
    lrt = (lr * schedule(schedule_name, (t + 1) / t_total, warmup)
           * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1)))
    p, m, v = {}, {}, {}
    for k, g in grads.items():
        m[k] = b1 * state["m"][k] + (1 - b1) * g
        v[k] = b2 * state["v"][k] + (1 - b2) * g * g
        if (params[k].ndim > 1 or vector_l2) and l2 > 0:
            p[k] = params[k] - lrt * (m[k] / (np.sqrt(v[k]) + e) + l2 * params[k])
        else:
            p[k] = params[k] - lrt * (m[k] / (np.sqrt(v[k]) + e))
    return p, {"t": t + 1, "m": m, "v": v}


def adam(params, grad_steps, *, schedule, **hp):
    """``len(grad_steps)`` updates from fresh moments: ``(params, m, v)`` after the last."""
    p, state = dict(params), init(params)
    for grads in grad_steps:
        p, state = step(p, grads, state, schedule_name=schedule, **hp)
    return p, state["m"], state["v"]

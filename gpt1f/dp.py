"""DP-SGD fine-tuning: per-example clipping, Gaussian noise from explicit keys, privacy accounting.

One private update (Abadi et al. 2016), for a batch drawn by Poisson sampling (every example
joins independently with probability ``sample_rate``, the sampling the RDP accountant assumes)::

    g_i   = per-example gradient of example i (its own dropout key)
    g_i  *= min(1, clip / ||g_i||)            one global norm over the whole dict, per example
    g     = (sum_i g_i + noise * clip * N(0, I)) / expected_batch_size
    params, opt_state = opt.update(g, ...)    the optimizer's own clipping must be off

The noise is drawn with :func:`gpt1f.random.normal`: the same key gives the same noise, in eager,
under ``vmap`` and compiled. Dividing by the expected batch size (``sample_rate * n``), not by
the drawn one, keeps the sensitivity of the mean fixed, as the accountant's analysis needs.

The privacy accounting is Opacus's RDP accountant (``pip install opacus``, the ``dp`` extra): it
is maintained beside the PyTorch DP-SGD most people use, and it can be used on its own, without
Opacus's module wrappers. It is imported only when an epsilon is asked for.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .optim import AdamState, Optimizer
from .per_example import batch_size, per_example_grads_and_losses
from .random import fold_in, normal, uniform

Params = dict[str, torch.Tensor]
Batch = dict[str, torch.Tensor]
PER_EXAMPLE_TAG, NOISE_TAG = 0, 1       # sub-keys of a step's key


class DPConfig(NamedTuple):
    clip: float                 # C: every example's gradient is scaled to global norm <= C
    noise: float                # sigma: the noise's standard deviation is sigma * C
    expected_batch_size: float  # sample_rate * n: the divisor of the noisy sum

    def check(self) -> "DPConfig":
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise!r}")
        if not (math.isfinite(self.expected_batch_size) and self.expected_batch_size > 0):
            raise ValueError(f"expected_batch_size must be > 0, got {self.expected_batch_size!r}")
        return self


def per_example_norms(grads: Params) -> torch.Tensor:
    """Global L2 norm of each example's gradient over every tensor.  {k: [B, ...]} -> [B]"""
    squares = [g.flatten(1).to(torch.promote_types(g.dtype, torch.float32)).square().sum(1)
               for g in grads.values()]
    return torch.stack(squares).sum(0).sqrt()


def clip_per_example(grads: Params, clip: float) -> tuple[Params, torch.Tensor]:
    """Each example's gradient scaled by ``min(1, clip / norm)``; returns it and the norms [B]."""
    norms = per_example_norms(grads)
    factor = torch.clamp(clip / (norms + 1e-12), max=1.0)                       # [B]
    clipped = {k: g * factor.view(-1, *([1] * (g.ndim - 1))).to(g.dtype) for k, g in grads.items()}
    return clipped, norms


def gaussian_noise(like: Params, key: torch.Tensor, std: float) -> Params:
    """Independent N(0, std^2) noise shaped like each tensor of ``like``; tensor j from
    ``fold_in(key, j)`` in the dict's order."""
    return {k: normal(fold_in(key, j), p.shape, p.dtype, p.device) * std
            for j, (k, p) in enumerate(like.items())}


def private_grads(per_example: Params, key: torch.Tensor, dp: DPConfig) -> tuple[Params, torch.Tensor]:
    """The noisy clipped mean of per-example gradients ``{k: [B, ...]} -> {k: [...]}``, and the
    examples' norms before clipping [B]."""
    clipped, norms = clip_per_example(per_example, dp.clip)
    summed = {k: g.sum(0) for k, g in clipped.items()}
    noise = gaussian_noise(summed, key, dp.noise * dp.clip)
    return {k: (summed[k] + noise[k]) / dp.expected_batch_size for k in summed}, norms


def dp_train_step(params: Params, opt_state: AdamState, batch: Batch, key: torch.Tensor, *,
                  loss: Callable, opt: Optimizer, dp: DPConfig, chunk_size: int | None = None
                  ) -> tuple[Params, AdamState, dict[str, torch.Tensor]]:
    """One DP-SGD update of ``opt`` on a (Poisson-sampled) ``batch``; ``loss(params, batch, key=)``
    as for :func:`gpt1f.per_example.per_example_grads`. A batch with no examples is allowed (the
    update is then noise alone). Metrics: ``loss`` (the mean of the examples' own losses, with
    their own dropout keys, as differentiated; 0 if none),
    ``grad_norm`` (of the noisy mean), ``clipped`` (fraction of examples clipped), ``n``."""
    dp.check()
    if opt.config.max_grad_norm > 0:
        raise ValueError("dp_train_step clips per example: build the optimizer with "
                         f"max_grad_norm=-1 (it has {opt.config.max_grad_norm})")
    n = batch_size(batch)
    example_key, noise_key = fold_in(key, PER_EXAMPLE_TAG), fold_in(key, NOISE_TAG)
    if n:
        per_example, losses = per_example_grads_and_losses(loss, params, batch, example_key,
                                                           chunk_size=chunk_size)
        mean_loss = losses.mean()
    else:
        per_example = {k: p.new_zeros((0, *p.shape)) for k, p in params.items()}
        mean_loss = next(iter(params.values())).new_zeros(())
    grads, norms = private_grads(per_example, noise_key, dp)
    params, opt_state = opt.update(grads, opt_state, params)
    metrics = {"loss": mean_loss.detach(), "n": torch.tensor(n),
               "clipped": (norms > dp.clip).float().mean() if n else torch.tensor(0.0),
               "grad_norm": torch.linalg.vector_norm(torch.stack(
                   [torch.linalg.vector_norm(g) for g in grads.values()]))}
    return params, opt_state, metrics


def poisson_sample(key: torch.Tensor, n: int, sample_rate: float) -> torch.Tensor:
    """Indices of the examples drawn, each of ``n`` independently with probability ``sample_rate``
    (int64 ``[drawn]``, ascending). The draw is a pure function of ``key``."""
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}")
    return torch.nonzero(uniform(key, (n,), torch.float64) < sample_rate).flatten()


def epsilon(*, noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """The epsilon spent by ``steps`` Poisson-sampled Gaussian updates, by Opacus's RDP accountant."""
    accountant = _rdp_accountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta=delta)) if steps else 0.0


def noise_for_epsilon(*, target_epsilon: float, delta: float, sample_rate: float,
                      steps: int) -> float:
    """The noise multiplier sigma that spends ``target_epsilon`` in ``steps`` updates (Opacus)."""
    _rdp_accountant()
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=steps, accountant="rdp"))


def _rdp_accountant():
    try:
        from opacus.accountants import RDPAccountant
    except ImportError as e:
        raise ImportError("privacy accounting needs Opacus: pip install 'gpt1f[dp]' "
                          "(or pip install opacus)") from e
    return RDPAccountant()

"""The optimizer update alone: gpt1f's OpenAI Adam against ``torch.optim.AdamW(foreach=True)``.

Both update the full 117M-parameter GPT-1 pytree (``param_shapes(Config.gpt1())``, float32, random
values) with the same gradients. AdamW gets its own copy of the parameters and gradients, with the
same values, so that neither side's writes touch the other's tensors. Peers, run interleaved
(A B C D A B C D ...) after warm-up:

- ``adamw``: ``AdamW(foreach=True).step()``, the issue's baseline; it does not clip.
- ``adamw_clip``: ``clip_grad_norm_(1.0, foreach=True)`` then the step: the same work as ours,
  which clips by the global norm (and guards against non-finite gradients) in every update.
- ``gpt1f_update_``: ``opt.update_`` in eager mode (``torch._foreach_*``, in place).
- ``gpt1f_update_compiled``: ``torch.compile(opt.update_, fullgraph=True)``; compile time is
  reported apart.
- ``gpt1f_fused_update_``: ``gpt1f.fused_adam.fused_update_(opt)``, two compiled passes a tensor
  (one small graph each for every size), the update of the regional train step, CPU's default.
  This is the headline number.
- On CUDA also ``gpt1f_update_combo`` (inductor's ``combo_kernels``: the per-tensor kernels fused
  horizontally, fewer launches) and ``gpt1f_update_cudagraphs`` (``mode='reduce-overhead'``, every
  tensor marked a static address so the in-place update can be captured as a CUDA graph; this
  needs the same gradient buffers every step, as a whole compiled train step has).

    python -m benchmarks.bench_optim [--quick] [--device cuda] [--no-compile]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from benchmarks.common import interleaved, machine_info, ratio_summary, summary, timed
from gpt1f.config import Config
from gpt1f.optim import openai_adam
from gpt1f.params import param_shapes

TARGET_TIME_RATIO = 1.1      # the issue: ours <= 1.1 x AdamW's step time on CPU
HP = dict(lr=6.25e-5, b1=0.9, b2=0.999, e=1e-8, l2=0.01, max_grad_norm=1.0)


def make_tensors(cfg: Config, device, seed: int = 0):
    """Random float32 params (N(0, 0.02)) and gradients (N(0, 1e-3), global norm above 1)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = param_shapes(cfg)
    params = {k: (torch.randn(s, generator=gen) * 0.02).to(device) for k, s in shapes.items()}
    grads = {k: (torch.randn(s, generator=gen) * 1e-3).to(device) for k, s in shapes.items()}
    return params, grads


def adamw_peers(params, grads):
    """AdamW on its own copies; ``clip`` mutates its gradient copies, as training would."""
    leaves = [p.clone() for p in params.values()]
    for p, g in zip(leaves, grads.values()):
        p.grad = g.clone()
    opt = torch.optim.AdamW(leaves, lr=HP["lr"], betas=(HP["b1"], HP["b2"]), eps=HP["e"],
                            weight_decay=HP["l2"], foreach=True)

    def step():
        opt.step()

    def clip_and_step():
        torch.nn.utils.clip_grad_norm_(leaves, HP["max_grad_norm"], foreach=True)
        opt.step()
    return step, clip_and_step


def compiled_update(opt, grads, params, device, *, static: bool = False, **compile_kwargs):
    """``(step, compile_seconds)`` for ``torch.compile(opt.update_)`` on its own copy of the
    parameters and state; the first call (timed apart) compiles."""
    params = {k: v.clone() for k, v in params.items()}
    state = opt.init(params)
    if static:
        grads = {k: g.clone() for k, g in grads.items()}
        for t in (*params.values(), *grads.values(), *state.mu.values(), *state.nu.values(),
                  state.count, state.lr, state.skipped):
            torch._dynamo.mark_static_address(t)
    update_ = torch.compile(opt.update_, fullgraph=True, **compile_kwargs)
    step = lambda: update_(grads, state, params)  # noqa: E731
    return step, timed(step, device)


def fused_update(opt, grads, params, device):
    """``(step, compile_seconds)`` for ``gpt1f.fused_adam.fused_update_(opt)`` on its own copy of
    the parameters and state; the first call (timed apart) compiles its two graphs."""
    from gpt1f.fused_adam import fused_update_
    params = {k: v.clone() for k, v in params.items()}
    state = opt.init(params)
    update_ = fused_update_(opt)
    step = lambda: update_(grads, state, params)  # noqa: E731
    return step, timed(step, device)


def run(quick: bool = False, device: str = "cpu", *, compile: bool = True,
        warmup: int | None = None, steps: int | None = None) -> dict:
    """Per-step seconds of every peer, medians, and ours / AdamW time ratios."""
    cfg = Config.tiny() if quick else Config.gpt1()
    warmup = (3 if quick else 2) if warmup is None else warmup
    steps = (20 if quick else 10) if steps is None else steps
    params, grads = make_tensors(cfg, device)
    adamw, adamw_clip = adamw_peers(params, grads)
    torch._dynamo.reset()

    opt = openai_adam(t_total=10 ** 6, schedule="warmup_constant", warmup=0.0, **HP)
    state = opt.init(params)
    peers = {"adamw": adamw, "adamw_clip": adamw_clip,
             "gpt1f_update_": lambda: opt.update_(grads, state, params)}
    compile_s = {}
    if compile:
        peers["gpt1f_fused_update_"], compile_s["gpt1f_fused_update_"] = fused_update(opt, grads, params, device)
        variants = {"gpt1f_update_compiled": {}}
        if torch.device(device).type == "cuda":
            variants["gpt1f_update_combo"] = {"options": {"combo_kernels": True}}
            variants["gpt1f_update_cudagraphs"] = {"mode": "reduce-overhead", "static": True}
        for name, kwargs in variants.items():
            peers[name], compile_s[name] = compiled_update(opt, grads, params, device, **kwargs)

    times = interleaved(peers, warmup=warmup, steps=steps, device=device)
    median = {name: statistics.median(t) for name, t in times.items()}
    ours = "gpt1f_fused_update_" if compile else "gpt1f_update_"   # the regional step's update
    time_ratio = median[ours] / median["adamw"]
    return {
        "benchmark": "optim", "quick": quick, "device": str(device),
        "config": "tiny" if quick else "gpt1 (117M)",
        "n_params": sum(p.numel() for p in params.values()), "n_tensors": len(params),
        "dtype": "float32", "hyper_parameters": HP, "warmup": warmup, "steps": steps,
        "peers": {name: summary(t) for name, t in times.items()},
        "compile_s": compile_s or None,
        "gpt1f_variant": ours, "gpt1f_median_s": median[ours],
        "adamw_median_s": median["adamw"], "adamw_clip_median_s": median["adamw_clip"],
        "time_ratio": time_ratio,                                  # ours / AdamW, target <= 1.1
        "time_ratio_vs_adamw_clip": median[ours] / median["adamw_clip"],
        "eager_time_ratio": median["gpt1f_update_"] / median["adamw"],
        "time_ratios": {name: m / median["adamw"] for name, m in median.items()},
        "speedup": ratio_summary(times["adamw"], times[ours]),     # AdamW / ours, per pair
        "target_time_ratio": TARGET_TIME_RATIO, "meets_target": time_ratio <= TARGET_TIME_RATIO,
        "machine": machine_info(device),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Config.tiny() instead of 117M")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--steps", type=int)
    args = parser.parse_args(argv)
    result = run(args.quick, args.device, compile=not args.no_compile, steps=args.steps)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])

"""The research transforms' costs: N seeds in one vmapped step against N single steps, and LoRA
against full fine-tuning.

Each side runs in its own interpreter (:class:`benchmarks.common.StepProcess`); the two sides of a
comparison are stepped in turn after one untimed first step, one comparison at a time. The peak RSS
of each side is read in its fresh process right after that first step. The model is the 117M one
(random weights: speed does not depend on them) on the ROCStories batch shape, 8 stories x 2
endings x 77 tokens, fp32, eager (the CPU default of ``train_rocstories.py``), ``--quick`` a tiny
config.

- ``ensemble``: one ``gpt1f.ensemble.make_ensemble_step`` update of N runs; ``single``: N
  ``gpt1f.train_step`` updates one after the other (the same work).
- ``lora``: one ``gpt1f.lora.make_train_step`` update (rank 8 on attn/c_attn and attn/c_proj, the
  head in full); ``full``: one ``gpt1f.train_step`` update of every parameter.

    python -m benchmarks.bench_research [--quick] [--seeds 2] [--steps 3] > result.json
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import gpt1f
from benchmarks.common import (StepProcess, interleaved, machine_info, peak_rss_bytes,
                               ratio_summary, reset_peak_rss, serve_steps, summary)
from gpt1f import ensemble, lora

SIDES = ("ensemble", "single", "lora", "full")
PAIRS = (("ensemble", "single"), ("lora", "full"))       # compared within a pair, in turn


def config(quick: bool) -> gpt1f.Config:
    return gpt1f.Config.tiny(n_ctx=77) if quick else gpt1f.Config.gpt1(n_ctx=77)


def story_batch(cfg: gpt1f.Config, seed: int, n: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.n_vocab, (n, 2, 77), generator=g)
    lengths = torch.randint(40, 78, (n, 2), generator=g)
    mask = (torch.arange(77) < lengths[..., None]).float()
    tokens.scatter_(-1, (lengths - 1)[..., None], cfg.clf_token)
    return {"tokens": tokens, "mask": mask, "label": torch.randint(0, 2, (n,), generator=g)}


def state_bytes(tree) -> int:
    import optree

    return sum(t.numel() * t.element_size() for t in optree.tree_leaves(tree))


def side_step(side: str, cfg: gpt1f.Config, n_seeds: int):
    """``(step(), info)`` for one side; ``step`` makes one timed unit of work."""
    opt = gpt1f.openai_adam(6.25e-5, t_total=1000)
    key = gpt1f.random.key(0)
    if side == "ensemble":
        params = ensemble.stack([gpt1f.init_params(cfg, seed=s) for s in range(n_seeds)])
        state = ensemble.stack([opt.init(gpt1f.init_params(cfg, seed=s)) for s in range(n_seeds)])
        batch = ensemble.stack([story_batch(cfg, s) for s in range(n_seeds)])
        keys, fn = gpt1f.random.split(key, n_seeds), ensemble.make_ensemble_step(cfg, opt)
        box = [params, state]

        def step():
            box[0], box[1], _ = fn(box[0], box[1], batch, keys)
        return step, {"trainable": gpt1f.count_params(params), "opt_state_bytes": state_bytes(state)}
    if side == "lora":
        base = gpt1f.init_params(cfg, seed=0)
        adapters = lora.init(base, rank=8, key=key)
        state, fn, batch = opt.init(adapters), lora.make_train_step(cfg, opt, base), story_batch(cfg, 0)
        box = [adapters, state]

        def step():
            box[0], box[1], _ = fn(box[0], box[1], batch, key)
        return step, {"trainable": lora.count(adapters), "opt_state_bytes": state_bytes(state)}
    runs = n_seeds if side == "single" else 1
    params = [gpt1f.init_params(cfg, seed=s) for s in range(runs)]
    states = [opt.init(p) for p in params]
    batches = [story_batch(cfg, s) for s in range(runs)]
    fn = gpt1f.make_train_step(cfg, opt)

    def step():
        for i in range(runs):
            params[i], states[i], _ = fn(params[i], states[i], batches[i], key)
    return step, {"trainable": gpt1f.count_params(params[0]), "opt_state_bytes": state_bytes(states)}


def child(side: str, quick: bool, n_seeds: int, threads: int) -> None:
    torch.set_num_threads(threads)
    step, info = side_step(side, config(quick), n_seeds)
    reset_peak_rss()
    step()                                                   # untimed first step
    info["peak_rss_bytes"] = peak_rss_bytes()
    serve_steps(step, torch.device("cpu"), info)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.quick, args.seeds, args.threads)
        return {}
    flags = [*(["--quick"] if args.quick else []), "--seeds", str(args.seeds),
             "--threads", str(args.threads)]
    times, infos = {}, {}
    for pair in PAIRS:          # one pair at a time: four 117M sides at once do not fit in 24 GiB
        sides = {}
        try:
            for s in pair:
                sides[s] = StepProcess("benchmarks.bench_research", [*flags, "--child", s])
            times.update(interleaved(sides, warmup=0, steps=args.steps, device=torch.device("cpu")))
        finally:
            infos.update({s: proc.info for s, proc in sides.items()})
            for proc in sides.values():
                proc.close()
    cfg = config(args.quick)
    result = {
        "benchmark": "research", "config": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
                                           "batch": "8 x 2 x 77", "dtype": "fp32", "mode": "eager"},
        "seeds": args.seeds, "steps": args.steps, "machine": machine_info(torch.device("cpu")),
        "sides": {s: {**infos[s], **summary(times[s])} for s in SIDES},
        "ensemble_speedup_over_single": ratio_summary(times["single"], times["ensemble"]),
        "ensemble_rss_ratio": infos["ensemble"]["peak_rss_bytes"] / infos["single"]["peak_rss_bytes"],
        "lora_speedup_over_full": ratio_summary(times["full"], times["lora"]),
        "lora_trainable_fraction": infos["lora"]["trainable"] / infos["full"]["trainable"],
        "lora_opt_state_ratio": infos["lora"]["opt_state_bytes"] / infos["full"]["opt_state_bytes"],
        "lora_rss_ratio": infos["lora"]["peak_rss_bytes"] / infos["full"]["peak_rss_bytes"],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

"""Data-parallel communication: one all-reduce of the gradient dict against the train step.

Two ranks (gloo on CPU, one thread each; NCCL on CUDA when there are two GPUs) on this machine,
started with ``torch.multiprocessing`` on 127.0.0.1. Each rank holds the full gradient dict of the
config (``param_shapes(Config.gpt1())``: 117M float32 values, 148 tensors) and times
``gpt1f.distributed.all_reduce_mean`` of it in three layouts: one flat bucket, buckets of 100 MiB
and of 25 MiB (the default), and one call per tensor. Against that, the train step of one
micro-batch (``--n_batch`` stories of ``--n_ctx`` tokens, eager, dropout on):

- ``alone``: rank 0 steps while rank 1 waits: one process with the machine to itself;
- ``concurrent``: both ranks step at once without reducing: the compute of a data-parallel step;
- ``data_parallel``: both ranks step at once with the bucketed all-reduce (the real thing);
- ``data_parallel_compiled`` (``--compile``): the same step under ``torch.compile(fullgraph=True)``,
  which traces the c10d all-reduce into the graph as functional collectives (compile time apart),
  and ``compiled_max_abs_diff``, its parameters against the eager step's after the same updates.

``comm_fraction`` is the default layout's all-reduce over (concurrent step + all-reduce);
``measured_comm_fraction`` is (data_parallel - concurrent) / data_parallel. ``scaling_efficiency``
(alone / data_parallel: each rank does one process's work) is GPU scaling only with a GPU per
rank; on CPU the two ranks share the cores, and with one GPU scaling is not measurable.

    python -m benchmarks.bench_distributed [--quick] [--out FILE]
    python -m benchmarks.bench_distributed --out benchmarks/results/<machine>_cpu_<date>_distributed.json
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.multiprocessing as mp

import gpt1f
from benchmarks.common import machine_info, machine_kind, summary, synchronize
from gpt1f import distributed
from gpt1f.params import param_shapes
from gpt1f.train import make_train_step

LAYOUTS = {"one_bucket": dict(bucket_bytes=2 ** 62), "buckets_100MiB": dict(bucket_bytes=100 * 2 ** 20),
           "buckets_25MiB": dict(bucket_bytes=distributed.BUCKET_BYTES), "per_tensor": dict(per_tensor=True)}
DEFAULT_LAYOUT = "buckets_25MiB"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def story_batch(cfg: gpt1f.Config, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` multiple-choice examples [n, 2, n_ctx], every row full length, _classify_ last."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.n_vocab, (n, 2, cfg.n_ctx), generator=gen)
    tokens[..., 0], tokens[..., -1] = cfg.n_vocab, cfg.clf_token
    return {"tokens": tokens, "mask": torch.ones(n, 2, cfg.n_ctx), "label": torch.randint(0, 2, (n,), generator=gen)}


def timed_collectively(fn, world, device, *, warmup: int, steps: int, everyone: bool = True) -> list[float]:
    """Seconds per call of ``fn`` on this rank; the ranks start each call together (a barrier).
    ``everyone=False``: rank 0 alone calls ``fn``, the others wait."""
    times = []
    for i in range(warmup + steps):
        distributed.barrier(world)
        synchronize(device)
        start = time.perf_counter()
        if everyone or world.is_main:
            fn()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    distributed.barrier(world)
    return times


def time_reductions(cfg: gpt1f.Config, world, device, steps: int) -> dict[str, list[float]]:
    """Seconds per ``all_reduce_mean`` of a random gradient dict of ``cfg``, in every layout."""
    gen = torch.Generator().manual_seed(world.rank)
    tensors = [(torch.randn(s, generator=gen) * 1e-3).to(device) for s in param_shapes(cfg).values()]
    return {name: timed_collectively(lambda kw=kw: distributed.all_reduce_mean(tensors, world, **kw),
                                     world, device, warmup=1, steps=steps)
            for name, kw in LAYOUTS.items()}


def compiled_step(cfg, world, device, full, key, steps: int) -> dict:
    """The data-parallel step compiled (first call timed apart) against the same step eager."""
    start = {k: v.to(device) for k, v in gpt1f.init_params(cfg, seed=0).items()}
    opt = gpt1f.optim.openai_adam(6.25e-5, t_total=1000, max_grad_norm=1.0)
    share = distributed.micro_batch_share(world.size, world)
    kwargs = dict(lm_coef=0.5, accum=share.count, micro_batches=(share.offset, share.total),
                  reduce_grads=distributed.grad_reducer(world))
    sides = {}
    for name, compile in (("eager", False), ("compiled", True)):
        fn = make_train_step(cfg, opt, compile=compile, **kwargs)
        state = [dict(start), opt.init(start)]

        def once():
            state[0], state[1], _ = fn(state[0], state[1], full, key)
        first = timed_collectively(once, world, device, warmup=0, steps=1)[0]
        times = timed_collectively(once, world, device, warmup=0, steps=steps)
        sides[name] = (first, times, state[0])
    diff = max(float((sides["compiled"][2][k] - sides["eager"][2][k]).abs().max()) for k in start)
    return {"compile_s": sides["compiled"][0] - statistics.median(sides["compiled"][1]),
            "compiled_step_s": sides["compiled"][1], "eager_step_s": sides["eager"][1],
            "compiled_max_abs_diff": diff}


def rank_main(rank: int, port: int, args, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    world = distributed.init_world(args.device, timeout_s=600)
    device = world.device
    cfg = gpt1f.Config.tiny(n_ctx=args.n_ctx) if args.quick else gpt1f.Config.gpt1(n_ctx=args.n_ctx)
    reduce_s = time_reductions(cfg, world, device, args.steps)
    params = {k: v.to(device) for k, v in gpt1f.init_params(cfg, seed=0).items()}
    opt = gpt1f.optim.openai_adam(6.25e-5, t_total=1000, max_grad_norm=1.0)
    state = opt.init(params)
    batch = {k: v.to(device) for k, v in story_batch(cfg, args.n_batch, seed=rank).items()}
    local = make_train_step(cfg, opt, lm_coef=0.5, inplace=True)
    share = distributed.micro_batch_share(world.size, world)
    full = {k: torch.cat([v] * world.size) for k, v in batch.items()}     # the update: one micro-batch a rank
    parallel = make_train_step(cfg, opt, lm_coef=0.5, inplace=True, accum=share.count,
                               micro_batches=(share.offset, share.total),
                               reduce_grads=distributed.grad_reducer(world))
    key = gpt1f.random.key(0, device=device)

    def step(fn, b):
        nonlocal params, state
        params, state, _ = fn(params, state, b, key)

    step_s = {"alone": timed_collectively(lambda: step(local, batch), world, device, warmup=1,
                                          steps=args.steps, everyone=False),
              "concurrent": timed_collectively(lambda: step(local, batch), world, device, warmup=1,
                                               steps=args.steps),
              "data_parallel": timed_collectively(lambda: step(parallel, full), world, device, warmup=1,
                                                  steps=args.steps)}
    result = {"rank": rank, "reduce_s": reduce_s, "step_s": step_s}
    if args.compile:
        result.update(compiled_step(cfg, world, device, full, key, args.steps))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    distributed.close_world(world)


def report(args, ranks: list[dict], n_values: int, n_tensors: int, wall_s: float) -> dict:
    """Medians on rank 0 (the ranks wait for each other, so they agree to the barrier's noise)."""
    r0 = ranks[0]
    reduce = {name: summary(times) for name, times in r0["reduce_s"].items()}
    steps = {name: summary(times) for name, times in r0["step_s"].items()}
    if args.compile:
        steps["data_parallel_compiled"] = summary(r0["compiled_step_s"])
        steps["data_parallel_eager_beside_compiled"] = summary(r0["eager_step_s"])
    comm = reduce[DEFAULT_LAYOUT]["median_s"]
    concurrent, parallel = steps["concurrent"]["median_s"], steps["data_parallel"]["median_s"]
    gpus = torch.cuda.device_count() if torch.device(args.device).type == "cuda" else 0
    scaling = (steps["alone"]["median_s"] / parallel if gpus >= 2 else
               "not measurable: one GPU" if gpus == 1 else "not GPU scaling: the ranks share the CPU cores")
    return {"benchmark": "distributed", "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick,
            "machine": machine_info(args.device), "machine_kind": machine_kind(args.device),
            "world_size": 2, "backend": "nccl" if gpus else "gloo", "threads_per_rank": args.threads,
            "config": "tiny" if args.quick else "gpt1 (117M)", "n_ctx": args.n_ctx, "n_batch": args.n_batch,
            "grad_values": n_values, "grad_tensors": n_tensors, "grad_mib": n_values * 4 / 2 ** 20,
            "steps": args.steps, "all_reduce": reduce, "train_step": steps,
            "comm_fraction": comm / (concurrent + comm),
            "measured_comm_fraction": (parallel - concurrent) / parallel,
            "alone_over_data_parallel": steps["alone"]["median_s"] / parallel,
            "scaling_efficiency": scaling, "wall_s": wall_s, "ranks": ranks,
            **({"compile_s": r0["compile_s"], "compiled_max_abs_diff": r0["compiled_max_abs_diff"]}
               if args.compile else {})}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny config: checks the benchmark runs")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU a rank)")
    p.add_argument("--steps", type=int, default=None, help="timed calls of each kind (default 5; quick 2)")
    p.add_argument("--n_batch", type=int, default=1, help="stories per rank's micro-batch")
    p.add_argument("--n_ctx", type=int, default=None, help="tokens per row (default 77, ROCStories')")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--compile", action="store_true", help="also time the compiled data-parallel step")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    args = p.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 5)
    args.n_ctx = args.n_ctx or (16 if args.quick else 77)
    if torch.device(args.device).type == "cuda" and torch.cuda.device_count() < 2:
        raise SystemExit("--device cuda needs two GPUs (one a rank); with one, scaling is not measurable")
    cfg = gpt1f.Config.tiny(n_ctx=args.n_ctx) if args.quick else gpt1f.Config.gpt1(n_ctx=args.n_ctx)
    shapes = param_shapes(cfg)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(rank_main, args=(free_port(), args, out), nprocs=2, join=True)
        ranks = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]
    n_values = sum(int(torch.Size(s).numel()) for s in shapes.values())
    result = report(args, ranks, n_values, len(shapes), time.perf_counter() - start)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "ranks"}))
    return result


if __name__ == "__main__":
    main()

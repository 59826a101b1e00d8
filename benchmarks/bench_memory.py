"""Peak resident memory of the ROCStories training step, each side in a fresh interpreter.

The parent (``run``) starts one child per side; a child builds the model, the optimizer and the
batch, runs a first step (compiling, for gpt1f in a compiled mode), resets the kernel's peak-RSS
counter, runs more steps and reports the peak over those: the memory a training run holds, not
what the one-off compilation needed. The peak over the whole process, first step included, is
reported beside it. Everything the side imports (torch, transformers) is counted, as a user pays
for it.

Each side runs twice: with glibc's default ``malloc`` (which keeps what a step frees in its heap)
and after ``gpt1f.memory.limit_heap_retention()`` (freed blocks of 1 MiB and more go back to the
system). ``ratio`` compares the defaults, ``ratio_limited`` gpt1f with the limit against
transformers as it is, ``ratio_both_limited`` both with the limit.

    python -m benchmarks.bench_memory [--quick] [--no-compile]       # both sides, a table
    python -m benchmarks.bench_memory --whole-step                  # gpt1f's step as one graph
    python -m benchmarks.bench_memory --side gpt1f [--quick] ...    # one child: a JSON line
    python -m benchmarks.bench_memory --no-compile --no-packed      # eager, the padded path
    python -m benchmarks.bench_memory --regional                    # regional compilation

gpt1f's step runs in the mode ``train_rocstories.py`` uses here by default
(``gpt1f.finetune.flags.auto_compile``: regional for the 117M model on CPU) unless a flag says
otherwise.

gpt1f runs padding-free by default on CPU (``gpt1f.packing``): its activations follow the real
tokens.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from . import common

STEADY_STEPS = 2


def train_compile(cfg, *, compile: bool, regional: bool, whole_step: bool) -> bool | str:
    """gpt1f's ``make_train_step(compile=...)``: eager without ``compile``, else as forced, else
    ``train_rocstories.py``'s default on CPU."""
    from gpt1f.finetune.flags import auto_compile
    if not compile:
        return False
    return "regional" if regional else True if whole_step else auto_compile("cpu", cfg)


def measure_side(side: str, *, quick: bool, compile: bool, threads: int, limit_heap: bool = False,
                 packed: bool | None = None, regional: bool = False, whole_step: bool = False) -> dict:
    """Runs in the child: build one side, step, reset the peak, step again, report."""
    torch.set_num_threads(threads)
    if limit_heap:
        from gpt1f.memory import limit_heap_retention
        if not limit_heap_retention():
            raise RuntimeError("limit_heap_retention needs glibc")
    from . import bench_train as bt
    import gpt1f

    rss_start = common.current_rss_bytes()
    cfg = bt.bench_config(quick)
    params = gpt1f.init_params(cfg, seed=0)
    batch = bt.rocstories_batch(cfg)
    mode = train_compile(cfg, compile=compile, regional=regional, whole_step=whole_step)
    if side == "gpt1f":
        step, first_s = bt.gpt1f_train_step(cfg, params, bt.gpt1f_batch(batch), compile=mode,
                                            packed=packed)
    elif side == "transformers":
        model = bt.hf_model(cfg, params)
        del params                       # the model holds its own copy
        step = bt.hf_train_step(model, bt.hf_inputs(batch))
        first_s = common.timed(step, "cpu")
    else:
        raise ValueError(f"unknown side {side!r}")
    rss_after_first = common.current_rss_bytes()
    whole_process_peak = common.peak_rss_bytes()
    resettable = common.reset_peak_rss()
    start = time.perf_counter()
    for _ in range(STEADY_STEPS):
        step()
    return {"side": side, "compile": mode if side == "gpt1f" else False, "limit_heap": limit_heap,
            "packed": packed if side == "gpt1f" else None,
            "steady_peak_rss_bytes": common.peak_rss_bytes() if resettable else None,
            "process_peak_rss_bytes": max(whole_process_peak, common.peak_rss_bytes()),
            "rss_at_start_bytes": rss_start, "rss_after_first_step_bytes": rss_after_first,
            "first_step_s": first_s, "steady_steps": STEADY_STEPS,
            "steady_step_s": (time.perf_counter() - start) / STEADY_STEPS}


def run(quick: bool = False, compile: bool = True, threads: int = 2, packed: bool | None = None,
        regional: bool = False, whole_step: bool = False) -> dict:
    """Both sides, each in its own fresh interpreter, with and without the heap limit."""
    args = (["--threads", str(threads)] + (["--quick"] if quick else []) + ([] if compile else ["--no-compile"])
            + ([] if packed is None else ["--packed" if packed else "--no-packed"])
            + (["--regional"] if regional else []) + (["--whole-step"] if whole_step else []))
    from .bench_train import transformers_available
    names = ["gpt1f"] + (["transformers"] if transformers_available() else [])
    sides, limited = {}, {}
    for name in names:
        sides[name] = common.run_json_subprocess("benchmarks.bench_memory", ["--side", name, *args])
        limited[name] = common.run_json_subprocess("benchmarks.bench_memory",
                                                   ["--side", name, "--limit-heap", *args])
    out = {"benchmark": "train_step_peak_rss", "quick": quick, "compile": compile, "packed": packed,
           "regional": regional, "whole_step": whole_step,
           "sides": sides, "limited": limited}
    if "transformers" in sides:
        key = ("steady_peak_rss_bytes" if all(r["steady_peak_rss_bytes"] for r in
                                              [*sides.values(), *limited.values()])
               else "process_peak_rss_bytes")
        out["ratio_key"] = key
        out["ratio"] = sides["gpt1f"][key] / sides["transformers"][key]
        out["ratio_limited"] = limited["gpt1f"][key] / sides["transformers"][key]
        out["ratio_both_limited"] = limited["gpt1f"][key] / limited["transformers"][key]
    return out


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("gpt1f", "transformers"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile gpt1f's step (default on; --no-compile: eager)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-heap", action="store_true",
                        help="call gpt1f.memory.limit_heap_retention() first (one child)")
    parser.add_argument("--packed", action=argparse.BooleanOptionalAction, default=None,
                        help="gpt1f's padding-free path (default: on for CPU)")
    parser.add_argument("--regional", action="store_true",
                        help="compile gpt1f's step regionally (gpt1f.regional)")
    parser.add_argument("--whole-step", action="store_true",
                        help="compile gpt1f's step as one graph")
    return parser


def main(argv=None) -> None:
    args = arg_parser().parse_args(argv)
    if args.side:
        print(json.dumps(measure_side(args.side, quick=args.quick, compile=args.compile,
                                      threads=args.threads, limit_heap=args.limit_heap,
                                      packed=args.packed, regional=args.regional,
                                      whole_step=args.whole_step)))
    else:
        started = time.time()
        result = run(args.quick, args.compile, args.threads, args.packed, args.regional,
                     args.whole_step)
        print(json.dumps(common.with_machine_and_date(result, "cpu", started), indent=1))


if __name__ == "__main__":
    main()

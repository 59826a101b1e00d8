"""How long ``load_openai`` takes and how much memory it needs beyond its result's own bytes.

A synthetic release of the real size (117M parameters, ten shards of random float32) is written to
a temporary folder; each measurement runs in a fresh interpreter, so the parent's memory does not
count. Peak extra RSS is the child's peak resident set during the load minus its RSS just before.
The same is measured for the TF original's way (load every shard, concatenate, split, copy into
tensors) for comparison. The page cache is warm (the files were just written): this times parsing
and copying, not the disk.

    python -m benchmarks.bench_load [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import (current_rss_bytes, machine_info, peak_rss_bytes, reset_peak_rss,
                               run_json_subprocess)
from gpt1f.config import Config

QUICK_CFG = dict(n_vocab=2000, n_special=3, n_ctx=128, n_embd=128, n_head=4, n_layer=2)
TIMING_REPEATS = 3


def bench_config(quick: bool) -> Config:
    return Config(**QUICK_CFG) if quick else Config.gpt1()


def naive_load(directory: Path, cfg: Config) -> dict[str, torch.Tensor]:
    """The TF original's recipe: every shard in memory, concatenated, split, copied into tensors."""
    import numpy as np

    from gpt1f.openai_release import release_names

    shapes = json.loads((directory / "params_shapes.json").read_text())
    offsets = np.cumsum([math.prod(s) for s in shapes])
    flat = np.concatenate([np.load(directory / f"params_{n}.npy") for n in range(10)], 0)
    arrays = [a.reshape(s) for a, s in zip(np.split(flat, offsets)[:-1], shapes)]
    special = np.random.default_rng(0).standard_normal((cfg.n_special, cfg.n_embd)) * 0.02
    we = np.concatenate([arrays[1], special.astype(np.float32), arrays[0][:cfg.n_ctx]], 0)
    params = {"model/we:0": torch.tensor(we)}
    params.update({n: torch.tensor(a) for n, a in zip(release_names(cfg.n_layer)[2:], arrays[2:])})
    return params


def child(directory: Path, mode: str, quick: bool) -> dict:
    """One measurement in this (fresh) process: peak extra RSS of one load, then timed repeats."""
    from gpt1f.openai_release import load_openai

    cfg = bench_config(quick)

    def load():
        if mode == "naive":
            return naive_load(directory, cfg)
        return load_openai(directory, cfg=cfg, n_transfer=cfg.n_layer, download=False)[0]

    resettable = reset_peak_rss()
    before = current_rss_bytes()
    start = time.perf_counter()
    params = load()
    first_s = time.perf_counter() - start
    peak = peak_rss_bytes()
    param_bytes = sum(p.numel() * p.element_size() for p in params.values())
    del params
    times = [first_s]
    for _ in range(TIMING_REPEATS - 1):
        start = time.perf_counter()
        params = load()
        times.append(time.perf_counter() - start)
        del params
    return {"mode": mode, "seconds_median": statistics.median(times), "seconds": times,
            "rss_before_bytes": before, "peak_extra_rss_bytes": peak - before,
            "param_bytes": param_bytes, "ratio": (peak - before) / param_bytes,
            "peak_counter": "VmHWM reset" if resettable else "ru_maxrss"}


def write_release(directory: Path, cfg: Config) -> int:
    """A random release for ``cfg`` in ``directory``; returns its byte count on disk."""
    from gpt1f.openai_release import save_openai
    from gpt1f.params import init_params

    save_openai(init_params(cfg, seed=0), directory, cfg=cfg)
    return sum(p.stat().st_size for p in directory.iterdir())


def run(quick: bool = False) -> dict:
    """Write a synthetic release, measure ``load_openai`` and the naive recipe in fresh processes."""
    cfg = bench_config(quick)
    with tempfile.TemporaryDirectory(prefix="gpt1f-bench-load-") as tmp:
        directory = Path(tmp)
        disk_bytes = write_release(directory, cfg)
        args = [str(directory)] + (["--quick"] if quick else [])
        ours = run_json_subprocess("benchmarks.bench_load", ["--child", "ours", *args])
        naive = run_json_subprocess("benchmarks.bench_load", ["--child", "naive", *args])
    return {
        "benchmark": "load_openai", "quick": quick,
        "config": {k: getattr(cfg, k) for k in ("n_vocab", "n_special", "n_ctx", "n_embd", "n_layer")},
        "release_bytes_on_disk": disk_bytes, "page_cache": "warm",
        "seconds": ours["seconds_median"], "peak_extra_rss_bytes": ours["peak_extra_rss_bytes"],
        "param_bytes": ours["param_bytes"], "ratio": ours["ratio"],
        "ours": ours, "naive_concatenate": naive,
        "machine": machine_info("cpu"),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small config instead of 117M")
    parser.add_argument("--child", choices=("ours", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("directory", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(Path(args.directory), args.child, args.quick)
    else:
        result = run(quick=args.quick)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Run gpt1f's benchmarks, print a table and keep the results as files.

    python -m benchmarks.run [--quick] [--device cuda] [--no-compile] [--only train,memory]

Writes ``benchmarks/results/<machine>_<device>_<date>.json`` (versions, config, raw per-step times,
medians, min/max, ratios), the same table as ``.md`` and a plot of the training-step comparison
as ``.png``. ``--quick`` runs tiny configs in a minute or two: it checks that the suite works,
not how fast anything is.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import time
import traceback
from pathlib import Path

import torch

from . import common

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("train", "memory", "optim", "load", "text", "generate")

# (row label, how to read the measured value, target, comparison) -- see ``rows``.
TARGETS = {
    "train_speedup": 1.7, "train_mfu": 0.80, "eval_speedup": 2.0,
    "memory_ratio": 0.7, "load_ratio": 1.5,
    "generate_speedup_batch1": 10.0, "generate_bandwidth_batch1": 0.5,
}


# ---------------------------------------------------------------------------------------------
# Running


def run_one(name: str, *, quick: bool, device: str, compile: bool, args) -> dict:
    """One benchmark's result dict, or ``{'status': 'not available' | 'failed', ...}``."""
    start = time.perf_counter()
    try:
        if name == "train":
            from . import bench_train
            out = bench_train.run(quick, device, "default" if compile else "eager", warmup=args.warmup,
                                  steps=args.steps, peak_flops=args.peak["flops_per_s"],
                                  compile_mode=args.compile_mode)
        elif name == "memory":
            if torch.device(device).type != "cpu":
                return {"status": "skipped", "reason": "peak RSS is measured on CPU runs"}
            from . import bench_memory
            out = bench_memory.run(quick, compile, torch.get_num_threads())
        elif name == "generate":
            from . import bench_generate
            out = bench_generate.run(quick, device, compile, peer_new_tokens=args.peer_new_tokens,
                                     threads=torch.get_num_threads())
        else:
            try:
                module = importlib.import_module(f"benchmarks.bench_{name}")
            except ModuleNotFoundError as err:
                if err.name != f"benchmarks.bench_{name}":
                    raise
                return {"status": "not available", "reason": f"benchmarks/bench_{name}.py not found"}
            out = module.run(quick, device, compile=compile) if name == "optim" else module.run(quick)
    except Exception as err:  # one failing benchmark must not lose the others' results
        return {"status": "failed", "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-4000:]}
    out["status"] = "ok"
    out["wall_s"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------------------------------------
# The table


def fmt_s(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_ratio(r: dict) -> str:
    return f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"


def fmt_bytes(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def verdict(value, target, higher_is_better: bool) -> str:
    if value is None:
        return "-"
    return "met" if (value >= target if higher_is_better else value <= target) else "NOT met"


def rows(results: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(benchmark, gpt1f, peer, ratio, target, verdict) for every benchmark that ran."""
    out = []
    b = results["benchmarks"]
    train = b.get("train", {})
    if train.get("status") == "ok":
        for part, label, target in (("train", "training step", "train_speedup"),
                                    ("eval", "eval forward (multiple choice)", "eval_speedup")):
            r = train[part]
            ours, peer = r["sides"]["gpt1f"], r["sides"].get("transformers")
            speed = r.get("speedup")
            out.append((label, f"{fmt_s(ours['median_s'])} (MFU {ours['mfu']:.0%})",
                        f"{fmt_s(peer['median_s'])} (MFU {peer['mfu']:.0%})" if peer else "n/a",
                        fmt_ratio(speed) if speed else "-", f">= {TARGETS[target]}x faster",
                        verdict(speed and speed["median"], TARGETS[target], True)))
            port, speed_port = r["sides"].get("port"), r.get("speedup_port")
            if port:
                out.append((f"{label}, the 2018 port", fmt_s(ours["median_s"]), fmt_s(port["median_s"]),
                            fmt_ratio(speed_port), f">= {TARGETS[target]}x faster",
                            verdict(speed_port["median"], TARGETS[target], True)))
            if part == "train":
                out.append(("training step MFU", f"{ours['mfu']:.1%}",
                            f"{peer['mfu']:.1%}" if peer else "n/a", "-",
                            f">= {TARGETS['train_mfu']:.0%}",
                            verdict(ours["mfu"], TARGETS["train_mfu"], True)))
                out.append(("compile time (once)", fmt_s(r.get("compile_s")), "-", "-", "-", "-"))
                if "rocstories_run_s" in r:
                    out.append(("ROCStories fine-tune (138 x 32 stories)",
                                fmt_s(r["rocstories_run_s"].get("gpt1f")),
                                fmt_s(r["rocstories_run_s"].get("transformers")), "-", "< 30 s",
                                verdict(r["rocstories_run_s"].get("gpt1f"), 30, False)))
    mem = b.get("memory", {})
    if mem.get("status") == "ok":
        key = mem["ratio_key"]
        sides = mem["sides"]
        limited = mem.get("limited", {})
        peer, peer_limited = sides.get("transformers", {}), limited.get("transformers", {})
        for label, ours, theirs, ratio in (
                ("training step peak RSS, default malloc", sides["gpt1f"], peer, "ratio"),
                ("... gpt1f with limit_heap_retention()", limited.get("gpt1f"), peer, "ratio_limited"),
                ("... both with limit_heap_retention()", limited.get("gpt1f"), peer_limited,
                 "ratio_both_limited")):
            if ours is None:
                continue
            out.append((label, fmt_bytes(ours.get(key)), fmt_bytes(theirs.get(key)),
                        f"{mem[ratio]:.2f}x" if ratio in mem else "-", f"<= {TARGETS['memory_ratio']}x",
                        verdict(mem.get(ratio), TARGETS["memory_ratio"], False)))
    optim = b.get("optim", {})
    if optim.get("status") == "ok":
        out.append(optim_row(optim))
    load = b.get("load", {})
    if load.get("status") == "ok":
        out.append(("weight loading (117M, 10 shards)",
                    f"{fmt_s(load.get('seconds'))}, +{fmt_bytes(load.get('peak_extra_rss_bytes'))}",
                    fmt_bytes(load.get("param_bytes")) + " params",
                    f"{load['ratio']:.2f}x params" if "ratio" in load else "-",
                    f"<= {TARGETS['load_ratio']}x params",
                    verdict(load.get("ratio"), TARGETS["load_ratio"], False)))
    text = b.get("text", {})
    if text.get("status") == "ok":
        out.append(text_row(text))
    generate = b.get("generate", {})
    if generate.get("status") == "ok":
        out += generate_rows(generate)
    for name, r in b.items():
        if r.get("status") != "ok":
            out.append((name, r.get("status", "?"), "-", "-", "-", r.get("reason") or r.get("error", "")[:60]))
    return out


def optim_row(optim: dict) -> tuple:
    """bench_optim's summary: the update's time against AdamW's (target: at most 1.1x)."""
    ratio, target = optim["time_ratio"], optim["target_time_ratio"]
    return ("optimizer update alone vs AdamW", fmt_s(optim["gpt1f_median_s"]),
            fmt_s(optim["adamw_median_s"]),
            f"{ratio:.2f}x the time ({fmt_ratio(optim['speedup'])} faster)",
            f"<= {target}x the time", verdict(ratio, target, False))


def text_row(text: dict) -> tuple:
    """bench_text's summary: texts/s of TextEncoder and of the per-text baseline."""
    s = text["stories"]
    rates = s["texts_per_s"]
    return ("tokenisation, one process (texts/s)", f"{rates['ours']:,.0f}/s",
            f"{rates['baseline']:,.0f}/s", f"{s['speedup']:.2f}x faster", "-", "-")


def generate_rows(gen: dict) -> list[tuple]:
    """bench_generate: new tokens/s per (batch, mode) against transformers, and batch 1 against
    the memory-bandwidth bound; gpt1f's figure is the compiled side's when it ran."""
    out = []
    bound = gen["bound_tokens_per_s_batch1"]
    for name, r in gen["runs"].items():
        ours = "gpt1f_compiled" if "gpt1f_compiled" in r["sides"] else "gpt1f"
        sides = r["sides"]
        peer = sides.get("transformers")
        speed = r.get(f"speedup_{ours}")
        label = f"generate {r['mode']}, batch {r['batch']} (new tokens/s)"
        eager = f", eager {sides['gpt1f']['tokens_per_s']:,.1f}" if ours != "gpt1f" else ", eager"
        peer_text = "n/a" if peer is None else (
            f"{peer['tokens_per_s']:,.1f}" + (f" (over {peer['new_tokens']} tokens)"
                                              if peer["new_tokens"] != gen["new_tokens"] else ""))
        batch1 = r["batch"] == 1
        out.append((label, f"{sides[ours]['tokens_per_s']:,.1f}{eager}", peer_text,
                    fmt_ratio(speed) if speed else "-",
                    f">= {TARGETS['generate_speedup_batch1']:.0f}x faster" if batch1 else "-",
                    verdict(speed and speed["median"], TARGETS["generate_speedup_batch1"], True)
                    if batch1 else "-"))
        if batch1:
            fraction = r[f"bandwidth_fraction_{ours}"]
            out.append((f"generate {r['mode']}, batch 1 vs bandwidth bound",
                        f"{sides[ours]['tokens_per_s']:,.1f}/s", f"bound {bound:,.1f}/s",
                        f"{fraction:.0%} of bound",
                        f">= {TARGETS['generate_bandwidth_batch1']:.0%}",
                        verdict(fraction, TARGETS["generate_bandwidth_batch1"], True)))
        if "compile_s" in r:
            out.append((f"generate {r['mode']}, batch {r['batch']}: compile (once)",
                        fmt_s(r["compile_s"]), "-", "-", "-", "-"))
    return out


def markdown_table(results: dict) -> str:
    env = results["environment"]
    head = (f"Benchmarks, {results['date']}: {env.get('gpu') or env['cpu']} "
            f"({env['device']}, {env['torch_threads']} threads), torch {env['torch']}, "
            f"transformers {env['transformers']}; matmul peak "
            f"{results['peak']['flops_per_s'] / 1e9:.0f} GFLOP/s ({results['peak']['dtype']} "
            f"{results['peak']['n']}^3){', quick (tiny configs)' if results['quick'] else ''}.")
    train = results["benchmarks"].get("train", {})
    if train.get("status") == "ok" and "included_from" in train:
        head += (f" Train/eval MFU is against the peak measured in their own run: "
                 f"{train['peak_flops_per_s'] / 1e9:.0f} GFLOP/s.")
    included = [n for n, r in results["benchmarks"].items() if "included_from" in r]
    if included:
        head += " Included from separate runs: " + ", ".join(
            f"{n} ({results['benchmarks'][n]['included_from']})" for n in included) + "."
    head += "\n\n"
    lines = ["| benchmark | gpt1f | transformers / baseline | ratio (median [min-max]) | target | |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    return head + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The plot


def plot_train(results: dict, path: Path) -> Path | None:
    """Per-step times of both sides (dots) and their medians (bars) for train step and eval."""
    train = results["benchmarks"].get("train", {})
    if train.get("status") != "ok":
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    colors = {"gpt1f": "#1f77b4", "transformers": "#d62728"}
    for ax, part, title in ((axes[0], "train", "training step"), (axes[1], "eval", "eval forward")):
        r = train[part]
        for i, (side, s) in enumerate(r["sides"].items()):
            ax.bar(i, s["median_s"], color=colors.get(side, "gray"), alpha=0.6, width=0.6)
            ax.scatter([i] * len(s["times_s"]), s["times_s"], color="black", s=10, zorder=3)
            ax.text(i, s["median_s"], f"{s['median_s']:.2f} s\nMFU {s['mfu']:.0%}",
                    ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(r["sides"])), list(r["sides"]))
        speed = r.get("speedup")
        ax.set_title(f"{title}" + (f": {speed['median']:.2f}x faster" if speed else ""), fontsize=10)
        ax.set_ylabel("seconds per step")
        ax.set_ylim(0, max(max(s["times_s"]) for s in r["sides"].values()) * 1.3)
    env = results["environment"]
    cfg = train["config"]
    size = "117M" if (cfg["n_layer"], cfg["n_embd"]) == (12, 768) else f"{cfg['n_layer']}x{cfg['n_embd']} (quick)"
    fig.suptitle(f"GPT-1 {size}, ROCStories batch {cfg['n_stories']}x{cfg['n_choices']}x{cfg['n_ctx']}, "
                 f"{env.get('gpu') or env['device']} {env['torch_threads']} threads, "
                 f"torch {env['torch']}, {results['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Entry point


def write_json(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs: checks the suite, not speed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile gpt1f's train step and eval forward (default on)")
    parser.add_argument("--compile-mode", help="torch.compile mode for gpt1f's train step and eval "
                        "(default: max-autotune on CUDA, inductor's default on CPU)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU (default 2)")
    parser.add_argument("--steps", type=int, help="measured steps per side (train/eval)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per side (train/eval)")
    parser.add_argument("--peer_new_tokens", type=int,
                        help="generate: new tokens per transformers call (default: all 256)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--include", action="append", default=[], metavar="NAME=FILE",
                        help="take benchmark NAME's result from FILE, the JSON its own module "
                        "printed (e.g. python -m benchmarks.bench_train > train.json), instead "
                        "of running it; for runs too long to repeat in one sitting")
    args = parser.parse_args(argv)
    included = {}
    for item in args.include:
        name, sep, file = item.partition("=")
        if not sep or name not in BENCHMARKS:
            parser.error(f"--include wants NAME=FILE with NAME in {BENCHMARKS}, got {item!r}")
        try:
            included[name] = json.loads(Path(file).read_text())
        except (OSError, ValueError) as err:
            parser.error(f"--include {item}: {err}")
        included[name].setdefault("status", "ok")
        included[name]["included_from"] = Path(file).name
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else []
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the peer gets the same setting

    started = datetime.datetime.now(datetime.timezone.utc)
    args.peak = common.benchmark_peak(device, args.quick)
    results = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
               "device": str(device), "compile": args.compile, "argv": argv,
               "environment": common.machine_info(device), "peak": args.peak,
               "load_average_at_start": os.getloadavg(), "targets": TARGETS, "benchmarks": {}}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = (f"{common.machine_kind(device)}_{device.type}_{started.strftime('%Y%m%d-%H%M')}"
            + ("_quick" if args.quick else ""))
    json_path = args.out_dir / f"{stem}.json"
    results["files"] = {"json": json_path.name, "table": f"{stem}.md"}
    for name in BENCHMARKS:
        if name in included:
            results["benchmarks"][name] = included[name]
        elif name in only:
            print(f"[benchmarks] {name} ...", flush=True)
            results["benchmarks"][name] = run_one(name, quick=args.quick, device=str(device),
                                                  compile=args.compile, args=args)
            print(f"[benchmarks] {name}: {results['benchmarks'][name]['status']}", flush=True)
            write_json(json_path, results)          # partial results survive a later timeout
    results["load_average_at_end"] = os.getloadavg()
    results["wall_s"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()

    table = markdown_table(results)
    plot = plot_train(results, args.out_dir / f"{stem}.png")
    if plot:
        results["files"]["plot"] = plot.name
    (args.out_dir / f"{stem}.md").write_text(table)
    write_json(json_path, results)
    print(table)
    print(f"[benchmarks] wrote {args.out_dir / stem}.{{json,md{',png' if plot else ''}}}")
    return results


if __name__ == "__main__":
    main()

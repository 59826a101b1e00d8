"""The report of ``benchmarks/gpu_check.sh``: what its parts measured, in a few lines, and
``benchmarks.run``'s report (JSON, Markdown table, plot) of its train, generate and optim parts.

Each part left its benchmark's JSON in ``DIR/gpu_check_<part>.json``; a part that did not run has
no file, one stopped at its limit an empty one.

    python -m benchmarks.gpu_report DIR [--device cuda] [--quick]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import run

PARTS = ("train", "packed", "generate", "optim")
FINETUNE_TARGET_S = 30.0   # step time of the 138-update ROCStories fine-tune on one GPU (issue 17)


def part_file(out_dir: Path, part: str) -> Path:
    return Path(out_dir) / f"gpu_check_{part}.json"


def load_parts(out_dir: Path) -> dict[str, dict]:
    """{part: its result} for every part with a file; an unreadable file gives
    ``{'status': 'failed', 'error': ...}``, a readable one ``status`` ``'ok'``."""
    parts = {}
    for part in PARTS:
        path = part_file(out_dir, part)
        if not path.exists():
            continue
        text = path.read_text().strip()
        try:
            parts[part] = {**json.loads(text.splitlines()[-1]), "status": "ok"}
        except (ValueError, IndexError) as err:
            why = f"({err})" if text else "(empty: stopped before it printed)"
            parts[part] = {"status": "failed", "error": f"{path.name} holds no JSON result {why}"}
    return parts


def flops(per_s: float) -> str:
    return f"{per_s / 1e12:.0f} TFLOP/s" if per_s >= 1e12 else f"{per_s / 1e9:.0f} GFLOP/s"


def train_lines(r: dict, label: str) -> list[str]:
    """Per side and part: median step, MFU by padded and by real-token FLOPs, peak GPU memory;
    the speed-up over transformers; the fine-tune's step time against its target."""
    lines = [f"{label}: {r['train_compile']} gpt1f step, compile kwargs {r['compile_kwargs']}, "
             f"{r['config']['n_stories']} stories x {r['config']['n_choices']} x {r['config']['n_ctx']}, "
             f"matmul peak {flops(r['peak_flops_per_s'])} at the start, "
             f"{flops(r['peak_flops_per_s_at_end'])} at the end"]
    for part in ("train", "eval"):
        p = r[part]
        peaks = p.get("peak_gpu_memory_bytes", {})
        for side, s in p["sides"].items():
            lines.append(f"  {part} {side}: {run.fmt_s(s['median_s'])}, MFU {s['mfu']:.1%} padded / "
                         f"{s['mfu_real']:.1%} real tokens, peak memory {run.fmt_bytes(peaks.get(side))}")
        if "speedup" in p:
            lines.append(f"  {part}: {run.fmt_ratio(p['speedup'])} transformers' speed; "
                         f"gpt1f's first call {run.fmt_s(p['compile_s'])}")
    run_s = r["train"].get("rocstories_run_s", {})
    if "gpt1f" in run_s:
        verdict = run.verdict(run_s["gpt1f"], FINETUNE_TARGET_S, False)
        lines.append("  ROCStories fine-tune, 138 updates of 32 stories, step time: "
                     + ", ".join(f"{side} {s:.1f} s" for side, s in run_s.items())
                     + f" (target < {FINETUNE_TARGET_S:.0f} s: {verdict})")
    est = r.get("finetune_estimate", {})
    if "gpt1f_s" in est:
        lines.append(f"  with compile time: gpt1f {est['gpt1f_s']:.1f} s"
                     + "".join(f", {k[:-2]} {v:.1f} s" for k, v in est.items()
                               if k.endswith("_s") and k != "gpt1f_s"))
    return lines


def summary_lines(parts: dict[str, dict]) -> list[str]:
    """The report's lines, part by part, for whatever ran."""
    lines = []
    for part, r in parts.items():
        if r.get("status") != "ok":
            lines.append(f"{part}: {r.get('error', r.get('status'))}")
        elif part in ("train", "packed"):
            lines += train_lines(r, part)
        elif part in ("generate", "optim"):   # benchmarks.run's rows: gpt1f | peer | ratio | target | verdict
            rows = run.generate_rows(r) if part == "generate" else [run.optim_row(r)]
            lines += [f"{row[0]}: " + " | ".join(row[1:]) for row in rows]
    train, packed = parts.get("train", {}), parts.get("packed", {})
    if train.get("status") == packed.get("status") == "ok":
        for part in ("train", "eval"):
            ratio = train[part]["sides"]["gpt1f"]["median_s"] / packed[part]["sides"]["gpt1f"]["median_s"]
            lines.append(f"{part}: the padding-free gpt1f step runs {ratio:.2f}x the speed of the train part's")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    parts = load_parts(args.out_dir)
    if not parts:
        raise SystemExit(f"no gpu_check_<part>.json in {args.out_dir}")
    print("\n".join(summary_lines(parts)), flush=True)
    included = [f"{part}={part_file(args.out_dir, part)}" for part in ("train", "generate", "optim")
                if parts.get(part, {}).get("status") == "ok"]
    if included:
        run.main(["--device", args.device, "--only", "", "--out-dir", str(args.out_dir),
                  *(["--quick"] if args.quick else []),
                  *(arg for item in included for arg in ("--include", item))])
    if any(r.get("status") != "ok" for r in parts.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

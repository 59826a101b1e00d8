"""gpt1f's ROCStories training step at another commit against this working tree: did a change
make the step faster, on this machine, now?

    python -m benchmarks.bench_commits REV [--rounds 3] [--steps 6] [--warmup 2] [--quick]

``REV`` (any git revision) is checked out into a temporary ``git worktree``; the other side is this
working tree, uncommitted changes included. Each side is ``bench_train``'s gpt1f training step (its
batch, weights and mode: ``--serve gpt1f:train``) in a process of its own, started from its own
tree, so each runs its own ``gpt1f`` and its own ``benchmarks/bench_train.py`` (which must accept
the flags this one passes). Every round starts both processes afresh, warms both up and steps them
in turn (REV, tree, REV, ...), so the host's noise falls on both. Reported: each side's median
step, and the median of the per-step ratios ``REV / tree`` (above 1: the tree is faster).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.bench_train import MODES, Setup

SIDES = ("rev", "tree")


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=common.REPO_ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise ValueError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


@contextlib.contextmanager
def worktree(rev: str):
    """A detached checkout of ``rev`` in a temporary directory, removed afterwards.
    -> (its path, the commit it is)"""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="gpt1f_rev_") as tmp:
        path = Path(tmp) / "tree"
        git("worktree", "add", "--detach", str(path), commit)
        try:
            yield path, commit
        finally:
            git("worktree", "remove", "--force", str(path))


def run(rev: str, *, quick: bool = False, mode: str = "default", rounds: int = 3, steps: int = 6,
        warmup: int = 2) -> dict:
    """Per-round step times of ``rev`` and of this tree, interleaved, and their ratio."""
    if rounds < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, steps >= 1, warmup >= 0; got {rounds}, {steps}, {warmup}")
    setup_args = ["--serve", "gpt1f:train", *Setup(quick, "cpu", mode, None, None).argv()]
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    per_round = []
    with worktree(rev) as (rev_root, rev_commit):
        roots = {"rev": rev_root, "tree": common.REPO_ROOT}
        for _ in range(rounds):
            procs = {}
            try:
                for side in SIDES:
                    procs[side] = common.StepProcess("benchmarks.bench_train", setup_args, root=roots[side])
                got = common.interleaved(procs, warmup=warmup, steps=steps, device="cpu")
            finally:
                for proc in procs.values():
                    proc.close()
            per_round.append({side: common.summary(t) for side, t in got.items()})
            for side in SIDES:
                times[side].extend(got[side])
    return {
        "benchmark": "commits", "quick": quick, "mode": mode,
        "rev": rev, "rev_commit": rev_commit,
        "tree_commit": git("rev-parse", "HEAD"),
        "tree_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "method": "each round: both sides in fresh processes, stepped in turn after warm-up",
        "rounds": per_round, "warmup": warmup, "steps": steps,
        "sides": {side: common.summary(t) for side, t in times.items()},
        "round_medians_s": {side: [r[side]["median_s"] for r in per_round] for side in SIDES},
        "tree_speedup": common.ratio_summary(times["rev"], times["tree"]),
        "tree_speedup_of_round_medians": statistics.median(
            r["rev"]["median_s"] / r["tree"]["median_s"] for r in per_round),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare this working tree against")
    parser.add_argument("--quick", action="store_true", help="the tiny config instead of 117M")
    parser.add_argument("--mode", default="default", choices=MODES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    result = run(args.rev, quick=args.quick, mode=args.mode, rounds=args.rounds, steps=args.steps,
                 warmup=args.warmup)
    print(json.dumps(common.with_machine_and_date(result, "cpu", started)))


if __name__ == "__main__":
    main(sys.argv[1:])

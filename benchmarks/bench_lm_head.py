"""The training LM head alone: the fused loss in vocabulary slices against the whole vocabulary.

``gpt1f.fused_lm_loss``'s op (the mean LM loss and its gradients with respect to ``we`` and the
hidden states, in one pass) at the shape of the training benchmark: the 117M model's vocabulary
and width, hidden states for the ROCStories batch of ``bench_train`` (8 stories x 2 endings x 77,
real lengths 40-77), float32, random values, the logits in chunks of ``DEFAULT_CHUNK_ROWS``
positions. Sides, interleaved in one process (A B C A B C ...) after warm-up:

- ``sliced``: ``vocab_rows=CPU_VOCAB_ROWS``, the CPU default: each slice's softmax work while its
  logits are in cache;
- ``whole``: ``vocab_rows=0``, the whole vocabulary at once (CUDA's way, and CPU's before);
- ``plain``: ``gpt1f.model.lm_losses(...).mean()`` and its gradients by ``torch.autograd``, the
  unfused head: logits of every position, ``[S, T, V]``.

    python -m benchmarks.bench_lm_head [--quick] [--steps 8] > result.json
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks.bench_train import bench_config, rocstories_batch
from benchmarks.common import interleaved, machine_info, ratio_summary, summary
from gpt1f.fused_lm_loss import CPU_VOCAB_ROWS, DEFAULT_CHUNK_ROWS
from gpt1f.model import lm_losses

QUICK_VOCAB_ROWS = 16      # several slices of the tiny vocabulary


def head_inputs(quick: bool, seed: int = 0):
    """we [V, E], hidden [S, T, E], tokens, mask [S, T]: the training batch's shape and lengths."""
    cfg = bench_config(quick)
    batch = rocstories_batch(cfg)
    tokens, mask = batch["tokens"].flatten(0, 1), batch["mask"].flatten(0, 1)
    gen = torch.Generator().manual_seed(seed)
    we = torch.randn(cfg.n_rows, cfg.n_embd, generator=gen) * 0.02
    hidden = torch.randn(*tokens.shape, cfg.n_embd, generator=gen)
    return we, hidden, tokens, mask


def fused(vocab_rows: int, we, hidden, tokens, mask):
    """The op's (loss, d/dwe, d/dhidden), with the CPU path's masked positions skipped."""
    return torch.ops.gpt1f.lm_loss_mean_and_grads(we, hidden, tokens, mask, DEFAULT_CHUNK_ROWS, True,
                                                  vocab_rows)


def plain(we, hidden, tokens, mask):
    """The same three by autograd through the whole logits."""
    we, hidden = we.detach().requires_grad_(), hidden.detach().requires_grad_()
    loss = lm_losses(we, hidden, tokens, mask).mean()
    return (loss.detach(), *torch.autograd.grad(loss, (we, hidden)))


def max_abs_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def run(quick: bool = False, *, warmup: int | None = None, steps: int | None = None) -> dict:
    warmup = 2 if warmup is None else warmup
    steps = (5 if quick else 8) if steps is None else steps
    args = head_inputs(quick)
    vocab_rows = QUICK_VOCAB_ROWS if quick else CPU_VOCAB_ROWS
    sides = {"sliced": lambda: fused(vocab_rows, *args), "whole": lambda: fused(0, *args),
             "plain": lambda: plain(*args)}
    reference = [t.clone() for t in fused(vocab_rows, *args)]
    diffs = {"whole": max_abs_diff(reference, fused(0, *args)),
             "plain": max_abs_diff(reference, plain(*args))}
    times = interleaved(sides, warmup=warmup, steps=steps, device="cpu")
    we, hidden, tokens, mask = args
    rows = int(mask[:, 1:].sum())
    flops = 6 * we.shape[0] * we.shape[1] * rows      # three [V, E] x [E, rows] products
    summaries = {name: summary(t) for name, t in times.items()}
    return {
        "benchmark": "lm_head", "quick": quick, "dtype": "float32",
        "shape": {"vocab": we.shape[0], "width": we.shape[1], "sequences": tokens.shape[0],
                  "positions": tokens.shape[1], "rows": rows},
        "vocab_rows": vocab_rows, "chunk_rows": DEFAULT_CHUNK_ROWS, "warmup": warmup, "steps": steps,
        "sides": summaries,
        "gflop_per_s": {name: flops / side["median_s"] / 1e9 for name, side in summaries.items()},
        "speedup_over_whole": ratio_summary(times["whole"], times["sliced"]),
        "speedup_over_plain": ratio_summary(times["plain"], times["sliced"]),
        "max_abs_diff_to_sliced": diffs,
        "machine": machine_info("cpu"),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny config instead of 117M")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(run(args.quick, steps=args.steps)))


if __name__ == "__main__":
    main(sys.argv[1:])

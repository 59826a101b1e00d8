"""``python -m gpt1f.generate``: continue or score a text with the pre-trained GPT-1 release.

    python -m gpt1f.generate "Karen was assigned a roommate" --max_new_tokens 40 --top_k 40 --seed 0
    python -m gpt1f.generate "Karen was assigned a roommate" --n_samples 4
    python -m gpt1f.generate "Karen was assigned a roommate" --score

The release (``params_shapes.json``, ten shards, the BPE vocabulary) is read from ``--weights_dir``
(else ``$GPT1F_WEIGHTS``, else ``<repo>/weights``); missing files are downloaded and verified as
``gpt1f.load_openai`` does, unless ``--offline``. The model is built from the release's shapes with
no special-token rows (the release has none), so only its 40,478 BPE pieces are drawn.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

from . import download, random as grandom
from .config import PRETRAINED_N_CTX, Config
from .generation import generate
from .openai_release import load_openai, read_shapes
from .scoring import score

SAMPLE_HEADER = "=== sample {n} ==="


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpt1f.generate", description=__doc__.splitlines()[0])
    p.add_argument("prompt", help="the text to continue (or to score with --score)")
    p.add_argument("--max_new_tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--greedy", action="store_true", help="always the most likely token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_samples", type=int, default=1, help="continuations of the prompt, one key each")
    p.add_argument("--score", action="store_true",
                   help="print each token's log-probability given the text before it instead")
    p.add_argument("--weights_dir", type=str, default=None,
                   help="release folder (default: $GPT1F_WEIGHTS, else <repo>/weights)")
    p.add_argument("--offline", action="store_true", help="never download; fail if files are missing")
    p.add_argument("--n_head", type=int, default=12, help="attention heads (the release has 12)")
    p.add_argument("--device", type=str, default=None, help="default: cuda if available, else cpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the decode step (default: on for CUDA)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    return p.parse_args(argv)


def load_model(args):
    """(params, cfg, TextEncoder) from the release folder; the config follows its shapes."""
    from .text import TextEncoder

    directory = download.fetch((*download.VOCAB_NAMES, *download.WEIGHT_NAMES),
                               download.weights_dir(args.weights_dir), download=not args.offline)
    release = read_shapes(directory / download.SHAPES_NAME)
    cfg = Config.gpt1(n_vocab=release.n_vocab, n_embd=release.n_embd, n_layer=release.n_layer,
                      n_head=args.n_head, n_special=0, n_ctx=min(release.n_ctx, PRETRAINED_N_CTX))
    params, cfg = load_openai(directory, cfg=cfg, n_transfer=release.n_layer, download=False,
                              progress=False)
    encoder = TextEncoder(*(directory / name for name in download.VOCAB_NAMES),
                          special_tokens=(), download=False)
    if encoder.n_vocab != cfg.n_vocab:
        raise ValueError(f"the vocabulary in {directory} has {encoder.n_vocab} pieces but the "
                         f"weights have {cfg.n_vocab} token rows")
    return params, cfg, encoder


def print_scores(params, cfg, encoder, ids, device) -> None:
    tokens = torch.tensor([ids], device=device)
    token_lp, total = score(params, tokens, torch.ones_like(tokens), cfg=cfg)
    print(f"{'token':<20} log-prob")
    print(f"{encoder.decode(ids[:1]):<20} (first token: no context)")
    for i, lp in zip(ids[1:], token_lp[0].tolist()):
        print(f"{encoder.decode([i]):<20} {lp:.4f}")
    n = len(ids) - 1
    if n:
        mean = total.item() / n
        print(f"total {total.item():.4f} over {n} tokens, mean {mean:.4f}, "
              f"perplexity {math.exp(-mean):.2f}")


def print_samples(params, cfg, encoder, ids, args, device) -> None:
    compile = args.compile if args.compile is not None else device.type == "cuda"
    keys = grandom.split(grandom.key(args.seed, device=device), args.n_samples)
    rows = generate(params, [ids] * args.n_samples, cfg=cfg, key=keys,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, compile=compile)
    print(f"prompt: {encoder.decode(ids)}")
    for n, row in enumerate(rows, 1):   # generated text may hold newlines: a header per sample
        print(f"{SAMPLE_HEADER.format(n=n)}\n{encoder.decode(row)}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        if args.n_samples < 1:
            raise ValueError(f"--n_samples must be >= 1, got {args.n_samples}")
        params, cfg, encoder = load_model(args)
        params = {k: v.to(device) for k, v in params.items()}
        ids = encoder.encode_one(args.prompt)
        if not ids:
            raise ValueError(f"the prompt {args.prompt!r} encodes to no tokens")
        if args.score:
            print_scores(params, cfg, encoder, ids, device)
        else:
            print_samples(params, cfg, encoder, ids, args, device)
    except (ValueError, KeyError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

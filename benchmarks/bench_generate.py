"""Text generation: new tokens/s of gpt1f (eager and compiled) against transformers' ``generate``.

The peer is transformers' ``OpenAIGPTLMHeadModel`` loaded with ``from_pretrained`` from what
``gpt1f.save_hf`` wrote for the same weights (random init: speed does not depend on the values).
It has no key/value cache, so every new token re-runs the whole prefix. Each side runs in its own
interpreter (one per side for the whole run), the sides stepped in turn (A B C A B C ...) after
each side's first call, which for the compiled side includes compiling (reported apart). One step
is one whole ``generate`` call: prefill of the prompt, then the new tokens.

The memory-bandwidth bound: at batch 1 a decode step must read every weight it multiplies (the
blocks and the ``n_vocab`` token rows of the tied head) plus the live part of the key/value
cache; divided into the copy bandwidth measured in the same run (STREAM convention: bytes read
plus bytes written per second of a large ``copy_``), it bounds new tokens/s from above.

    python -m benchmarks.bench_generate [--quick] [--device cuda] [--no-compile]
        [--steps 3] [--warmup 1] [--peer_new_tokens 64] [--batches 1,8] [--modes greedy,top_k]

``--peer_new_tokens N`` times transformers over N new tokens instead of all of them (at batch 8 on
two CPU cores one 256-token call takes many minutes); a shorter run has shorter prefixes, so its
tokens/s is higher than the peer would reach over 256 tokens and the ratio understates gpt1f's
lead. The results say which count each side ran.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch

import gpt1f

from . import common
from .bench_train import transformers_available

PROMPT_LEN, NEW_TOKENS, TOP_K = 64, 256, 40
BATCHES, MODES = (1, 8), ("greedy", "top_k")
QUICK = dict(cfg=dict(n_vocab=500, n_special=0, n_ctx=64, n_embd=64, n_head=4, n_layer=2),
             prompt_len=8, new_tokens=16, batches=(1, 2))
SIDES = ("gpt1f", "gpt1f_compiled", "transformers")


def bench_config(quick: bool) -> gpt1f.Config:
    """The 117M model with no special rows, so both sides draw from the same 40,478 rows."""
    return gpt1f.Config(**QUICK["cfg"]) if quick else gpt1f.Config.gpt1(n_special=0)


def prompts(cfg: gpt1f.Config, batch: int, length: int, device="cpu") -> torch.Tensor:
    """Token ids [batch, length] from a fixed seed (the same on every side)."""
    gen = torch.Generator().manual_seed(batch)
    return torch.randint(0, cfg.n_vocab, (batch, length), generator=gen).to(device)


# ---------------------------------------------------------------------------------------------
# Bytes and bandwidth


def bytes_per_new_token(cfg: gpt1f.Config, context: float, dtype_bytes: int = 4) -> float:
    """Bytes a batch-1 decode step must read: every block weight, the token rows of the tied head
    and the keys and values of ``context`` positions (biases and gains included; the two looked-up
    embedding rows are negligible)."""
    e = cfg.n_embd
    per_layer = e * 3 * e + 3 * e + e * e + e + 2 * e + e * 4 * e + 4 * e + 4 * e * e + e + 2 * e
    weights = cfg.n_layer * per_layer + cfg.n_vocab * e
    kv = 2 * cfg.n_layer * context * e
    return (weights + kv) * dtype_bytes


def copy_bandwidth(device, *, n_bytes: int = 1 << 28, reps: int = 10) -> dict:
    """Median bytes/s (read + written) of ``dst.copy_(src)`` over ``n_bytes``-byte float32 tensors."""
    src = torch.ones(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    times = [common.timed(lambda: dst.copy_(src), device) for _ in range(reps)]
    return {"bytes": n_bytes, "convention": "STREAM copy: read + written bytes per second",
            "bytes_per_s": 2 * n_bytes / statistics.median(times), "times_s": times}


# ---------------------------------------------------------------------------------------------
# The sides (each in its own process)


def gpt1f_generate(params, cfg, tokens, mode: str, new_tokens: int, compile: bool):
    rows, key = tokens.tolist(), gpt1f.random.key(0, device=tokens.device)
    sampling = dict(greedy=True) if mode == "greedy" else dict(top_k=TOP_K)

    def call():
        return gpt1f.generate(params, rows, cfg=cfg, key=key, max_new_tokens=new_tokens,
                              compile=compile, **sampling)
    return call


def hf_generate(model, tokens, mode: str, new_tokens: int):
    sampling = (dict(do_sample=False) if mode == "greedy" else
                dict(do_sample=True, top_k=TOP_K, top_p=1.0, temperature=1.0))
    mask = torch.ones_like(tokens)

    @torch.no_grad()
    def call():
        out = model.generate(tokens, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None,
                             **sampling)
        return out[:, tokens.shape[1]:].tolist()
    return call


class Side:
    """One side's model, built once; ``call(batch, mode)`` makes its no-argument step."""

    def __init__(self, side: str, quick: bool, device):
        self.side, self.device, self.cfg = side, torch.device(device), bench_config(quick)
        self.prompt_len = QUICK["prompt_len"] if quick else PROMPT_LEN
        params = gpt1f.init_params(self.cfg, seed=0)
        if side == "transformers":
            from transformers import OpenAIGPTLMHeadModel
            with tempfile.TemporaryDirectory() as folder:
                gpt1f.save_hf(params, folder, cfg=self.cfg, head=False)
                self.model = OpenAIGPTLMHeadModel.from_pretrained(folder).to(self.device).eval()
        else:
            self.params = {k: v.to(self.device) for k, v in params.items()}

    def call(self, batch: int, mode: str, new_tokens: int):
        tokens = prompts(self.cfg, batch, self.prompt_len, self.device)
        if self.side == "transformers":
            return hf_generate(self.model, tokens, mode, new_tokens)
        return gpt1f_generate(self.params, self.cfg, tokens, mode, new_tokens,
                              compile=self.side == "gpt1f_compiled")


def serve(side: str, quick: bool, device) -> None:
    """The child: build the side, then answer ``run BATCH MODE NEW`` (first call: seconds and
    tokens, as JSON), ``step`` (seconds of one call of the current run) and ``quit``."""
    built = Side(side, quick, device)
    print(json.dumps({"side": side}), flush=True)
    fn = None
    for line in sys.stdin:
        words = line.split()
        if words[0] == "quit":
            break
        if words[0] == "run":
            fn = built.call(int(words[1]), words[2], int(words[3]))
            start = time.perf_counter()
            tokens = fn()
            common.synchronize(device)
            print(json.dumps({"first_call_s": time.perf_counter() - start, "tokens": tokens}),
                  flush=True)
        else:
            print(repr(common.timed(fn, device)), flush=True)


class SideProcess(common.StepProcess):
    """A :class:`common.StepProcess` that can also be told which run to step next."""

    def start_run(self, batch: int, mode: str, new_tokens: int) -> dict:
        self.proc.stdin.write(f"run {batch} {mode} {new_tokens}\n")
        self.proc.stdin.flush()
        return json.loads(self._reply())


# ---------------------------------------------------------------------------------------------
# The comparison


def per_token(times: list[float], tokens: int) -> list[float]:
    return [t / tokens for t in times]


def compare_run(procs: dict, batch: int, mode: str, *, new_tokens: int, peer_new_tokens: int,
                warmup: int, steps: int, device, bound_tokens_per_s: float) -> dict:
    """One (batch, mode): every side's first call, then interleaved timed calls."""
    counts = {side: peer_new_tokens if side == "transformers" else new_tokens for side in procs}
    firsts = {side: p.start_run(batch, mode, counts[side]) for side, p in procs.items()}
    times = common.interleaved(procs, warmup=warmup, steps=steps, device=device)
    out = {"batch": batch, "mode": mode, "sides": {}}
    for side, ts in times.items():
        s = common.summary(ts)
        s.update(new_tokens=counts[side], first_call_s=firsts[side]["first_call_s"],
                 tokens_per_s=batch * counts[side] / s["median_s"])
        out["sides"][side] = s
    if "gpt1f_compiled" in times:
        out["compile_s"] = firsts["gpt1f_compiled"]["first_call_s"] - out["sides"]["gpt1f_compiled"]["median_s"]
    peer = times.get("transformers")
    for side in ("gpt1f", "gpt1f_compiled"):
        if side not in times:
            continue
        if peer:    # tokens/s ratio per interleaved pair
            out[f"speedup_{side}"] = common.ratio_summary(per_token(peer, batch * counts["transformers"]),
                                                          per_token(times[side], batch * new_tokens))
        if batch == 1:
            out[f"bandwidth_fraction_{side}"] = out["sides"][side]["tokens_per_s"] / bound_tokens_per_s
    if mode == "greedy" and "transformers" in firsts:
        n = peer_new_tokens
        ours = [row[:n] for row in firsts["gpt1f"]["tokens"]]
        out["greedy_equals_transformers"] = ours == firsts["transformers"]["tokens"]
        if "gpt1f_compiled" in firsts:
            out["compiled_equals_eager"] = firsts["gpt1f_compiled"]["tokens"] == firsts["gpt1f"]["tokens"]
    return out


def run(quick: bool = False, device="cpu", compile: bool = True, *, warmup: int | None = None,
        steps: int | None = None, peer_new_tokens: int | None = None, batches=None,
        modes=MODES, threads: int | None = None, new_tokens: int | None = None) -> dict:
    """Every (batch, mode) on every side; returns a JSON-able dict."""
    device = torch.device(device)
    cfg = bench_config(quick)
    batches = batches or (QUICK["batches"] if quick else BATCHES)
    prompt_len = QUICK["prompt_len"] if quick else PROMPT_LEN
    new_tokens = new_tokens or (QUICK["new_tokens"] if quick else NEW_TOKENS)
    peer_new_tokens = min(peer_new_tokens or new_tokens, new_tokens)
    warmup = warmup if warmup is not None else 0 if quick else 1
    steps = steps if steps is not None else 2 if quick else 3
    threads = threads or torch.get_num_threads()
    sides = ["gpt1f"] + (["gpt1f_compiled"] if compile else []) \
        + (["transformers"] if transformers_available() else [])
    bandwidth = copy_bandwidth(device, n_bytes=(1 << 24) if quick else (1 << 28))
    context = prompt_len + new_tokens / 2                 # the average live context while decoding
    per_token_bytes = bytes_per_new_token(cfg, context)
    bound = bandwidth["bytes_per_s"] / per_token_bytes
    result = {"config": vars(cfg), "prompt_len": prompt_len, "new_tokens": new_tokens,
              "peer_new_tokens": peer_new_tokens, "top_k": TOP_K, "dtype": "float32",
              "device": str(device), "threads": threads, "warmup": warmup, "steps": steps,
              "sides": sides, "isolation": "a process per side",
              "peer": "transformers OpenAIGPTLMHeadModel.generate (no KV cache)"
              if "transformers" in sides else "not available",
              "peer_note": (f"transformers timed over {peer_new_tokens} new tokens, gpt1f over "
                            f"{new_tokens}: shorter prefixes favour the peer"
                            if peer_new_tokens < new_tokens else "both sides over the same tokens"),
              "copy_bandwidth": bandwidth, "bound_context_tokens": context,
              "bytes_per_new_token_batch1": per_token_bytes, "bound_tokens_per_s_batch1": bound,
              "runs": {}}
    args = (["--quick"] if quick else []) + ["--device", str(device), "--threads", str(threads)]
    procs = {side: SideProcess("benchmarks.bench_generate", ["--serve", side, *args])
             for side in sides}
    try:
        for batch in batches:
            for mode in modes:
                result["runs"][f"b{batch}_{mode}"] = compare_run(
                    procs, batch, mode, new_tokens=new_tokens, peer_new_tokens=peer_new_tokens,
                    warmup=warmup, steps=steps, device=device, bound_tokens_per_s=bound)
    finally:
        for p in procs.values():
            p.close()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--peer_new_tokens", type=int,
                        help="new tokens per transformers call (default: as many as gpt1f's)")
    parser.add_argument("--new_tokens", type=int,
                        help=f"new tokens per gpt1f call (default {NEW_TOKENS}; quick "
                        f"{QUICK['new_tokens']}); fewer only for a smoke run")
    parser.add_argument("--batches", help="comma-separated batch sizes (default 1,8; quick 1,2)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--serve", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.serve:
        serve(args.serve, args.quick, args.device)
        return
    start = time.perf_counter()
    result = run(args.quick, args.device, args.compile, warmup=args.warmup, steps=args.steps,
                 peer_new_tokens=args.peer_new_tokens,
                 batches=[int(b) for b in args.batches.split(",")] if args.batches else None,
                 modes=[m for m in args.modes.split(",") if m], threads=args.threads,
                 new_tokens=args.new_tokens)
    result["environment"] = common.machine_info(args.device)
    result["wall_s"] = time.perf_counter() - start
    print(json.dumps(result))


if __name__ == "__main__":
    main()

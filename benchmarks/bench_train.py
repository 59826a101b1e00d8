"""The ROCStories training step and multiple-choice eval forward: gpt1f against transformers.

The peer is transformers' ``OpenAIGPTDoubleHeadsModel`` holding the same weights, trained the usual
PyTorch way: ``loss.backward()``, ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW(foreach=True)``.
gpt1f runs ``gpt1f.train.make_train_step`` (OpenAI Adam, global-norm clipping, updates in place)
in the mode ``train_rocstories.py`` uses on this device for this model by default
(``gpt1f.finetune.flags.auto_compile``: the regional compile for the 117M model on CPU, the whole
step on CUDA), or as ``--no-compile`` / ``--regional`` / ``--whole-step`` say. With ``--port-dir``
(or ``$GPT1F_PORT_DIR``) the 2018 PyTorch port is a third peer (``benchmarks/port2018.py``).
Every side sees the same batch and weights in the same dtype with dropout 0.1 everywhere, and the
sides run interleaved step by step after warm-up, each in its own interpreter (``--in-process``
puts them in this one). ``--eager-side`` and ``--step-side`` add gpt1f's eager and whole-step
compiled steps as further sides; ``finetune_estimate`` gives each side's whole ROCStories fine-tune
(138 updates of 32 stories), compile time included. ``--cold-cache`` gives each side a fresh
inductor cache, so gpt1f's first call is a cold compile. MFU is reported against the FLOPs of the
padded batch (``mfu``) and of its real tokens (``mfu_real``).

    python -m benchmarks.bench_train [--quick] [--device cuda] [--no-compile] [--eager-side] [--cold-cache]
    python -m benchmarks.bench_train --port-dir PATH [--step-side] [--alone 2] [--regional] [--whole-step]
    python -m benchmarks.bench_train --no-packed [--compile-mode default]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import tempfile
import time

import torch

import gpt1f
from gpt1f import random as grandom

from . import common

N_STORIES, N_CHOICES, ROC_CTX = 8, 2, 77   # the ROCStories fine-tuning batch of the paper's code
MIN_LEN_FRACTION = 40 / 77                 # ROCStories sequences run ~40-77 tokens
LM_COEF = 0.5
QUICK_CFG = dict(n_vocab=500, n_special=3, n_ctx=24, n_embd=64, n_head=4, n_layer=2)
ROC_UPDATES, ROC_STORIES_PER_UPDATE = 138, 32  # the paper's run: 3 epochs of 46 updates of 32 stories
KEYS = 1024                                     # dropout keys made up front, used in turn
PEERS = {"transformers": "", "port": "_port"}   # peer side -> suffix of its result keys
MODES = ("default", "eager", "regional", "step")  # gpt1f step modes (see mode_of)


def bench_config(quick: bool) -> gpt1f.Config:
    return gpt1f.Config(**QUICK_CFG) if quick else gpt1f.Config.gpt1(n_ctx=ROC_CTX)


# ---------------------------------------------------------------------------------------------
# The batch


def rocstories_batch(cfg: gpt1f.Config, *, n_stories: int = N_STORIES, seed: int = 0,
                     device="cpu") -> dict[str, torch.Tensor]:
    """A batch shaped like ROCStories fine-tuning, with lengths drawn from a fixed seed.

    Sequence ``[_start_, tokens..., _classify_]`` then zero padding; ``mask`` is 1 over the real
    tokens. tokens [B, 2, T] int64, mask [B, 2, T] float32, label [B] int64, lengths [B, 2].
    """
    gen = torch.Generator().manual_seed(seed)
    t = cfg.n_ctx
    lengths = torch.randint(math.ceil(MIN_LEN_FRACTION * t), t + 1, (n_stories, N_CHOICES), generator=gen)
    position = torch.arange(t)
    real = position < lengths[..., None]
    tokens = torch.randint(0, cfg.n_vocab, (n_stories, N_CHOICES, t), generator=gen) * real
    tokens[..., 0] = cfg.n_vocab                                             # _start_
    tokens = torch.where(position == lengths[..., None] - 1, cfg.clf_token, tokens)
    batch = {"tokens": tokens, "mask": real.float(),
             "label": torch.randint(0, N_CHOICES, (n_stories,), generator=gen), "lengths": lengths}
    return {k: v.to(device) for k, v in batch.items()}


def gpt1f_batch(batch) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("tokens", "mask", "label")}


def hf_inputs(batch) -> dict[str, torch.Tensor]:
    """The same batch as transformers wants it: LM labels -100 off the mask, the clf positions."""
    return {"input_ids": batch["tokens"], "mc_token_ids": batch["lengths"] - 1,
            "labels": torch.where(batch["mask"].bool(), batch["tokens"], -100),
            "mc_labels": batch["label"]}


# ---------------------------------------------------------------------------------------------
# The two sides


def hf_model(cfg: gpt1f.Config, params, *, device="cpu", dtype=torch.float32):
    """transformers' OpenAIGPTDoubleHeadsModel holding ``params`` (built in memory, no files)."""
    from transformers import OpenAIGPTConfig, OpenAIGPTDoubleHeadsModel

    from gpt1f import hf

    model = OpenAIGPTDoubleHeadsModel(OpenAIGPTConfig(**hf.hf_config(cfg)))
    we = params["model/we:0"]
    state = {"transformer.tokens_embed.weight": we[:cfg.pos_offset],
             "transformer.positions_embed.weight": we[cfg.pos_offset:]}
    for hf_name, (tf_name, how) in hf.name_table(cfg).items():
        prefix = "" if hf_name.startswith("multiple_choice_head") else "transformer."
        state[prefix + hf_name] = hf.TRANSFORMS[how][0](params[tf_name])
    state["lm_head.weight"] = state["transformer.tokens_embed.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"peer weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.to(device=device, dtype=dtype)


def autocast(device, dtype):
    """bf16 autocast on CUDA when asked; nothing otherwise."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def hf_train_step(model, inputs, *, amp_dtype=None, device="cpu"):
    """``step()``: forward, LM + multiple-choice loss, backward, clip, AdamW. Returns the loss."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=6.25e-5, weight_decay=0.01, foreach=True)

    def step():
        with autocast(device, amp_dtype):
            out = model(**inputs)
            loss = out.mc_loss + LM_COEF * out.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def gpt1f_train_step(cfg, params, batch, *, compile: bool | str, compile_kwargs=None, amp_dtype=None,
                     device="cpu", packed: bool | None = None):
    """``step()``: one ``gpt1f.train`` step (OpenAI Adam, updates in place) on a fresh dropout
    key per step, under autocast when ``amp_dtype`` is given (as ``train_rocstories.py --dtype``:
    parameters and optimizer stay float32, the optimizer's elementwise maths is not autocast).
    Returns ``(step, compile_seconds)``; compiling happens in the first call."""
    from gpt1f import optim, train

    opt = optim.openai_adam(t_total=ROC_UPDATES)
    state = opt.init(params)
    if torch.device(device).type == "cuda":
        # Fixed addresses let CUDA graphs replay a step that writes params and moments in place.
        for t in [*params.values(), *state.mu.values(), *state.nu.values(), state.count, state.skipped]:
            torch._dynamo.mark_static_address(t)
    make = train.make_train_step(cfg, opt, lm_coef=LM_COEF, inplace=True, compile=compile,
                                 packed=packed, **(compile_kwargs or {}))
    keys = grandom.split(grandom.key(0, device=device), KEYS)   # no host-to-device copy per step
    counter = [0]

    def step():
        nonlocal state
        key = keys[counter[0] % KEYS]
        counter[0] += 1
        with autocast(device, amp_dtype):
            _, state, metrics = make(params, state, batch, key)
        return metrics["loss"]

    compile_s = common.timed(step, device)   # first call: tracing + compiling when compile=True
    return step, compile_s


def gpt1f_eval(cfg, params, tokens, *, compile: bool | str, compile_kwargs=None, amp_dtype=None,
               device="cpu", packed: bool | None = None):
    """``score()``: multiple-choice logits [B, C] without the LM head; compiled in the first call
    as one graph (``compile=True``) or with regional blocks (``'regional'``), as the fine-tuning
    loop's scorer (``gpt1f.finetune.evaluation.make_scorer``)."""
    from gpt1f import regional
    from gpt1f.packing import compile_packed

    def score(params, tokens):
        with autocast(device, amp_dtype):
            return gpt1f.multiple_choice_logits(params, tokens, cfg=cfg, packed=packed)
    if compile == "regional":
        score = regional.with_regions(score)
    elif compile:
        score = compile_packed(score, fullgraph=True, **(compile_kwargs or {}))

    @torch.no_grad()
    def call():
        return score(params, tokens)
    compile_s = common.timed(call, device)
    return call, compile_s


def hf_eval(model, inputs, *, amp_dtype=None, device="cpu"):
    model.eval()
    ids, mc = inputs["input_ids"], inputs["mc_token_ids"]

    @torch.no_grad()
    def call():
        with autocast(device, amp_dtype):
            return model(ids, mc_token_ids=mc).mc_logits
    return call


# ---------------------------------------------------------------------------------------------
# The benchmarks


def compare(name, fns, *, tokens, flop, flop_real, peak, warmup, steps, device) -> dict:
    """Interleaved timing of ``fns`` (``gpt1f`` first, then the others) and their MFU, against the
    padded batch's FLOPs (``mfu``) and the real tokens' (``mfu_real``)."""
    times = common.interleaved(fns, warmup=warmup, steps=steps, device=device)
    out = {"benchmark": name, "flop_per_step": flop, "flop_per_step_real": flop_real, "sides": {}}
    for side, ts in times.items():
        s = common.summary(ts)
        s["mfu"] = common.mfu(flop, s["median_s"], peak)
        s["mfu_real"] = common.mfu(flop_real, s["median_s"], peak)
        s["tokens_per_s"] = tokens / s["median_s"]
        out["sides"][side] = s
    for peer, suffix in PEERS.items():
        if peer not in times:
            continue
        out["speedup" + suffix] = common.ratio_summary(times[peer], times["gpt1f"])
        for side in GPT1F_SIDES:
            if side in times:
                out[f"speedup{suffix}_{side[len('gpt1f_'):]}"] = common.ratio_summary(times[peer], times[side])
    for side in GPT1F_SIDES:
        if side in times:
            out[f"gpt1f_over_{side[len('gpt1f_'):]}"] = common.ratio_summary(times[side], times["gpt1f"])
    return out


def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
        return True
    except Exception:
        return False


# gpt1f's extra sides: (compile, packed). gpt1f_step is the whole step as one graph over the padded
# batch, the compiled step as it was before the padding-free path (whose whole-step compile, with
# a dynamic number of real tokens, did not finish on the 2-core CPU).
GPT1F_SIDES = {"gpt1f_eager": (False, None), "gpt1f_step": (True, False)}


class Setup:
    """What every side builds from: config, batch, weights and compile settings of one run.

    ``mode``: gpt1f's train step and scorer, ``'default'`` (what ``train_rocstories.py`` runs here:
    ``gpt1f.finetune.flags.auto_compile``), ``'eager'``, ``'regional'`` or ``'step'`` (the whole
    step as one graph)."""

    def __init__(self, quick: bool, device, mode: str, n_stories: int | None,
                 compile_mode: str | None, packed: bool | None = None, port: str | None = None):
        from gpt1f.finetune.flags import auto_compile
        self.device = torch.device(device)
        self.packed, self.port, self.mode = packed, port, mode
        cuda = self.device.type == "cuda"
        self.quick, self.cfg = quick, bench_config(quick)
        self.train_compile = {"default": auto_compile(str(self.device), self.cfg), "eager": False,
                              "regional": "regional", "step": True}[mode]
        self.n_stories = n_stories or (ROC_STORIES_PER_UPDATE if cuda and not quick else N_STORIES)
        self.amp_dtype = torch.bfloat16 if cuda else None
        self.compile_mode = compile_mode or ("max-autotune" if cuda and not quick else None)
        self.compile_kwargs = ({"mode": self.compile_mode}
                               if self.compile_mode and self.compile_mode != "default" else {})
        self.batch = rocstories_batch(self.cfg, n_stories=self.n_stories, device=self.device)
        params = gpt1f.init_params(self.cfg, seed=0, dtype=torch.float32)
        self.params = {k: v.to(self.device) for k, v in params.items()}

    def argv(self) -> list[str]:
        """The flags that rebuild this setup in a child (``--serve``)."""
        return ([*(["--quick"] if self.quick else []), "--device", str(self.device),
                 "--stories", str(self.n_stories), "--threads", str(torch.get_num_threads()),
                 "--mode", self.mode]
                + ([] if self.packed is None else ["--packed" if self.packed else "--no-packed"])
                + (["--port-dir", self.port] if self.port else [])
                + (["--compile-mode", self.compile_mode] if self.compile_mode else []))

    def side_mode(self, side: str) -> tuple[bool | str, bool | None]:
        """(compile, packed) of a gpt1f side."""
        return (self.train_compile, self.packed) if side == "gpt1f" else GPT1F_SIDES[side]

    def build(self, side: str, part: str):
        """``(fn, first_call_s, output)``: a no-argument step of ``side`` for ``part`` ('train' or
        'eval'), the seconds its first call took (compiling, for gpt1f), and for eval its scores."""
        kw = dict(amp_dtype=self.amp_dtype, device=self.device)
        if side == "gpt1f" or side in GPT1F_SIDES:
            compile, packed = self.side_mode(side)
            kw.update(compile=compile, compile_kwargs=self.compile_kwargs, packed=packed)
            if part == "train":   # it updates its own copy of the weights in place
                fn, first_s = gpt1f_train_step(self.cfg, {k: v.clone() for k, v in self.params.items()},
                                               gpt1f_batch(self.batch), **kw)
                return fn, first_s, None
            fn, first_s = gpt1f_eval(self.cfg, self.params, self.batch["tokens"], **kw)
            return fn, first_s, fn()
        if side == "transformers":
            model = hf_model(self.cfg, self.params, device=self.device)
            make = hf_train_step if part == "train" else hf_eval
            fn = make(model, hf_inputs(self.batch), **kw)
        elif side == "port":
            from . import port2018
            modules = port2018.load_modules(port2018.port_dir(self.port))
            net = port2018.model(self.cfg, self.params, modules).to(self.device)
            fn = (port2018.train_step(self.cfg, net, gpt1f_batch(self.batch), modules, lm_coef=LM_COEF,
                                      t_total=ROC_UPDATES) if part == "train"
                  else port2018.eval_call(self.cfg, net, self.batch["tokens"]))
        else:
            raise ValueError(f"unknown side {side!r} or part {part!r}")
        first_s = common.timed(fn, self.device)
        return fn, first_s, fn() if part == "eval" else None


def serve(setup: Setup, side: str, part: str) -> None:
    """A child of :class:`common.StepProcess`: build one side and step it on request."""
    fn, first_s, output = setup.build(side, part)
    info = {"side": side, "part": part, "first_call_s": first_s,
            "output": output.float().tolist() if output is not None else None}
    if setup.device.type == "cuda":
        info["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(setup.device)
    common.serve_steps(fn, setup.device, info)


def fresh_cache_env() -> dict[str, str]:
    """A child environment whose inductor cache starts empty: its first compile is cold."""
    return {"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="gpt1f_inductor_")}


def finetune_estimate(result: dict, n_stories: int) -> dict:
    """A whole ROCStories fine-tune (``ROC_UPDATES`` updates of ``ROC_STORIES_PER_UPDATE``
    stories) from this run's medians: first call (compiling, for the compiled side) plus the
    remaining steps of ``n_stories`` stories. An estimate, not a run: evaluation, data loading and
    the last partial batch are left out."""
    n_steps = ROC_UPDATES * ROC_STORIES_PER_UPDATE // n_stories
    train = result["train"]
    out = {"steps": n_steps, "stories_per_step": n_stories,
           "method": "first call (compile) + (steps - 1) x median step, per side"}
    for side, s in train["sides"].items():
        out[f"{side}_s"] = train["first_call_s"][side] + (n_steps - 1) * s["median_s"]
    for side in [s for s in train["sides"] if s != "gpt1f"]:
        out[f"gpt1f_over_{side}"] = out[f"{side}_s"] / out["gpt1f_s"]
    return out


def alone(setup: Setup, sides: list[str], *, rounds: int, warmup: int, steps: int,
          cold_cache: bool) -> dict:
    """The train step of each side alone: ``rounds`` times, side after side, a fresh process that
    builds, warms up and times ``steps`` steps with nothing else stepping beside it. The ratio of
    each round's medians and its spread over the rounds."""
    per_round = []
    for _ in range(rounds):
        medians = {}
        for side in sides:
            proc = common.StepProcess("benchmarks.bench_train", ["--serve", f"{side}:train", *setup.argv()],
                                      fresh_cache_env() if cold_cache else None)
            try:
                times = common.interleaved({side: proc}, warmup=warmup, steps=steps, device=setup.device)[side]
            finally:
                proc.close()
            medians[side] = common.summary(times)
        per_round.append(medians)
    out = {"method": "each side alone in a fresh process, one after the other, every round",
           "rounds": per_round,
           "sides": {side: {"median_s": statistics.median(r[side]["median_s"] for r in per_round)}
                     for side in sides}}
    for peer, suffix in PEERS.items():
        if peer in sides:
            out["speedup" + suffix] = common.ratio_summary([r[peer]["median_s"] for r in per_round],
                                                           [r["gpt1f"]["median_s"] for r in per_round])
    return out


def run(quick: bool = False, device="cpu", mode: str = "default", *, warmup: int | None = None,
        steps: int | None = None, peak_flops: float | None = None,
        n_stories: int | None = None, compile_mode: str | None = None,
        processes: bool = True, eager_side: bool = False, step_side: bool = False,
        cold_cache: bool = False, packed: bool | None = None, port: str | None = None,
        alone_rounds: int = 0) -> dict:
    """Train step and eval forward at the ROCStories shape; returns a JSON-able dict.

    On CPU the batch is 8 stories (the issue's comparison); on CUDA 32, the paper's update, so the
    median step times 138 is the fine-tune's step time. bf16 autocast on CUDA, float32 on CPU.
    ``mode``: gpt1f's step (:class:`Setup`). ``compile_mode`` goes to ``torch.compile`` (default:
    ``max-autotune`` on CUDA, inductor's default on CPU). ``processes`` (the default) gives each
    side its own interpreter, stepped in turn from here (:class:`common.StepProcess`); ``False``
    runs them in this process. ``eager_side`` / ``step_side`` add gpt1f's eager / whole-step
    compiled step (``gpt1f_eager``, ``gpt1f_step``); ``cold_cache`` gives each child process an
    empty inductor cache; ``packed`` goes to gpt1f's step and scorer (default: padding-free on
    CPU); ``port`` (default ``$GPT1F_PORT_DIR``) a checkout of the 2018 port, a side when given;
    ``alone_rounds`` adds ``train_alone`` (:func:`alone`), the conservative reading.
    """
    from . import port2018
    port = port2018.port_dir(port)
    setup = Setup(quick, device, mode, n_stories, compile_mode, packed, str(port) if port else None)
    device, cfg, batch = setup.device, setup.cfg, setup.batch
    warmup = warmup if warmup is not None else (1 if quick else 3)
    steps = steps if steps is not None else (3 if quick else 8)
    if peak_flops is None:
        peak_flops = common.benchmark_peak(device, quick)["flops_per_s"]
    tokens = batch["tokens"].numel()
    lengths = batch["lengths"].flatten().tolist()
    sides = (["gpt1f"] + (["gpt1f_eager"] if eager_side and setup.train_compile else [])
             + (["gpt1f_step"] if step_side and setup.train_compile is not True else [])
             + (["transformers"] if transformers_available() else []) + (["port"] if port else []))
    result = {"config": {**vars(cfg), "n_stories": setup.n_stories, "n_choices": N_CHOICES,
                         "tokens_per_batch": tokens, "real_tokens": int(batch["mask"].sum()),
                         "lm_coef": LM_COEF, "dtype": "float32",
                         "amp": str(setup.amp_dtype).replace("torch.", "") if setup.amp_dtype else None},
              "mode": mode, "compile": setup.train_compile, "compile_kwargs": setup.compile_kwargs,
              "warmup": warmup, "steps": steps, "peak_flops_per_s": peak_flops,
              "peers": [s for s in sides if not s.startswith("gpt1f")],
              "packed": packed, "sides": sides,
              "train_compile": {True: "whole step", "regional": "regional", False: "eager"}[setup.train_compile],
              "inductor_cache": "cold (a fresh cache per process)" if cold_cache else
              "as found (warm if this machine compiled the same graph before)",
              "isolation": "a process per side" if processes else "one process"}
    timing = dict(tokens=tokens, peak=peak_flops, warmup=warmup, steps=steps, device=device)
    flops = {"train": common.train_flops(cfg, tokens),
             "eval": common.forward_flops(cfg, tokens, lm_head=False)}
    flops_real = {"train": common.train_flops_real(cfg, lengths),
                  "eval": common.forward_flops_real(cfg, lengths, lm_head=False)}
    notes = {"train": "6NT + 12 L T_ctx E T over the padded batch; real: 6 N n_real + 12 L E sum(len^2)",
             "eval": "forward without the LM head: (6NT + 12 L T_ctx E T)/3 - 2 V E T; real: the same "
                     "over the real tokens"}
    for part in ("train", "eval"):
        if processes:
            fns = {side: common.StepProcess("benchmarks.bench_train",
                                            ["--serve", f"{side}:{part}", *setup.argv()],
                                            fresh_cache_env() if cold_cache else None)
                   for side in sides}
            firsts = {side: p.info["first_call_s"] for side, p in fns.items()}
            outputs = {side: p.info["output"] for side, p in fns.items()}
            gpu_peaks = {side: p.info["peak_gpu_memory_bytes"] for side, p in fns.items()
                         if "peak_gpu_memory_bytes" in p.info}
        else:
            built = {side: setup.build(side, part) for side in sides}
            fns = {side: b[0] for side, b in built.items()}
            firsts = {side: b[1] for side, b in built.items()}
            outputs = {side: b[2].float().tolist() if b[2] is not None else None
                       for side, b in built.items()}
            gpu_peaks = {}
        try:
            result[part] = compare(f"{part}_step" if part == "train" else "eval_forward", fns,
                                   flop=flops[part], flop_real=flops_real[part], **timing)
        finally:
            for fn in fns.values():
                if isinstance(fn, common.StepProcess):
                    fn.close()
        result[part]["compile_s"] = firsts["gpt1f"]
        result[part]["first_call_s"] = firsts
        result[part]["flop_note"] = notes[part]
        if gpu_peaks:
            result[part]["peak_gpu_memory_bytes"] = gpu_peaks   # each side's process, first call included
        for peer, suffix in PEERS.items():
            if part == "eval" and peer in outputs:   # same weights: the same scores
                diff = torch.tensor(outputs["gpt1f"]) - torch.tensor(outputs[peer])
                result["eval_max_abs_diff" + suffix] = diff.abs().max().item()
        del fns
    if alone_rounds and processes:   # gpt1f's mode against the peers
        result["train_alone"] = alone(setup, [s for s in sides if s not in GPT1F_SIDES],
                                      rounds=alone_rounds, warmup=warmup, steps=steps, cold_cache=cold_cache)
    if setup.n_stories == ROC_STORIES_PER_UPDATE:
        result["train"]["rocstories_run_s"] = {
            side: ROC_UPDATES * s["median_s"] for side, s in result["train"]["sides"].items()}
    result["finetune_estimate"] = finetune_estimate(result, setup.n_stories)
    # The same product once more: against the peak above, how much busier the machine was by the end.
    result["peak_flops_per_s_at_end"] = common.benchmark_peak(device, quick)["flops_per_s"]
    return result


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="gpt1f's step compiled as train_rocstories.py compiles it here (default); "
                        "--no-compile: eager")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="gpt1f's step: train_rocstories.py's default here, eager, regional or whole step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--stories", type=int, help="stories per batch (default 8 on CPU, 32 on CUDA)")
    parser.add_argument("--compile-mode", help="torch.compile mode (default max-autotune on CUDA)")
    parser.add_argument("--in-process", dest="processes", action="store_false",
                        help="run both sides in this process (default: a process per side)")
    parser.add_argument("--eager-side", action="store_true",
                        help="also time gpt1f's eager step, and estimate a whole fine-tune both ways")
    parser.add_argument("--cold-cache", action="store_true",
                        help="a fresh inductor cache per side process: gpt1f's first call compiles cold")
    parser.add_argument("--packed", action=argparse.BooleanOptionalAction, default=None,
                        help="gpt1f's padding-free path (default: on for CPU, off for CUDA)")
    parser.add_argument("--regional", action="store_true",
                        help="gpt1f's step with regional compilation (gpt1f.regional)")
    parser.add_argument("--whole-step", action="store_true",
                        help="gpt1f's step compiled as one graph (make_train_step(compile=True))")
    parser.add_argument("--step-side", action="store_true",
                        help="also time gpt1f's whole-step compiled step as a side (gpt1f_step)")
    parser.add_argument("--alone", type=int, default=0, metavar="ROUNDS",
                        help="also time each side's train step alone, side after side, ROUNDS times")
    parser.add_argument("--port-dir", help="a checkout of huggingface/pytorch-openai-transformer-lm: "
                        "the 2018 port as a peer (default: $GPT1F_PORT_DIR)")
    parser.add_argument("--serve", metavar="SIDE:PART", help=argparse.SUPPRESS)
    return parser


def mode_of(args) -> str:
    """gpt1f's mode from the flags (``--mode`` wins, then --no-compile, --regional, --whole-step)."""
    if args.mode:
        return args.mode
    if not args.compile:
        return "eager"
    return "regional" if args.regional else "step" if args.whole_step else "default"


def main(argv=None) -> None:
    args = arg_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = mode_of(args)
    if args.serve:
        side, _, part = args.serve.partition(":")
        serve(Setup(args.quick, args.device, mode, args.stories, args.compile_mode, args.packed,
                    args.port_dir), side, part)
        return
    start, started = time.perf_counter(), time.time()
    result = run(args.quick, args.device, mode, warmup=args.warmup, steps=args.steps,
                 n_stories=args.stories, compile_mode=args.compile_mode, processes=args.processes,
                 eager_side=args.eager_side, step_side=args.step_side, cold_cache=args.cold_cache,
                 packed=args.packed, port=args.port_dir, alone_rounds=args.alone)
    result["wall_s"] = time.perf_counter() - start
    print(json.dumps(common.with_machine_and_date(result, args.device, started)))


if __name__ == "__main__":
    main()

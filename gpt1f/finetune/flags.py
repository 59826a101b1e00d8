"""The flags every fine-tuning command shares, their checks, and what they build.

Names and defaults are the TF original's ``train.py`` (effective batch 32 = ``--n_batch 8`` x
``--accum 4``), then this project's additions. ``train_rocstories.py`` and ``python -m
gpt1f.finetune`` add their data flags to these.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np
import torch

from .. import download, schedules
from ..config import ACTIVATIONS, Config, PRETRAINED_N_CTX
from ..lora import DEFAULT_TARGETS
from .errors import BadInput
from .loop import DPSettings, LoraSettings, Settings, make_optimizer


def add_flags(p: argparse.ArgumentParser, *, submission_name: str) -> None:
    # The original train.py's flags, names and defaults.
    p.add_argument("--desc", type=str, default=None, help="run name (default: the dataset's)")
    p.add_argument("--log_dir", type=str, default="log/")
    p.add_argument("--save_dir", type=str, default="save/")
    p.add_argument("--data_dir", type=str, default="data/")
    p.add_argument("--submission_dir", type=str, default="submission/")
    p.add_argument("--submit", action="store_true", help="write the test predictions")
    p.add_argument("--analysis", action="store_true", help="print best valid and test scores")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n_iter", type=int, default=3, help="epochs")
    p.add_argument("--n_batch", type=int, default=8, help="examples per micro-batch")
    p.add_argument("--max_grad_norm", type=float, default=1)
    p.add_argument("--lr", type=float, default=6.25e-5)
    p.add_argument("--lr_warmup", type=float, default=0.002)
    p.add_argument("--n_ctx", type=int, default=512)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--embd_pdrop", type=float, default=0.1)
    p.add_argument("--attn_pdrop", type=float, default=0.1)
    p.add_argument("--resid_pdrop", type=float, default=0.1)
    p.add_argument("--clf_pdrop", type=float, default=0.1)
    p.add_argument("--l2", type=float, default=0.01)
    p.add_argument("--vector_l2", action="store_true")
    p.add_argument("--afn", type=str, default="gelu", choices=ACTIVATIONS)
    p.add_argument("--lr_schedule", type=str, default="warmup_linear",
                   choices=sorted(schedules.SCHEDULES))
    p.add_argument("--encoder_path", type=str, default=None,
                   help="encoder_bpe_40000.json (default: --weights_dir's if there, else the packaged copy)")
    p.add_argument("--bpe_path", type=str, default=None,
                   help="vocab_40000.bpe (default: --weights_dir's if there, else the packaged copy)")
    p.add_argument("--n_transfer", type=int, default=12,
                   help="pre-trained blocks to load; 0: embeddings only; -1: train from scratch")
    p.add_argument("--lm_coef", type=float, default=0.5)
    p.add_argument("--b1", type=float, default=0.9)
    p.add_argument("--b2", type=float, default=0.999)
    p.add_argument("--e", type=float, default=1e-8)
    # Additions.
    p.add_argument("--accum", type=int, default=4,
                   help="micro-batches per update: the effective batch is n_batch * accum")
    p.add_argument("--seeds", type=int, default=1,
                   help="run seeds seed .. seed+N-1 and print the median")
    p.add_argument("--device", type=str, default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", type=str, default="fp32", choices=("fp32", "bf16"),
                   help="bf16: autocast the forward (parameters and optimizer stay float32)")
    p.add_argument("--compile", nargs="?", const="step", choices=COMPILE_MODES, default=None,
                   help="torch.compile the train step and eval forward: 'step' (the default value) "
                   "compiles each as one graph, 'regional' one block for every layer plus the dropout "
                   "of we and the optimizer update (gpt1f.regional; a short compile). Default: 'step' "
                   "on CUDA, 'regional' on CPU for GPT-1-sized models, eager otherwise and under "
                   "torchrun (see gpt1f.finetune.flags.auto_compile)")
    p.add_argument("--no-compile", "--no_compile", dest="compile", action="store_const", const="off",
                   help="run eagerly")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's; 1 is fastest on a busy machine)")
    p.add_argument("--limit_heap", action="store_true",
                   help="gpt1f.memory.limit_heap_retention(): freed tensors leave the process "
                   "(lower CPU peak RSS; see benchmarks/results/*_memory.json)")
    p.add_argument("--save_every", type=int, default=100,
                   help="checkpoint every N updates (and at every epoch end); 0: epoch ends only")
    p.add_argument("--resume", action="store_true", help="continue from save_dir/desc/latest")
    p.add_argument("--overwrite", action="store_true",
                   help="delete save_dir/desc's checkpoints of an earlier run and start over")
    p.add_argument("--plot", action="store_true", help="write log_dir/desc.png (needs matplotlib)")
    p.add_argument("--weights_dir", type=str, default=None,
                   help="release folder (default: $GPT1F_WEIGHTS, else <repo>/weights)")
    p.add_argument("--weights_url", type=str, default=None,
                   help="download missing release files from here (default: the original repo)")
    p.add_argument("--weights_checksums", type=str, default=None,
                   help="JSON file {name: git-blob SHA-1} overriding the release table")
    p.add_argument("--offline", action="store_true",
                   help="never download; fail if release files are missing")
    p.add_argument("--submission_name", type=str, default=submission_name,
                   help="file name of the predictions in submission_dir/desc/")
    # Research modes (gpt1f.ensemble, gpt1f.dp, gpt1f.lora).
    p.add_argument("--vmap_seeds", action="store_true",
                   help="with --seeds N: advance the N runs together in one vmapped step")
    p.add_argument("--dp_clip", type=float, default=None,
                   help="DP-SGD: clip every example's gradient to this global norm")
    p.add_argument("--dp_noise", type=float, default=None,
                   help="DP-SGD: noise multiplier sigma (noise std sigma * dp_clip)")
    p.add_argument("--dp_epsilon", type=float, default=None,
                   help="DP-SGD: find the noise that spends this epsilon over the run (Opacus RDP)")
    p.add_argument("--dp_delta", type=float, default=None,
                   help="DP-SGD: the delta of the epsilon (default 1e-5; at most 1/examples)")
    p.add_argument("--lora_rank", type=int, default=None,
                   help="train rank-R LoRA adapters (and the clf head) over frozen weights")
    p.add_argument("--lora_targets", type=str, default=",".join(DEFAULT_TARGETS),
                   help="comma-separated weights to adapt, as in the TF names (e.g. attn/c_attn)")


# (flag, lowest, highest): every float flag must be finite and in its range
FLOAT_RANGES = (("lr", 0.0, float(np.finfo(np.float32).max)), ("b1", 0.0, 1.0), ("b2", 0.0, 1.0),
                ("e", 0.0, math.inf), ("l2", 0.0, math.inf), ("lr_warmup", 0.0, 1.0),
                ("lm_coef", 0.0, math.inf), ("max_grad_norm", -math.inf, math.inf),
                ("embd_pdrop", 0.0, 1.0), ("attn_pdrop", 0.0, 1.0), ("resid_pdrop", 0.0, 1.0),
                ("clf_pdrop", 0.0, 1.0))
HALF_OPEN = ("b1", "b2", "embd_pdrop", "attn_pdrop", "resid_pdrop", "clf_pdrop")   # [low, high)
POSITIVE = ("n_ctx", "n_iter", "n_batch", "accum", "seeds", "n_embd", "n_head", "n_layer")


def check_float_flags(args) -> None:
    """Every float flag finite and within its range, named in the error."""
    for name, low, high in FLOAT_RANGES:
        value = getattr(args, name)
        if not math.isfinite(value):
            raise BadInput(f"--{name}={value} must be a finite number"
                           + (" (0 turns clipping off)" if name == "max_grad_norm" else ""))
        upper_ok = value < high if name in HALF_OPEN else value <= high
        if not (low <= value and upper_ok):
            closing = ")" if name in HALF_OPEN else "]"
            raise BadInput(f"--{name}={value} must lie in [{low:g}, {high:g}{closing}")


def check_device(args) -> None:
    if args.device is None:
        return
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise BadInput(f"--device {args.device!r} is not a device; use cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise BadInput(f"--device {args.device}: only cpu and cuda[:N] can train here")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {args.device}: CUDA is not available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise BadInput(f"--device {args.device}: there are {torch.cuda.device_count()} CUDA devices")


def check_research_flags(args) -> None:
    """The research modes' flags: each complete, in range, and not combined where they cannot."""
    if args.vmap_seeds and args.seeds < 2:
        raise BadInput("--vmap_seeds needs --seeds N with N >= 2")
    dp_given = [f for f in ("dp_clip", "dp_noise", "dp_epsilon", "dp_delta") if getattr(args, f) is not None]
    if dp_given:
        if args.dp_clip is None:
            raise BadInput("DP-SGD needs --dp_clip C (and --dp_noise SIGMA or --dp_epsilon E)")
        if (args.dp_noise is None) == (args.dp_epsilon is None):
            raise BadInput("DP-SGD needs exactly one of --dp_noise SIGMA and --dp_epsilon E")
        for name in dp_given:
            value = getattr(args, name)
            if not (math.isfinite(value) and value > 0) and not (name == "dp_noise" and value == 0):
                raise BadInput(f"--{name}={value} must be a positive finite number")
        if args.dp_delta is not None and args.dp_delta >= 1:
            raise BadInput(f"--dp_delta={args.dp_delta} must lie in (0, 1)")
        if args.vmap_seeds or args.lora_rank is not None:
            raise BadInput("DP-SGD runs alone: drop --vmap_seeds / --lora_rank")
        if args.compile in COMPILE_MODES:
            raise BadInput("DP-SGD batches vary in size (Poisson sampling): drop --compile")
    if args.compile == "regional" and (args.vmap_seeds or args.lora_rank is not None):
        raise BadInput("--compile regional runs the plain step: drop it for --vmap_seeds / --lora_rank")
    if args.lora_rank is not None:
        if args.lora_rank < 1:
            raise BadInput(f"--lora_rank={args.lora_rank} must be at least 1")
        if args.vmap_seeds:
            raise BadInput("--lora_rank does not combine with --vmap_seeds")
        targets = lora_targets(args)
        if not targets:
            raise BadInput("--lora_targets names no weight")


def lora_targets(args) -> tuple[str, ...]:
    return tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())


def check_args(args) -> None:
    """Refuse impossible settings before anything is read or written."""
    for name in POSITIVE:
        if getattr(args, name) < 1:
            raise BadInput(f"--{name}={getattr(args, name)} must be at least 1")
    if args.n_ctx > PRETRAINED_N_CTX:
        raise BadInput(f"--n_ctx={args.n_ctx} exceeds {PRETRAINED_N_CTX}, the number of "
                       "position embeddings GPT-1 was trained with")
    if args.n_ctx < 8:
        raise BadInput(f"--n_ctx={args.n_ctx} leaves no room for an example")
    if args.save_every < 0:
        raise BadInput(f"--save_every={args.save_every} must be >= 0")
    if not -1 <= args.n_transfer <= args.n_layer:
        raise BadInput(f"--n_transfer={args.n_transfer} must lie in [-1, --n_layer={args.n_layer}]")
    if args.resume and args.overwrite:
        raise BadInput("--resume and --overwrite contradict each other")
    if args.threads is not None and args.threads < 1:
        raise BadInput(f"--threads={args.threads} must be at least 1")
    if args.n_embd % args.n_head:
        raise BadInput(f"--n_head={args.n_head} does not divide --n_embd={args.n_embd}")
    name = args.submission_name
    if not name or pathlib.PurePath(name).name != name or name in (".", ".."):
        raise BadInput(f"--submission_name={name!r} must be a plain file name")
    check_float_flags(args)
    check_device(args)
    check_research_flags(args)
    release_checksums(args)
    try:
        make_optimizer(settings(args, cfg=model_config(args, n_vocab=1, n_ctx=8)), t_total=1)
    except ValueError as e:
        raise BadInput(str(e).replace("Config.", "--")) from None


def device_name(args) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def model_config(args, *, n_vocab: int, n_ctx: int) -> Config:
    return Config(n_vocab=n_vocab, n_special=3, n_ctx=n_ctx, n_embd=args.n_embd,
                  n_head=args.n_head, n_layer=args.n_layer, afn=args.afn,
                  embd_pdrop=args.embd_pdrop, attn_pdrop=args.attn_pdrop,
                  resid_pdrop=args.resid_pdrop, clf_pdrop=args.clf_pdrop,
                  pretrained=args.n_transfer >= 0)


COMPILE_MODES = ("step", "regional")
REGIONAL_MIN_BLOCK_PARAMS = 20_000_000   # GPT-1's 12 blocks hold 85M; the tests' tiny configs < 0.1M


def auto_compile(device: str, cfg: Config, *, plain: bool = True) -> bool | str:
    """The compile mode when ``--compile`` is not given: the whole step on CUDA; on CPU, for the
    plain step (not DP-SGD, LoRA or vmapped seeds) of a model whose blocks hold at least
    ``REGIONAL_MIN_BLOCK_PARAMS``, the regional compile, which measured faster than eager over a
    whole 117M ROCStories fine-tune, cold compile included (README, "Speed on CPU"); eager for
    smaller models, whose runs are too short to pay a compile back, or without a C++ compiler."""
    if torch.device(device).type == "cuda":
        return True
    block_params = 12 * cfg.n_layer * cfg.n_embd ** 2
    return "regional" if plain and block_params >= REGIONAL_MIN_BLOCK_PARAMS and has_cpp_compiler() else False


def has_cpp_compiler() -> bool:
    """Whether inductor finds the C++ compiler it builds CPU kernels with."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
        return True
    except Exception:
        return False


def compile_setting(flag: str | None, *, device: str, cfg: Config, plain: bool) -> bool | str:
    """``--compile``'s value as ``make_train_step`` takes it: True, 'regional' or False."""
    if flag is None:
        return auto_compile(device, cfg, plain=plain)
    return {"step": True, "regional": "regional", "off": False}[flag]


def settings(args, *, cfg: Config, dp_noise: float | None = None) -> Settings:
    """The loop's settings from the flags (``dp_noise``: the noise found for --dp_epsilon)."""
    device = device_name(args)
    dp = None
    if args.dp_clip is not None:
        noise = args.dp_noise if args.dp_noise is not None else (dp_noise or 0.0)
        dp = DPSettings(args.dp_clip, noise, args.dp_delta or 1e-5)
    lora = LoraSettings(args.lora_rank, lora_targets(args)) if args.lora_rank else None
    return Settings(
        n_iter=args.n_iter, n_batch=args.n_batch, accum=args.accum, lm_coef=args.lm_coef,
        lr=args.lr, lr_warmup=args.lr_warmup, lr_schedule=args.lr_schedule, b1=args.b1,
        b2=args.b2, e=args.e, l2=args.l2, vector_l2=args.vector_l2, max_grad_norm=args.max_grad_norm,
        save_every=args.save_every, device=device, dtype=args.dtype,
        compile=compile_setting(args.compile, device=device, cfg=cfg, plain=not (dp or lora or args.vmap_seeds)),
        submit=args.submit, plot=args.plot, resume=args.resume, vmap_seeds=args.vmap_seeds,
        dp=dp, lora=lora)


def release_checksums(args) -> dict[str, str] | None:
    if args.weights_checksums is None:
        return None
    try:
        table = json.loads(pathlib.Path(args.weights_checksums).read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"--weights_checksums {args.weights_checksums}: {e}") from None
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in table.items()):
        raise BadInput(f"--weights_checksums {args.weights_checksums}: expected a JSON object "
                       '{"file name": "git-blob SHA-1", ...}')
    return {**download.RELEASE_SHA1, **table}


def text_encoder(args):
    """The BPE vocabulary from --encoder_path/--bpe_path, else the pair in --weights_dir when it
    holds both, else the release's copy shipped in the package (the same files: nothing to fetch)."""
    from ..text import TextEncoder

    paths = [args.encoder_path, args.bpe_path]
    if args.weights_dir is not None:
        folder = download.weights_dir(args.weights_dir)
        if all((folder / name).is_file() for name in download.VOCAB_NAMES):
            paths = [given or folder / name for given, name in zip(paths, download.VOCAB_NAMES)]
    try:
        return TextEncoder(*paths, download=False)
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(f"cannot load the BPE vocabulary: {e}") from None


def initial_params(args, cfg: Config, seed: int, *, n_class: int = 1) -> dict[str, torch.Tensor]:
    """Pre-trained weights for the first --n_transfer blocks (none for -1), the rest from ``seed``."""
    from ..params import init_params

    if args.n_transfer < 0:
        return init_params(cfg, seed=seed, n_class=n_class)
    from ..openai_release import load_openai

    try:
        params, _ = load_openai(args.weights_dir, cfg=cfg, n_transfer=args.n_transfer, seed=seed,
                                n_class=n_class, download=not args.offline,
                                base_url=args.weights_url, checksums=release_checksums(args))
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(f"cannot load the pre-trained weights: {e}\n(to train without them, pass "
                       "--n_transfer -1)") from None
    return params

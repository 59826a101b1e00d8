#!/usr/bin/env python3
"""Fine-tune GPT-1 on the ROCStories Cloze Test, as the TF original's train.py does, resumably.

    python train_rocstories.py --data_dir data/rocstories --submit --analysis
    python train_rocstories.py --data_dir data/rocstories --seeds 10        # the 10-run median
    python train_rocstories.py --dataset synthetic --data_dir data/synthetic --n_layer 2 \\
        --n_embd 64 --n_head 4 --n_transfer -1 --lm_coef 0 --embd_pdrop 0 --lr 1e-3 --n_iter 2 \\
        --analysis                       # a from-scratch model on generated stories, ~1 min on CPU

Flags keep the original's names and defaults (effective batch 32 = --n_batch 8 x --accum 4 on
one device). Outputs: ``log_dir/desc.jsonl`` (first line the arguments, then one line per
evaluation), checkpoints in ``save_dir/desc/{latest,best}`` (``--resume`` continues the latest,
falling back past a damaged step), ``submission_dir/desc/ROCStories.tsv`` with ``--submit``
(``--submission_name`` renames the file). Outputs of an earlier run are never replaced without
``--overwrite`` or ``--resume``, and one run at a time holds ``save_dir/desc`` (a lock).

Bad input (every flag, unwritable output folders) exits with code 2 and one line, before any
work; a non-finite loss, a skipped update or non-finite parameters stop the run (code 1) naming
the update and the last checkpoint, which never holds non-finite parameters; a failed checkpoint
write exits 1 leaving the earlier ones intact; Ctrl-C exits 130 saying where to resume from.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np
import optree
import torch
from tqdm.auto import tqdm

import gpt1f
from gpt1f import checkpoint, download, optim, rocstories, schedules
from gpt1f.checkpoint import CheckpointError, CheckpointWriteError
from gpt1f.checks import all_finite
from gpt1f.rocstories import DataError
from gpt1f.train import make_train_step

LOG_AT_UPDATES = (1000, 2000, 4000, 8000, 16000, 32000)  # extra first-epoch evaluations, as TF
LOG_KEYS = ("n_epochs", "n_updates", "tr_cost", "va_cost", "tr_acc", "va_acc", "time")
SUBMISSION_FILE = "ROCStories.tsv"
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 1, 130
LOCK_FILE = ".lock"


class BadInput(ValueError):
    """A flag, file or folder that cannot be used; reported with exit code 2."""


class Diverged(RuntimeError):
    """A non-finite training loss, a skipped update or non-finite parameters."""


class Interrupted(RuntimeError):
    """Ctrl-C (SIGINT) during training; the message says where to resume from."""


# ---------------------------------------------------------------- flags

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # The original train.py's flags, names and defaults.
    p.add_argument("--desc", type=str, default=None, help="run name (default: the dataset's)")
    p.add_argument("--dataset", type=str, default="rocstories", choices=("rocstories", "synthetic"))
    p.add_argument("--log_dir", type=str, default="log/")
    p.add_argument("--save_dir", type=str, default="save/")
    p.add_argument("--data_dir", type=str, default="data/")
    p.add_argument("--submission_dir", type=str, default="submission/")
    p.add_argument("--submit", action="store_true", help="write submission_dir/desc/ROCStories.tsv")
    p.add_argument("--analysis", action="store_true", help="print best valid and test accuracy")
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
    p.add_argument("--afn", type=str, default="gelu", choices=gpt1f.config.ACTIVATIONS)
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
    p.add_argument("--n_valid", type=int, default=rocstories.N_VALID,
                   help="stories of the labelled file held out for validation")
    # Additions.
    p.add_argument("--accum", type=int, default=4,
                   help="micro-batches per update: the effective batch is n_batch * accum")
    p.add_argument("--seeds", type=int, default=1,
                   help="run seeds seed .. seed+N-1 and print the median")
    p.add_argument("--device", type=str, default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", type=str, default="fp32", choices=("fp32", "bf16"),
                   help="bf16: autocast the forward (parameters and optimizer stay float32)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the train step and eval forward (default: on for CUDA)")
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
    p.add_argument("--n_synthetic", type=int, default=1871,
                   help="stories per file written by --dataset synthetic")
    p.add_argument("--weights_dir", type=str, default=None,
                   help="release folder (default: $GPT1F_WEIGHTS, else <repo>/weights)")
    p.add_argument("--weights_url", type=str, default=None,
                   help="download missing release files from here (default: the original repo)")
    p.add_argument("--weights_checksums", type=str, default=None,
                   help="JSON file {name: git-blob SHA-1} overriding the release table")
    p.add_argument("--offline", action="store_true",
                   help="never download; fail if release files are missing")
    p.add_argument("--submission_name", type=str, default=SUBMISSION_FILE,
                   help="file name of the submission in submission_dir/desc/ (the official "
                   "upload expects ROCStories.tsv)")
    return p.parse_args(argv)


# (flag, lowest, highest, lowest excluded): every float flag must be finite and in its range
FLOAT_RANGES = (("lr", 0.0, float(np.finfo(np.float32).max), False), ("b1", 0.0, 1.0, False),
                ("b2", 0.0, 1.0, False), ("e", 0.0, math.inf, False), ("l2", 0.0, math.inf, False),
                ("lr_warmup", 0.0, 1.0, False), ("lm_coef", 0.0, math.inf, False),
                ("max_grad_norm", -math.inf, math.inf, False), ("embd_pdrop", 0.0, 1.0, False),
                ("attn_pdrop", 0.0, 1.0, False), ("resid_pdrop", 0.0, 1.0, False),
                ("clf_pdrop", 0.0, 1.0, False))
HALF_OPEN = ("b1", "b2", "embd_pdrop", "attn_pdrop", "resid_pdrop", "clf_pdrop")   # [low, high)


def check_float_flags(args) -> None:
    """Every float flag finite and within its range, named in the error."""
    for name, low, high, _ in FLOAT_RANGES:
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


def check_args(args) -> None:
    """Refuse impossible settings before anything is read or written."""
    if args.n_ctx > rocstories.MAX_N_CTX:
        raise BadInput(f"--n_ctx={args.n_ctx} exceeds {rocstories.MAX_N_CTX}, the number of "
                       "position embeddings GPT-1 was trained with")
    positive = ("n_ctx", "n_iter", "n_batch", "accum", "seeds", "n_embd", "n_head", "n_layer",
                "n_valid", "n_synthetic")
    for name in positive:
        if getattr(args, name) < 1:
            raise BadInput(f"--{name}={getattr(args, name)} must be at least 1")
    if args.n_ctx < 8:
        raise BadInput(f"--n_ctx={args.n_ctx} leaves no room for a story and an ending")
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
    release_checksums(args)
    try:
        model_config(args, n_vocab=1, n_ctx=8)
        make_optimizer(args, t_total=1)
    except ValueError as e:
        raise BadInput(str(e).replace("Config.", "--")) from None


def device_name(args) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def model_config(args, *, n_vocab: int, n_ctx: int) -> gpt1f.Config:
    return gpt1f.Config(n_vocab=n_vocab, n_special=3, n_ctx=n_ctx, n_embd=args.n_embd,
                        n_head=args.n_head, n_layer=args.n_layer, afn=args.afn,
                        embd_pdrop=args.embd_pdrop, attn_pdrop=args.attn_pdrop,
                        resid_pdrop=args.resid_pdrop, clf_pdrop=args.clf_pdrop,
                        pretrained=args.n_transfer >= 0)


# ---------------------------------------------------------------- data

class Data(NamedTuple):
    """Each split as arrays: ``tokens`` [N, 2, n_ctx] int64, ``mask`` [N, 2, n_ctx], ``label`` [N]."""
    splits: dict[str, dict[str, np.ndarray]]
    n_vocab: int
    n_ctx: int


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
    from gpt1f.text import TextEncoder

    paths = [args.encoder_path, args.bpe_path]
    if args.weights_dir is not None:
        folder = download.weights_dir(args.weights_dir)
        if all((folder / name).is_file() for name in download.VOCAB_NAMES):
            paths = [given or folder / name for given, name in zip(paths, download.VOCAB_NAMES)]
    try:
        return TextEncoder(*paths, download=False)
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(f"cannot load the BPE vocabulary: {e}") from None


def prepare_synthetic(args) -> None:
    """Write synthetic Cloze Test files into --data_dir, never over files that are not synthetic."""
    data_dir = pathlib.Path(args.data_dir)
    for name in (rocstories.VALID_FILE, rocstories.TEST_FILE):
        if (data_dir / name).is_file() and not rocstories.is_synthetic(data_dir / name):
            raise BadInput(f"{data_dir / name} exists and is not synthetic data; choose another "
                           "--data_dir for --dataset synthetic")
    rocstories.write_synthetic(data_dir, n_rows=args.n_synthetic)


def encode_splits(encoder, stories: dict, chunk: int = 1024) -> dict[str, rocstories.Encoded]:
    """BPE ids of every story and ending of every split, under one progress bar."""
    total = sum(3 * len(split.story) for split in stories.values())
    bar = tqdm(total=total, desc="encode", unit="text", leave=False)

    def encode(texts: list[str]) -> list[list[int]]:
        ids = []
        for start in range(0, len(texts), chunk):
            ids.extend(encoder.encode(texts[start:start + chunk]))
            bar.update(len(texts[start:start + chunk]))
        return ids

    with bar:
        return {name: rocstories.encode_split(split, encode) for name, split in stories.items()}


def prepare_data(args, encoder) -> Data:
    """Read, split, encode and pad the three splits; n_ctx shrunk to the longest example."""
    stories = rocstories.load_rocstories(args.data_dir, n_valid=args.n_valid)
    encoded = encode_splits(encoder, stories)
    n_ctx = rocstories.fit_n_ctx(list(encoded.values()), args.n_ctx)
    special = encoder.special
    arrays = {}
    for name, split in encoded.items():
        tokens, mask = rocstories.transform(
            split, n_ctx=n_ctx, max_len=rocstories.max_len_for(args.n_ctx),
            start=special["_start_"], delimiter=special["_delimiter_"], clf=special["_classify_"])
        arrays[name] = {"tokens": tokens, "mask": mask, "label": split.label}
    return Data(arrays, encoder.n_vocab, n_ctx)


def data_digest(data: Data) -> str:
    digest = hashlib.sha1()
    for name in sorted(data.splits):
        for key in ("tokens", "label"):
            if data.splits[name][key] is not None:
                digest.update(data.splits[name][key].tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- model, optimizer, step

def initial_params(args, cfg: gpt1f.Config, seed: int) -> dict[str, torch.Tensor]:
    """Pre-trained weights for the first --n_transfer blocks (none for -1), the rest from ``seed``."""
    if args.n_transfer < 0:
        return gpt1f.init_params(cfg, seed=seed)
    from gpt1f.openai_release import load_openai

    try:
        params, _ = load_openai(args.weights_dir, cfg=cfg, n_transfer=args.n_transfer, seed=seed,
                                download=not args.offline, base_url=args.weights_url,
                                checksums=release_checksums(args))
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(f"cannot load the pre-trained weights: {e}\n(to train without them, pass "
                       "--n_transfer -1)") from None
    return params


def n_batch_train(args) -> int:
    return args.n_batch * args.accum


def make_optimizer(args, t_total: int):
    return optim.openai_adam(
        args.lr, schedule=args.lr_schedule, warmup=args.lr_warmup, t_total=t_total, b1=args.b1,
        b2=args.b2, e=args.e, l2=args.l2, vector_l2=args.vector_l2,
        max_grad_norm=args.max_grad_norm)


def make_scorer(cfg: gpt1f.Config, compile: bool):
    """``scores(params, tokens [B, 2, T]) -> [B, 2]``, no LM head, no dropout."""
    fn = functools.partial(gpt1f.multiple_choice_logits, cfg=cfg)
    return torch.compile(fn, fullgraph=True, dynamic=False) if compile else fn


def autocast(args, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")


@torch.no_grad()
def predict(scorer, params, tokens: torch.Tensor, batch: int, desc: str, cast) -> np.ndarray:
    """Scores [N, 2] in float32, every batch padded to ``batch`` rows so shapes never change."""
    out = []
    for start in tqdm(range(0, len(tokens), batch), desc=desc, leave=False, unit="batch"):
        chunk = tokens[start:start + batch]
        n = len(chunk)
        if n < batch:
            chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
        with cast:
            out.append(scorer(params, chunk)[:n].float().cpu())
    return torch.cat(out).numpy()


# ---------------------------------------------------------------- logging and checkpoints

class Run(NamedTuple):
    """Where one seed's run writes."""
    desc: str
    log: pathlib.Path
    latest: pathlib.Path
    best: pathlib.Path
    submission: pathlib.Path
    plot: pathlib.Path


def run_paths(args, desc: str, submission_dir: pathlib.Path) -> Run:
    save = pathlib.Path(args.save_dir) / desc
    log_dir = pathlib.Path(args.log_dir)
    return Run(desc, log_dir / f"{desc}.jsonl", save / checkpoint.LATEST, save / checkpoint.BEST,
               submission_dir / args.submission_name, log_dir / f"{desc}.png")


def check_writable(flag: str, folder: pathlib.Path) -> None:
    """Refuse now, writing nothing, an output folder that could not be written after training:
    a file in the way, or an existing ancestor where a probe file cannot be created (read-only,
    full); the probe is deleted at once."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BadInput(f"{flag}: cannot write in {folder} ({ancestor} is not a folder)")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as e:
        raise BadInput(f"{flag}: cannot write in {folder} ({e.strerror or e})") from None


def check_outputs(args, run: Run) -> None:
    """Before any work, writing nothing: output folders writable, and no earlier run's log or
    submission about to be replaced."""
    check_writable("--log_dir", run.log.parent)
    check_writable("--save_dir", run.latest.parent)
    if args.submit:
        check_writable("--submission_dir", run.submission.parent)
    if args.resume or args.overwrite or checkpoint.steps(run.latest) or checkpoint.steps(run.best):
        return                               # (earlier checkpoints: check_checkpoints refuses)
    for path, what in ((run.log, "the log"), (run.submission if args.submit else None, "the submission")):
        if path is not None and path.exists():
            raise BadInput(f"{path} holds {what} of an earlier run: pass --resume to continue it, "
                           "--overwrite to replace it, or another --desc")


def claim_outputs(run: Run, stack: contextlib.ExitStack) -> None:
    """Lock ``save_dir/desc`` for this run (held until ``stack`` closes)."""
    stack.enter_context(run_lock(run.latest.parent))


@contextlib.contextmanager
def run_lock(folder: pathlib.Path):
    """An exclusive ``flock`` on ``folder/.lock`` for the run's lifetime; a second run on the
    same folder is refused. The lock goes with the process however it ends; on a normal exit the
    lock file (and ``folder``, if this created it and it stayed empty) is removed while held."""
    import fcntl

    created = [folder, *folder.parents]
    created = created[:next(i for i, d in enumerate(created) if d.exists())]   # made here
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"--save_dir: cannot create {folder} ({e.strerror or e})") from None
    path = folder / LOCK_FILE
    for _ in range(10):
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise BadInput(f"another run (pid {holder}) is using {folder}; wait for it to end or "
                           "choose another --desc or --save_dir") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
            break                   # (else its holder removed it as we opened it: open again)
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            for made in created:    # only while empty: a failed start leaves nothing behind
                made.rmdir()
        f.close()


def write_log(path: pathlib.Path, header: dict, history: list[dict]) -> None:
    """The whole JSONL log: the arguments, then every evaluation so far."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in [header, *history]))


def append_log(path: pathlib.Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def check_checkpoints(args, run: Run, fingerprint: dict) -> None:
    """--resume needs a matching checkpoint; a fresh run must not mix with an earlier one's."""
    if args.resume:
        if checkpoint.latest_step(run.latest) is None:
            raise BadInput(f"--resume: no checkpoint in {run.latest} (nothing to resume; "
                           "run without --resume to start)")
        checkpoint.check_fingerprint(newest_meta(run.latest)["fingerprint"], fingerprint,
                                     run.latest)
    elif not args.overwrite and (checkpoint.steps(run.latest) or checkpoint.steps(run.best)):
        raise BadInput(f"{run.latest.parent} holds checkpoints of an earlier run: pass --resume "
                       "to continue it, --overwrite to start over, or another --desc")


def newest_meta(folder: pathlib.Path) -> dict:
    """The meta of the newest step whose meta reads (a damaged one is reported at restore)."""
    for step in reversed(checkpoint.steps(folder)):
        try:
            return checkpoint.read_meta(folder, step)
        except Exception:
            continue
    raise CheckpointError(f"--resume: no checkpoint in {folder} can be read")


def resume_state(run: Run, template) -> tuple:
    """``(state, meta)`` of the newest intact step of ``run.latest``; damaged newer steps are
    reported and removed, so that the resumed run can write them again."""
    state, meta, step, damaged = checkpoint.restore_intact(run.latest, template)
    for message in damaged:
        tqdm.write(f"warning: checkpoint {message}; it is damaged and removed, resuming from "
                   f"step {step} instead", file=sys.stderr)
    for newer in [s for s in checkpoint.steps(run.latest) if s > step]:
        shutil.rmtree(run.latest / str(newer), ignore_errors=True)
    for leftover in run.latest.glob("*"):     # a damaged step orbax no longer lists
        if leftover.name.isdigit() and int(leftover.name) > step:
            shutil.rmtree(leftover, ignore_errors=True)
    return state, meta


# ---------------------------------------------------------------- one seed

@dataclasses.dataclass
class Progress:
    """Where training stands; with the seed this is all the RNG state there is (see checkpoint)."""
    n_updates: int = 0
    epoch: int = 0            # the epoch in progress (n_iter when training is done)
    position: int = 0         # updates done within that epoch
    best_va_acc: float = -math.inf
    history: list = dataclasses.field(default_factory=list)  # the log's evaluation lines


class Result(NamedTuple):
    seed: int
    best_va_acc: float
    test_acc: float | None
    history: list[dict]
    step_seconds: float       # time spent in training steps (evaluation and checkpoints excluded)
    examples_per_s: float


def evaluate(scorer, params, splits, batch: int, cast, progress: Progress, n_epochs: int) -> dict:
    """One log line: clf cost and accuracy on the first n_valid train stories and on valid."""
    train, valid = splits["train"], splits["valid"]
    n_valid = len(valid["label"])
    tr_logits = predict(scorer, params, train["tokens"][:n_valid], batch, "eval train", cast)
    va_logits = predict(scorer, params, valid["tokens"], batch, "eval valid", cast)
    tr_label, va_label = train["label"][:n_valid].cpu().numpy(), valid["label"].cpu().numpy()
    return {"n_epochs": n_epochs, "n_updates": progress.n_updates,
            "tr_cost": rocstories.clf_cost(tr_logits, tr_label),
            "va_cost": rocstories.clf_cost(va_logits, va_label),
            "tr_acc": rocstories.accuracy(tr_logits, tr_label),
            "va_acc": rocstories.accuracy(va_logits, va_label), "time": time.time()}


def fine_tune(args, data: Data, cfg: gpt1f.Config, seed: int, run: Run, header: dict,
              fingerprint: dict) -> Result:
    """Train one seed from its initial (or resumed) state; evaluate, log and checkpoint as TF."""
    device = torch.device(device_name(args))
    compile = args.compile if args.compile is not None else device.type == "cuda"
    cast = autocast(args, device)
    splits = {name: {k: v if v is None else torch.as_tensor(v, device=device) for k, v in s.items()}
              for name, s in data.splits.items()}
    train = splits["train"]
    n_train, batch = len(train["label"]), n_batch_train(args)
    n_batches = n_train // batch                       # the last partial batch is dropped, as TF
    opt = make_optimizer(args, t_total=n_batches * args.n_iter)
    step = make_train_step(cfg, opt, lm_coef=args.lm_coef, accum=args.accum, compile=compile)
    scorer = make_scorer(cfg, compile)
    key = gpt1f.random.key(seed, device=device)

    # -- state: resumed from the latest checkpoint, or fresh
    if args.resume:
        template = {"params": gpt1f.init_params(cfg, seed=0)}
        template["opt_state"] = opt.init(template["params"])
        state, meta = resume_state(run, to_device(template, device))
        params, opt_state = state["params"], state["opt_state"]
        progress, header = Progress(**meta["progress"]), meta["header"]
        tqdm.write(f"resumed {run.desc} at update {progress.n_updates} "
                   f"(epoch {progress.epoch + 1}, update {progress.position} of {n_batches})")
    else:
        params = to_device(initial_params(args, cfg, seed), device)
        opt_state, progress = opt.init(params), Progress()
        for folder in (run.latest, run.best):
            shutil.rmtree(folder, ignore_errors=True)   # reached only with --overwrite
    write_log(run.log, header, progress.history)

    def ensure_finite() -> None:
        if not bool(all_finite(params)):
            raise Diverged(f"the parameters after update {progress.n_updates} (epoch "
                           f"{progress.epoch + 1}) are not finite; stopped before evaluating or "
                           f"saving them. {last_checkpoint(run)}")

    def save_latest() -> None:
        ensure_finite()
        meta = {"progress": dataclasses.asdict(progress), "seed": seed, "header": header,
                "fingerprint": fingerprint}
        checkpoint.save(run.latest, progress.n_updates,
                        {"params": params, "opt_state": opt_state}, meta)

    def log(n_epochs: int) -> None:
        ensure_finite()
        entry = evaluate(scorer, params, splits, batch, cast, progress, n_epochs)
        progress.history.append(entry)
        append_log(run.log, entry)
        tqdm.write("%d %d %.3f %.3f %.2f %.2f" % tuple(entry[k] for k in LOG_KEYS[:6]))
        if entry["va_acc"] > progress.best_va_acc:
            progress.best_va_acc = entry["va_acc"]
            checkpoint.save(run.best, progress.n_updates, {"params": params},
                            {k: entry[k] for k in ("n_epochs", "n_updates", "va_acc")},
                            max_to_keep=1, replace=True)   # a resumed run may redo this step

    # -- the loop: epochs of n_batches updates, resumable at any (epoch, position)
    step_seconds, trained = 0.0, 0
    try:
        while progress.epoch < args.n_iter:
            order = rocstories.epoch_order(seed, progress.epoch, n_train)
            order = torch.as_tensor(order, device=device)
            bar = tqdm(range(progress.position, n_batches), initial=progress.position, total=n_batches,
                       desc=f"epoch {progress.epoch + 1}/{args.n_iter}", unit="update", leave=False)
            for b in bar:
                index = order[b * batch:(b + 1) * batch]
                step_key = gpt1f.random.fold_in(key, progress.n_updates)
                tick = time.perf_counter()
                with cast:
                    params, opt_state, metrics = step(params, opt_state,
                                                      {k: v[index] for k, v in train.items()}, step_key)
                loss, lr, skipped = torch.stack(   # the step's one host sync
                    [metrics[k].double() for k in ("loss", "lr", "nonfinite")]).tolist()
                seconds = time.perf_counter() - tick
                step_seconds, trained = step_seconds + seconds, trained + batch
                progress.n_updates, progress.position = progress.n_updates + 1, b + 1
                if not math.isfinite(loss):
                    raise Diverged(f"the training loss is {loss} at update {progress.n_updates} (epoch "
                                   f"{progress.epoch + 1}); stopped. {last_checkpoint(run)}")
                if skipped:
                    raise Diverged(f"update {progress.n_updates} (epoch {progress.epoch + 1}) was "
                                   "skipped: its gradients, or the parameters it would give, are "
                                   f"not finite (lr {lr:.3g}); stopped. {last_checkpoint(run)}")
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", ex_s=f"{batch / seconds:.0f}")
                if progress.n_updates in LOG_AT_UPDATES and progress.epoch == 0:
                    log(n_epochs=0)
                if args.save_every and progress.n_updates % args.save_every == 0 and b + 1 < n_batches:
                    save_latest()
            bar.close()
            progress.epoch, progress.position = progress.epoch + 1, 0
            log(n_epochs=progress.epoch)
            save_latest()
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at update {progress.n_updates}. {resume_hint(run)}") from None

    # -- the best params: test predictions, submission
    ensure_finite()
    best, _ = checkpoint.restore(run.best, {"params": params})
    predictions = predict(scorer, best["params"], splits["test"]["tokens"], batch,
                          "predict test", cast).argmax(1)
    if args.submit:
        write_submission(run.submission, predictions)
    test_label = data.splits["test"]["label"]
    test_acc = None if test_label is None else float(np.mean(predictions == test_label) * 100)
    if args.plot:
        plot_history(progress.history, run.plot)
    return Result(seed, progress.best_va_acc, test_acc, progress.history, step_seconds,
                  trained / step_seconds if step_seconds else 0.0)


def last_checkpoint(run: Run) -> str:
    step = checkpoint.latest_step(run.latest)
    if step is None:
        return "No checkpoint was written before it."
    return (f"The last checkpoint, {run.latest / str(step)}, is intact (checkpoints never hold "
            "non-finite parameters).")


def resume_hint(run: Run) -> str:
    step = checkpoint.latest_step(run.latest)
    if step is None:
        return "No checkpoint was written yet: run again without --resume to start over."
    return f"The last checkpoint is {run.latest / str(step)}: run again with --resume to continue."


def write_submission(path: pathlib.Path, predictions: np.ndarray) -> None:
    """``index\\tprediction`` rows, predictions 0 or 1 (the right ending's index), as TF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{i}\t{int(p)}\n" for i, p in enumerate(predictions))
    path.write_text("index\tprediction\n" + rows)


def plot_history(history: list[dict], path: pathlib.Path) -> None:
    """Train/valid cost and accuracy over updates, as a PNG (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        tqdm.write("--plot: matplotlib is not installed (pip install matplotlib); no plot written",
                   file=sys.stderr)
        return
    x = [h["n_updates"] for h in history]
    fig, (cost, acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((cost, "cost", "clf cost"), (acc, "acc", "accuracy %")):
        ax.plot(x, [h[f"tr_{metric}"] for h in history], "o-", label="train (first n_valid)")
        ax.plot(x, [h[f"va_{metric}"] for h in history], "o-", label="valid")
        ax.set_xlabel("updates")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    tqdm.write(f"plot: {path}")


def to_device(tree, device: torch.device):
    return optree.tree_map(lambda t: t.to(device), tree)


# ---------------------------------------------------------------- reports

def print_summary(result: Result) -> None:
    print(f"\n{'epochs':>6} {'updates':>8} {'tr_cost':>8} {'va_cost':>8} {'tr_acc':>7} {'va_acc':>7}")
    for h in result.history:
        print(f"{h['n_epochs']:>6} {h['n_updates']:>8} {h['tr_cost']:>8.3f} {h['va_cost']:>8.3f} "
              f"{h['tr_acc']:>7.2f} {h['va_acc']:>7.2f}")
    test = "n/a (no labels)" if result.test_acc is None else f"{result.test_acc:.2f}"
    print(f"best valid accuracy {result.best_va_acc:.2f} | test accuracy {test} | "
          f"{result.step_seconds:.1f} s in train steps, {result.examples_per_s:.1f} examples/s")


def print_analysis(result: Result) -> None:
    print("ROCStories Valid Accuracy: %.2f" % result.best_va_acc)
    print("ROCStories Test Accuracy:  %.2f" % result.test_acc)


def print_seeds(results: list[Result]) -> None:
    print(f"\n{'seed':>6} {'valid':>7} {'test':>7}")
    for r in results:
        test = "    n/a" if r.test_acc is None else f"{r.test_acc:>7.2f}"
        print(f"{r.seed:>6} {r.best_va_acc:>7.2f} {test}")
    tests = [r.test_acc for r in results if r.test_acc is not None]
    test = f"{statistics.median(tests):>7.2f}" if tests else "    n/a"
    print(f"{'median':>6} {statistics.median(r.best_va_acc for r in results):>7.2f} {test}")


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.limit_heap and not gpt1f.memory.limit_heap_retention():
            print("warning: --limit_heap needs glibc; ignored", file=sys.stderr)
        return run(args)
    except (BadInput, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Diverged, CheckpointWriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as e:
        print(f"{e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted before training started; nothing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)


def run(args) -> int:
    check_args(args)
    desc = args.desc or args.dataset
    seeds = [args.seed + i for i in range(args.seeds)]
    names = {seed: desc if args.seeds == 1 else f"{desc}_seed{seed}" for seed in seeds}
    run_dirs = {seed: run_paths(args, name, pathlib.Path(args.submission_dir) / name)
                for seed, name in names.items()}
    for run_dir in run_dirs.values():
        check_outputs(args, run_dir)
    with contextlib.ExitStack() as locks:
        return run_seeds(args, desc, seeds, run_dirs, locks)


def run_seeds(args, desc: str, seeds: list[int], run_dirs: dict[int, Run],
              locks: contextlib.ExitStack) -> int:
    """Data, then (each run's folder locked in ``locks``) every seed's fine-tuning."""
    if args.dataset == "synthetic":
        prepare_synthetic(args)
    rocstories.check_data_dir(args.data_dir)
    encoder = text_encoder(args)
    data = prepare_data(args, encoder)
    if args.analysis and data.splits["test"]["label"] is None:
        raise BadInput(f"--analysis needs the test file's {rocstories.LABEL_COLUMN} column, "
                       f"which {pathlib.Path(args.data_dir) / rocstories.TEST_FILE} lacks")
    n_train = len(data.splits["train"]["label"])
    if n_train < n_batch_train(args):
        raise BadInput(f"{n_train} training stories make no batch of --n_batch x --accum = "
                       f"{n_batch_train(args)}")
    cfg = model_config(args, n_vocab=data.n_vocab, n_ctx=data.n_ctx)
    header = {k: v for k, v in vars(args).items()}
    runs = {}
    for seed in seeds:
        run_dir = run_dirs[seed]
        fingerprint = run_fingerprint(args, cfg, data, seed)
        check_checkpoints(args, run_dir, fingerprint)
        claim_outputs(run_dir, locks)
        runs[seed] = (run_dir, fingerprint)
    print(f"{desc}: {n_train} train / {len(data.splits['valid']['label'])} valid / "
          f"{len(data.splits['test']['tokens'])} test stories, n_ctx {cfg.n_ctx}, "
          f"{sum(math.prod(s) for s in gpt1f.param_shapes(cfg).values()):,} parameters")

    results = []
    for seed in seeds:
        run_dir, fingerprint = runs[seed]
        result = fine_tune(args, data, cfg, seed, run_dir, {**header, "seed": seed}, fingerprint)
        results.append(result)
        print_summary(result)
        if args.submit:
            print(f"submission: {run_dir.submission}")
    if args.analysis and args.seeds == 1:
        print_analysis(results[0])
    if args.seeds > 1:
        print_seeds(results)
    return 0


def run_fingerprint(args, cfg: gpt1f.Config, data: Data, seed: int) -> dict:
    """The settings a resumed run must share with the run that wrote the checkpoint."""
    same = ("dataset", "n_valid", "n_iter", "n_batch", "accum", "max_grad_norm", "lr", "lr_warmup",
            "l2", "vector_l2", "lr_schedule", "n_transfer", "lm_coef", "b1", "b2", "e", "dtype")
    return {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "seed": seed, "data_sha1": data_digest(data), **{k: getattr(args, k) for k in same}}


if __name__ == "__main__":
    sys.exit(main())

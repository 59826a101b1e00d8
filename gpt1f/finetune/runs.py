"""Where a run writes, and the bookkeeping that keeps its outputs safe.

One seed's run owns ``log_dir/desc.jsonl`` (the arguments, then one line per evaluation),
``save_dir/desc/{latest,best}`` (orbax checkpoints), ``submission_dir/desc/<name>`` (the
predictions) and ``log_dir/desc.png`` (the plot). Nothing of an earlier run is replaced without
``overwrite`` or ``resume``, and a lock on ``save_dir/desc`` keeps a second run out.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import NamedTuple

from tqdm.auto import tqdm

from .. import checkpoint
from ..checkpoint import CheckpointError
from .errors import BadInput

LOCK_FILE = ".lock"


class Run(NamedTuple):
    """Where one seed's run writes."""
    desc: str
    log: pathlib.Path
    latest: pathlib.Path
    best: pathlib.Path
    submission: pathlib.Path
    plot: pathlib.Path


def run_paths(*, desc: str, log_dir, save_dir, submission_dir, submission_name: str) -> Run:
    save, log_dir = pathlib.Path(save_dir) / desc, pathlib.Path(log_dir)
    return Run(desc, log_dir / f"{desc}.jsonl", save / checkpoint.LATEST, save / checkpoint.BEST,
               pathlib.Path(submission_dir) / desc / submission_name, log_dir / f"{desc}.png")


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


def check_outputs(run: Run, *, submit: bool, resume: bool, overwrite: bool) -> None:
    """Before any work, writing nothing: output folders writable, and no earlier run's log or
    submission about to be replaced."""
    check_writable("--log_dir", run.log.parent)
    check_writable("--save_dir", run.latest.parent)
    if submit:
        check_writable("--submission_dir", run.submission.parent)
    if resume or overwrite or checkpoint.steps(run.latest) or checkpoint.steps(run.best):
        return                               # (earlier checkpoints: check_checkpoints refuses)
    for path, what in ((run.log, "the log"), (run.submission if submit else None, "the submission")):
        if path is not None and path.exists():
            raise BadInput(f"{path} holds {what} of an earlier run: pass --resume to continue it, "
                           "--overwrite to replace it, or another --desc")


def check_checkpoints(run: Run, fingerprint: dict, *, resume: bool, overwrite: bool) -> None:
    """--resume needs a matching checkpoint; a fresh run must not mix with an earlier one's."""
    if resume:
        if checkpoint.latest_step(run.latest) is None:
            raise BadInput(f"--resume: no checkpoint in {run.latest} (nothing to resume; "
                           "run without --resume to start)")
        checkpoint.check_fingerprint(newest_meta(run.latest)["fingerprint"], fingerprint,
                                     run.latest)
    elif not overwrite and (checkpoint.steps(run.latest) or checkpoint.steps(run.best)):
        raise BadInput(f"{run.latest.parent} holds checkpoints of an earlier run: pass --resume "
                       "to continue it, --overwrite to start over, or another --desc")


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


def write_predictions(path: pathlib.Path, predictions) -> None:
    """``index\\tprediction`` rows (GLUE's and ROCStories' submission layout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{i}\t{p}\n" for i, p in enumerate(predictions))
    path.write_text("index\tprediction\n" + rows)


def plot_history(history: list[dict], path: pathlib.Path, metric: str = "acc") -> None:
    """Train/valid cost and ``metric`` over updates, as a PNG (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        tqdm.write("--plot: matplotlib is not installed (pip install matplotlib); no plot written",
                   file=sys.stderr)
        return
    x = [h["n_updates"] for h in history]
    fig, (cost, score) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name, label in ((cost, "cost", "task cost"), (score, metric, metric)):
        ax.plot(x, [h[f"tr_{name}"] for h in history], "o-", label="train (first n_valid)")
        ax.plot(x, [h[f"va_{name}"] for h in history], "o-", label="valid")
        ax.set_xlabel("updates")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    tqdm.write(f"plot: {path}")

"""Training checkpoints with orbax-checkpoint: a pytree of tensors plus a JSON ``meta`` per step.

A run keeps two folders of numbered steps: ``latest/`` (the last ``KEEP_LATEST``) and ``best/``
(the best one only, params alone). A step is written under a temporary name and renamed when
complete, so a process killed mid-save leaves the previous checkpoints as they were.

What makes a resumed run bit-identical to an uninterrupted one: the state (params, optimizer state)
plus, in ``meta``, the step, epoch and position within the epoch. No RNG state needs saving
because gpt1f derives all randomness by pure functions: the dropout key of update ``u`` is
``fold_in(key(seed), u)`` and the order of epoch ``e`` is ``epoch_order(seed, e, n)``, so
``(seed, epoch, position, step)`` is the whole RNG state. ``meta['fingerprint']`` holds the
settings a resumed run must share (model config, data, optimizer, seed); ``check_fingerprint``
names any that differ. orbax (and with it jax) is imported inside the functions, so
``import gpt1f`` stays light.

Faults: saving a step that exists is an error (``replace=True`` rewrites it); a failed write (a
full disk) raises CheckpointWriteError and leaves the steps already there intact. Readers run
beside a writer: ``steps`` lists only finished folders (orbax's metadata file present) and
tolerates folders vanishing while it looks; ``restore_intact`` skips damaged steps (truncated
state, missing ``state/``, garbled metadata), newest first, and says which.
"""
from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np
import optree
import torch

KEEP_LATEST = 2
LATEST, BEST = "latest", "best"


class CheckpointError(ValueError):
    """No usable checkpoint, or one written by a run with other settings."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint whose keys or shapes do not fit the template (other settings, not damage)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, read-only folder); older steps are intact."""


METADATA_FILE = "_CHECKPOINT_METADATA"   # orbax writes it into every finished step folder
READ_RETRIES = 5


def _manager(directory: pathlib.Path, max_to_keep: int | None = None, writer: bool = False):
    """An orbax manager; only the writer creates the folder and removes unfinished saves (a
    reader must not: another process may be writing one)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=writer,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=writer)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options,
                                 item_handlers=handlers)


def _flat(tree) -> dict[str, object]:
    """``{'params/model/we:0': leaf, 'opt_state/1/model/we:0': leaf, ...}`` by optree path."""
    paths, leaves, _ = optree.tree_flatten_with_path(tree, none_is_leaf=False)
    return {"/".join(map(str, path)): leaf for path, leaf in zip(paths, leaves)}


def _to_numpy(leaf) -> np.ndarray:
    """A leaf as a numpy array orbax can write (a copy, never a view of live tensors)."""
    if isinstance(leaf, torch.Tensor):
        return leaf.detach().to("cpu").numpy().copy()
    return np.array(leaf)


def _like(array: np.ndarray, template):
    """``array`` back in the type, dtype and device of ``template``."""
    if isinstance(template, torch.Tensor):
        tensor = torch.from_numpy(np.asarray(array)).reshape(template.shape)
        return tensor.to(template.device, template.dtype)
    if isinstance(template, (bool, int, float)):
        return type(template)(np.asarray(array).item())
    return np.asarray(array)


def save(directory, step: int, state, meta: dict, *, max_to_keep: int | None = KEEP_LATEST,
         replace: bool = False) -> None:
    """Write ``state`` (a pytree of tensors / numbers) and ``meta`` (JSON-able) as ``step``.

    Steps beyond the newest ``max_to_keep`` are deleted once the new one is complete. A step that
    exists raises CheckpointError, unless ``replace`` (then it is deleted first). A failed write
    raises CheckpointWriteError; the steps already there stay as they were.
    """
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory)
    arrays = {k: _to_numpy(v) for k, v in _flat(state).items()}
    with _manager(directory, max_to_keep, writer=True) as manager:
        if step in manager.all_steps():
            if not replace:
                raise CheckpointError(f"step {step} already exists in {directory}; nothing written "
                                      "(pass replace=True to rewrite it)")
            manager.delete(step)
        try:
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                       meta=ocp.args.JsonSave(meta)), force=True)
            manager.wait_until_finished()
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointWriteError(
                getattr(e, "errno", None) or 0,
                f"cannot write checkpoint step {step} in {directory}: {first[:300]}; the steps "
                f"already there ({steps(directory) or 'none'}) are intact") from e


def steps(directory) -> list[int]:
    """The finished steps in ``directory``, oldest first (empty when there is none).

    Read from the folder names alone, so a step another process is writing (a temporary name) or
    deleting (its metadata file gone) is not listed, and nothing raises when one vanishes.
    """
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(e.name) for e in entries
                  if e.name.isdigit() and os.path.isfile(os.path.join(e.path, METADATA_FILE)))


def latest_step(directory) -> int | None:
    found = steps(directory)
    return found[-1] if found else None


def _reading(directory, step: int | None, read):
    """``read(step)`` for ``step`` (default: the latest), retried a few times (choosing the step
    again) when it fails: a writer may be renaming or deleting step folders as orbax looks."""
    for attempt in range(READ_RETRIES):
        chosen = _existing_step(directory, step)
        try:
            return read(chosen)
        except CheckpointError:
            raise
        except Exception:
            if attempt == READ_RETRIES - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def read_meta(directory, step: int | None = None) -> dict:
    """The ``meta`` of ``step`` (default: the latest); CheckpointError when there is none."""
    import orbax.checkpoint as ocp

    def read(step):
        with _manager(pathlib.Path(directory)) as manager:
            return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return _reading(directory, step, read)


def restore(directory, template, step: int | None = None):
    """``(state, meta)`` of ``step`` (default: the latest), ``state`` shaped like ``template``.

    Every leaf of ``template`` must be in the checkpoint with the same shape (the checkpoint may
    hold more, e.g. params alone can be taken from a full training state); the restored tensors
    take the template's dtype and device. Raises CheckpointMismatch naming what does not match.
    """
    directory = pathlib.Path(directory)
    return _reading(directory, step, lambda step: _restore_step(directory, template, step))


def _restore_step(directory: pathlib.Path, template, step: int):
    import orbax.checkpoint as ocp

    wanted = _flat(template)
    with _manager(directory) as manager:
        saved = manager.item_metadata(step)["state"]
        stored = {k: tuple(m.shape) for k, m in saved.items()}
        problems = [f"{k}: missing" for k in wanted if k not in stored]
        problems += [f"{k}: shape {list(stored[k])} in the checkpoint, {list(np.shape(v))} expected"
                     for k, v in wanted.items() if k in stored and stored[k] != tuple(np.shape(v))]
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise CheckpointMismatch(f"checkpoint {directory / str(step)} does not fit this run: "
                                     + "; ".join(problems[:5]) + more)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    leaves = [_like(restored["state"][k], v) for k, v in wanted.items()]
    treespec = optree.tree_structure(template, none_is_leaf=False)
    return optree.tree_unflatten(treespec, leaves), restored["meta"]


def restore_intact(directory, template):
    """``(state, meta, step, damaged)`` of the newest step that restores; ``damaged`` lists each
    newer step skipped, with its error. Raises CheckpointError when none restores, and
    CheckpointMismatch (no fallback) when a step is readable but written for other settings."""
    directory = pathlib.Path(directory)
    damaged = []
    for step in reversed(steps(directory)):
        try:
            state, meta = _restore_step(directory, template, step)
            return state, meta, step, damaged
        except CheckpointMismatch:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            damaged.append(f"{directory / str(step)}: {type(e).__name__}: {first}")
    raise CheckpointError(f"no intact checkpoint in {directory}"
                          + (": " + "; ".join(damaged) if damaged else ""))


def _existing_step(directory, step: int | None) -> int:
    found = steps(directory)
    if not found:
        raise CheckpointError(f"no checkpoint in {directory}")
    if step is None:
        return found[-1]
    if step not in found:
        raise CheckpointError(f"no checkpoint for step {step} in {directory} (steps: {found})")
    return step


def check_fingerprint(saved: dict, current: dict, where) -> None:
    """Raise CheckpointError listing every setting whose value differs between the two runs."""
    current = json.loads(json.dumps(current))  # tuples -> lists, as stored
    keys = sorted(set(saved) | set(current))
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now"
             for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(f"checkpoint in {where} was written by a run with other settings; "
                              "resume with the same flags or choose another --save_dir/--desc:\n  "
                              + "\n  ".join(diffs))

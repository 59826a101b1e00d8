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
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import optree
import torch

KEEP_LATEST = 2
LATEST, BEST = "latest", "best"


class CheckpointError(ValueError):
    """No usable checkpoint, or one written by a run with other settings."""


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


def save(directory, step: int, state, meta: dict, *, max_to_keep: int | None = KEEP_LATEST) -> None:
    """Write ``state`` (a pytree of tensors / numbers) and ``meta`` (JSON-able) as ``step``,
    unless ``step`` is already saved there: then nothing is written and the saved one stays.

    Steps beyond the newest ``max_to_keep`` are deleted once the new one is complete.
    """
    import orbax.checkpoint as ocp

    arrays = {k: _to_numpy(v) for k, v in _flat(state).items()}
    with _manager(pathlib.Path(directory), max_to_keep, writer=True) as manager:
        if step in manager.all_steps():
            return
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                   meta=ocp.args.JsonSave(meta)), force=True)
        manager.wait_until_finished()


def steps(directory) -> list[int]:
    """The complete steps in ``directory``, oldest first (empty when there is none)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    with _manager(directory) as manager:
        return sorted(manager.all_steps())


def latest_step(directory) -> int | None:
    found = steps(directory)
    return found[-1] if found else None


def read_meta(directory, step: int | None = None) -> dict:
    """The ``meta`` of ``step`` (default: the latest); CheckpointError when there is none."""
    import orbax.checkpoint as ocp

    step = _existing_step(directory, step)
    with _manager(pathlib.Path(directory)) as manager:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(directory, template, step: int | None = None):
    """``(state, meta)`` of ``step`` (default: the latest), ``state`` shaped like ``template``.

    Every leaf of ``template`` must be in the checkpoint with the same shape (the checkpoint may
    hold more, e.g. params alone can be taken from a full training state); the restored tensors
    take the template's dtype and device. Raises CheckpointError naming what does not match.
    """
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory)
    step = _existing_step(directory, step)
    wanted = _flat(template)
    with _manager(directory) as manager:
        saved = manager.item_metadata(step)["state"]
        stored = {k: tuple(m.shape) for k, m in saved.items()}
        problems = [f"{k}: missing" for k in wanted if k not in stored]
        problems += [f"{k}: shape {list(stored[k])} in the checkpoint, {list(np.shape(v))} expected"
                     for k, v in wanted.items() if k in stored and stored[k] != tuple(np.shape(v))]
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise CheckpointError(f"checkpoint {directory / str(step)} does not fit this run: "
                                  + "; ".join(problems[:5]) + more)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    leaves = [_like(restored["state"][k], v) for k, v in wanted.items()]
    treespec = optree.tree_structure(template, none_is_leaf=False)
    return optree.tree_unflatten(treespec, leaves), restored["meta"]


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

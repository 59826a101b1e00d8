"""Data-parallel training over ``torch.distributed`` (torchrun): ranks, the gradient all-reduce,
the micro-batch layout, eval shards, and the start-up agreement check.

Each rank is one of TF's ``mgpu_train`` towers: it computes the mean gradient of its share of the
update's micro-batches, the ranks average those means (:func:`all_reduce_mean`, a few flat
buckets), and every rank then runs the same global-norm clip and update on the same numbers. Not
DDP: ``DistributedDataParallel`` hooks ``nn.Module`` backward and does not see ``torch.func.grad``.

Layout: an update of ``total`` micro-batches (``--accum``) on ``N`` ranks gives rank ``r`` the
contiguous run ``r*A .. r*A + A - 1`` (``A = total / N``, :func:`micro_batch_share`); micro-batch
``g`` draws its dropout masks from ``fold_in(key, g)`` whichever rank runs it. So ``N`` ranks with
``A`` each compute what one process with accumulation ``N*A`` computes: the same masks and the same
mean gradient, up to the summation order of the all-reduce (with 2 ranks and accumulation 1 even
that is the same: ``(g0 + g1) / 2`` on both sides).

A single process (``WORLD_SIZE`` unset) needs no flag and initialises nothing; every collective
here is then the identity.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
from typing import Callable, Mapping, NamedTuple, Sequence

import torch

Params = dict[str, torch.Tensor]
BUCKET_BYTES = 25 * 2 ** 20        # the all-reduce's flat buckets (DDP's default size too)
TIMEOUT_S = 600.0                  # how long a rank waits for the others (rendezvous, collectives)
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")


class WorldError(ValueError):
    """A launch environment, world size or per-rank setting that data-parallel training cannot use."""


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the ranks: ``rank`` of ``size`` (``local_rank`` on its machine),
    computing on ``device``. ``World()`` is a single process."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs, checkpoints and submissions."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


# ---------------------------------------------------------------- start-up

def _env_int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise WorldError(f"${name}={environ[name]!r} is not an integer") from None


def world_from_env(environ: Mapping[str, str] | None = None, device=None) -> World:
    """The :class:`World` torchrun describes in ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT``; a single process when ``WORLD_SIZE`` is unset.

    A half-set environment (some of torchrun's variables without the others) raises WorldError
    naming what is missing. On CUDA each rank takes ``cuda:LOCAL_RANK`` unless ``device`` names an
    index.
    """
    environ = os.environ if environ is None else environ
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if "WORLD_SIZE" not in environ:
        stray = [name for name in ("RANK", "LOCAL_RANK") if name in environ]
        if stray:
            raise WorldError(f"${stray[0]} is set but $WORLD_SIZE is not: start data-parallel runs "
                             "with torchrun (torchrun --nproc_per_node N ...), or unset "
                             f"{', '.join('$' + s for s in stray)} for a single process")
        return World(device=device)
    missing = [name for name in RANK_VARS if name not in environ]
    if missing:
        raise WorldError(f"$WORLD_SIZE is set but {', '.join('$' + m for m in missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not: start with torchrun, which "
                         "sets them all")
    rank, local_rank, size = (_env_int(environ, name) for name in RANK_VARS)
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise WorldError(f"$RANK={rank} of $WORLD_SIZE={size} ($LOCAL_RANK={local_rank}) is not a "
                         "rank of the world")
    if size > 1:
        unset = [name for name in RENDEZVOUS_VARS if not environ.get(name)]
        if unset:
            raise WorldError(f"no rendezvous: {', '.join('$' + u for u in unset)} unset for rank "
                             f"{rank} of {size}; start with torchrun (--rdzv_endpoint HOST:PORT on "
                             "several machines)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return World(rank, size, local_rank, device)


def init_world(device=None, *, timeout_s: float = TIMEOUT_S) -> World:
    """:func:`world_from_env`, then (with more than one rank) the process group: gloo on CPU,
    NCCL on CUDA, rendezvous at ``$MASTER_ADDR:$MASTER_PORT``. A single process initialises nothing.

    Raises WorldError when the environment is half-set or the rendezvous cannot be reached within
    ``timeout_s``.
    """
    import torch.distributed as dist

    world = world_from_env(os.environ, device)
    if not world.distributed or dist.is_initialized():
        return world
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    backend = "nccl" if world.device.type == "cuda" else "gloo"
    endpoint = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        # env:// joins the store torchrun's agent serves; that store outlives a restart, so each
        # attempt keys its rendezvous apart (else gloo reads the dead attempt's addresses)
        store, _, _ = next(dist.rendezvous("env://", world.rank, world.size, timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"gpt1f/attempt_{attempt}/", store),
                                rank=world.rank, world_size=world.size, timeout=timeout,
                                device_id=world.device if backend == "nccl" else None)
    except (RuntimeError, TimeoutError, OSError, ValueError) as e:   # c10d's DistError: RuntimeError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise WorldError(f"rank {world.rank} of {world.size}: no rendezvous at {endpoint} "
                         f"({backend}, timeout {timeout_s:g} s): {first}") from None
    return world


def close_world(world: World) -> None:
    """Leave the process group (nothing for a single process)."""
    import torch.distributed as dist

    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- the gradient all-reduce

def plan_buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """Indices of ``tensors`` grouped into flat all-reduce buckets: one dtype and device per
    bucket, tensors in their given order, each bucket at most ``bucket_bytes`` unless a single
    tensor is larger (it then has a bucket of its own)."""
    open_buckets: dict[tuple, list[int]] = {}
    open_bytes: dict[tuple, int] = {}
    done = []
    for i, t in enumerate(tensors):
        kind, size = (t.dtype, t.device), t.numel() * t.element_size()
        if kind in open_buckets and open_bytes[kind] + size > bucket_bytes:
            done.append(open_buckets.pop(kind))
        if kind not in open_buckets:
            open_buckets[kind], open_bytes[kind] = [], 0
        open_buckets[kind].append(i)
        open_bytes[kind] += size
    return done + list(open_buckets.values())


def all_reduce_mean(tensors: Sequence[torch.Tensor], world: World, *,
                    bucket_bytes: int = BUCKET_BYTES, per_tensor: bool = False) -> list[torch.Tensor]:
    """The mean over ranks of every tensor, as new tensors (the inputs are not written).

    Tensors are flattened per dtype into buckets of ~``bucket_bytes`` (:func:`plan_buckets`), one
    ``all_reduce`` (sum) per bucket, then divided by the world size and cut back into shapes;
    ``per_tensor=True`` makes one call per tensor (for the benchmark). A single process gets its
    tensors back as they are.
    """
    import torch.distributed as dist

    if not world.distributed:
        return list(tensors)
    buckets = [[i] for i in range(len(tensors))] if per_tensor else plan_buckets(tensors, bucket_bytes)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for bucket in buckets:
        flat = torch.cat([tensors[i].reshape(-1) for i in bucket])          # [sum of numels], a copy
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat / world.size
        pieces = flat.split([tensors[i].numel() for i in bucket])
        for i, piece in zip(bucket, pieces):
            out[i] = piece.view(tensors[i].shape)
    return out


def grad_reducer(world: World, *, bucket_bytes: int = BUCKET_BYTES, per_tensor: bool = False
                 ) -> Callable[[Params, tuple], tuple[Params, tuple]]:
    """``reduce(grads, loss_parts) -> (grads, loss_parts)``, both averaged over the ranks in the
    same buckets: the ``reduce_grads`` of :func:`gpt1f.train.train_step`."""
    def reduce(grads: Params, parts: tuple) -> tuple[Params, tuple]:
        names = list(grads)
        mean = all_reduce_mean([*grads.values(), *parts], world, bucket_bytes=bucket_bytes,
                               per_tensor=per_tensor)
        return dict(zip(names, mean[:len(names)])), tuple(mean[len(names):])
    return reduce


# ---------------------------------------------------------------- work layout

class Share(NamedTuple):
    """One rank's micro-batches of an update: global indices ``offset .. offset + count - 1`` of
    ``total``."""
    offset: int
    count: int
    total: int


def micro_batch_share(total: int, world: World) -> Share:
    """Rank ``r`` runs the contiguous micro-batches ``r*A .. r*A + A - 1``, ``A = total / size``.
    Raises WorldError when the world size does not divide ``total``."""
    if total < 1 or total % world.size:
        raise WorldError(f"a world of {world.size} ranks cannot share an update's {total} "
                         f"micro-batches (--accum {total}) equally; use an --accum that is a "
                         f"multiple of {world.size}, or {world.size} ranks fewer or more")
    count = total // world.size
    return Share(world.rank * count, count, total)


def _shard_bounds(n: int, size: int, block: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of every rank's rows: contiguous runs of whole ``block``-row blocks."""
    per_rank = math.ceil(math.ceil(n / block) / size) * block
    return [(min(n, r * per_rank), min(n, (r + 1) * per_rank)) for r in range(size)]


def row_shard(n: int, world: World, block: int = 1) -> slice:
    """This rank's rows of ``n``: a contiguous run of whole ``block``-row blocks, so that an eval
    that pads every batch of ``block`` rows runs each batch exactly as one process would."""
    start, stop = _shard_bounds(n, world.size, block)[world.rank]
    return slice(start, stop)


def gather_rows(local: torch.Tensor, n: int, world: World, block: int = 1) -> torch.Tensor:
    """Every rank's ``local`` rows (its :func:`row_shard` of ``n``) back in order: ``[n, ...]`` on
    every rank, bit for bit what the ranks computed."""
    import torch.distributed as dist

    if not world.distributed:
        return local
    bounds = _shard_bounds(n, world.size, block)
    rows = [stop - start for start, stop in bounds]
    if local.shape[0] != rows[world.rank]:
        raise WorldError(f"rank {world.rank} holds {local.shape[0]} rows, its shard of {n} has "
                         f"{rows[world.rank]}")
    width = max(rows)
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=world.device)
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:r] for p, r in zip(parts, rows)]).to(local.device)


# ---------------------------------------------------------------- agreement, barriers, rank 0

def digest(value) -> str:
    """SHA-1 of ``value`` as canonical JSON (keys sorted; other objects by ``repr``)."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()


def check_agreement(world: World, **values) -> None:
    """Refuse to start unless every rank holds the same ``values`` (e.g. ``config=..., data=...``).

    One collective gathers each rank's digests; every rank then raises the same WorldError, naming
    each value and the ranks whose digest differs from rank 0's.
    """
    import torch.distributed as dist

    if not world.distributed:
        return
    mine = {name: digest(value) for name, value in values.items()}
    every: list[dict | None] = [None] * world.size
    dist.all_gather_object(every, mine)
    problems = []
    for name in sorted(set().union(*every)):
        held = [d.get(name, "missing") for d in every]
        others = [r for r, h in enumerate(held) if h != held[0]]
        if others:
            ranks = ", ".join(f"rank {r}: {held[r][:12]}" for r in others)
            problems.append(f"{name} (rank 0: {held[0][:12]}; {ranks})")
    if problems:
        raise WorldError("the ranks disagree on " + "; ".join(problems)
                         + ": every rank must run the same command on the same data")


def barrier(world: World) -> None:
    """Wait until every rank is here (nothing for a single process)."""
    import torch.distributed as dist

    if world.distributed:
        dist.barrier()


def on_main(world: World, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0 alone while the others wait; returns its result on rank 0
    and None elsewhere. When it raises, rank 0 raises that and every other rank a WorldError
    quoting it, instead of waiting forever."""
    import torch.distributed as dist

    if not world.distributed:
        return fn(*args, **kwargs)
    result, error, failure = None, None, [None]
    if world.is_main:
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            error, failure = e, [f"{type(e).__name__}: {e}"]
    dist.broadcast_object_list(failure, src=0)
    if error is not None:
        raise error
    if failure[0] is not None:
        raise WorldError(f"rank 0 failed, so rank {world.rank} stops too: {failure[0]}")
    return result


def main_first(world: World, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0, then, once it has returned, on every other rank (e.g.
    reading a checkpoint that rank 0 may repair first). Returns each rank's own result."""
    result = on_main(world, fn, *args, **kwargs)
    return result if world.is_main else fn(*args, **kwargs)

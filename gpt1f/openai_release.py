"""The original release format: ``params_shapes.json`` plus ten ``.npy`` shards.

The release is one flat float32 sequence cut into ten shards; ``params_shapes.json`` says how to cut
it back into arrays: ``[n_ctx, e]`` positions, ``[n_vocab, e]`` tokens, then twelve arrays per block
in ``LAYER_VARIABLES`` order. The fine-tuning graph's ``model/we:0`` is
``[tokens; special-token rows; positions[:n_ctx]]``.

Loading streams: every destination tensor is allocated once, then each shard is read piece by piece
straight into it (``readinto``; a 1M-value buffer only when a shard's dtype needs converting), so
peak memory is the result itself (``benchmarks/bench_load.py`` measures it against the original's
concatenate-and-split; results in ``benchmarks/results/``). The original held every shard, their
concatenation and the TF variables at once.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

import numpy as np
import torch

from .config import Config
from .download import (MANIFEST_NAME, SHAPES_NAME, SHARD_NAMES, WEIGHT_NAMES, _record_verified,
                       checksum_table, fetch, git_blob_sha1, read_manifest, verify_files,
                       weights_dir, write_manifest)
from .params import LAYER_VARIABLES, init_value, layer_shapes, param_shapes

N_SHARDS = len(SHARD_NAMES)
POSITIONS, TOKENS = "positions", "tokens"  # release arrays 0 and 1, both parts of model/we:0
CONVERT_ELEMENTS = 1 << 20  # elements per read when a shard's dtype needs converting


@dataclasses.dataclass(frozen=True)
class Shard:
    """Where a 1-D ``.npy`` shard's values start and how many there are."""
    path: pathlib.Path
    data_offset: int
    count: int
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class Release:
    """What ``params_shapes.json`` says about the released model."""
    n_ctx: int
    n_vocab: int
    n_embd: int
    n_layer: int


def release_names(n_layer: int) -> list[str]:
    """Name of each release array, in file order: positions, tokens, then the block variables."""
    return [POSITIONS, TOKENS] + [f"model/h{i}/{v}" for i in range(n_layer) for v in LAYER_VARIABLES]


def release_shapes(release: Release) -> list[tuple[int, ...]]:
    """``params_shapes.json``'s content for ``release``."""
    e = release.n_embd
    block = list(layer_shapes(Config(n_embd=e, n_head=1)).values())  # only n_embd matters
    return [(release.n_ctx, e), (release.n_vocab, e)] + block * release.n_layer


def read_shapes(path: pathlib.Path) -> Release:
    """Parse and check ``params_shapes.json``; errors name the file and the entry."""
    try:
        shapes = [tuple(s) for s in json.loads(path.read_text())]
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a JSON list of shapes ({e})") from e
    for k, shape in enumerate(shapes):
        if not all(type(n) is int and n > 0 for n in shape):
            raise ValueError(f"{path}: entry {k} is {list(shape)}, expected positive integer sizes")
    n_layer, extra = divmod(len(shapes) - 2, len(LAYER_VARIABLES))
    if len(shapes) < 2 + len(LAYER_VARIABLES) or extra or len(shapes[0]) != 2 or len(shapes[1]) != 2:
        raise ValueError(f"{path}: expected [n_ctx, n_embd], [n_vocab, n_embd] and 12 arrays per "
                         f"block, got {len(shapes)} entries starting {shapes[:2]}")
    release = Release(n_ctx=shapes[0][0], n_vocab=shapes[1][0], n_embd=shapes[0][1], n_layer=n_layer)
    names = release_names(n_layer)
    for k, (name, want, got) in enumerate(zip(names, release_shapes(release), shapes)):
        if tuple(want) != got:
            raise ValueError(f"{path}: entry {k} ({name}) has shape {list(got)}, expected "
                             f"{list(want)} for n_embd={release.n_embd}")
    return release


def read_shard_header(path: pathlib.Path) -> Shard:
    """Check a shard is a complete 1-D floating ``.npy``; errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"missing shard {path}")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(f)
        except (ValueError, OSError, SyntaxError) as e:
            raise ValueError(f"{path}: not a valid .npy file ({e})") from e
        data_offset = f.tell()
    if len(shape) != 1 or dtype.kind != "f":
        raise ValueError(f"{path}: expected a 1-D float array, got shape {shape} dtype {dtype}")
    want_bytes = data_offset + shape[0] * dtype.itemsize
    got_bytes = path.stat().st_size
    if got_bytes != want_bytes:
        raise ValueError(f"{path}: truncated or corrupt, {got_bytes} bytes on disk but its header "
                         f"describes {shape[0]} x {dtype} = {want_bytes} bytes")
    return Shard(path, data_offset, shape[0], dtype)


def array_pieces(shard_counts: list[int], sizes: list[int]) -> list[list[tuple[int, int, int]]]:
    """For each array of ``sizes`` (in order), its ``(shard, start, count)`` pieces in the shards."""
    pieces, shard, start = [], 0, 0
    for size in sizes:
        own = []
        while size:
            while start == shard_counts[shard]:
                shard, start = shard + 1, 0
            count = min(size, shard_counts[shard] - start)
            own.append((shard, start, count))
            start, size = start + count, size - count
        pieces.append(own)
    return pieces


def read_values(shard: Shard, start: int, out: np.ndarray) -> None:
    """Fill the 1-D float32 ``out`` with the shard's values ``start : start + len(out)``."""
    with open(shard.path, "rb") as f:
        f.seek(shard.data_offset + start * shard.dtype.itemsize)
        if shard.dtype == out.dtype:
            got = f.readinto(memoryview(out).cast("B"))
            if got != out.nbytes:
                raise ValueError(f"{shard.path}: file ended {out.nbytes - got} bytes early")
            return
        for lo in range(0, out.size, CONVERT_ELEMENTS):
            chunk = np.fromfile(f, dtype=shard.dtype, count=min(CONVERT_ELEMENTS, out.size - lo))
            if chunk.size == 0:
                raise ValueError(f"{shard.path}: file ended early")
            out[lo:lo + chunk.size] = chunk


def check_config(cfg: Config, release: Release, n_transfer: int, shapes_path) -> None:
    """Refuse a config the release cannot fill, naming the field and both values."""
    for field in ("n_embd", "n_vocab"):
        if getattr(cfg, field) != getattr(release, field):
            raise ValueError(f"cfg.{field}={getattr(cfg, field)} but {shapes_path} has "
                             f"{field}={getattr(release, field)}")
    if cfg.n_ctx > release.n_ctx:
        raise ValueError(f"cfg.n_ctx={cfg.n_ctx} exceeds the {release.n_ctx} position embeddings "
                         f"in {shapes_path}")
    limit = min(cfg.n_layer, release.n_layer)
    if not -1 <= n_transfer <= limit:
        raise ValueError(f"n_transfer={n_transfer} must lie in [-1, {limit}] (cfg.n_layer="
                         f"{cfg.n_layer}, {shapes_path} describes {release.n_layer} block"
                         f"{'s' if release.n_layer != 1 else ''})")


def load_openai(path=None, *, cfg: Config | None = None, n_ctx: int = 512, n_special: int = 3,
                n_transfer: int = 12, seed: int = 0, download: bool = True, n_class: int = 1,
                base_url: str | None = None, checksums: dict[str, str] | None = None,
                progress: bool = True, verify: bool = True) -> tuple[dict[str, torch.Tensor], Config]:
    """Parameters (float32) for ``cfg`` from the original release; returns ``(params, cfg)``.

    ``path``: the release folder (else ``$GPT1F_WEIGHTS``, else ``<repo>/weights``); missing files are
    downloaded and verified (``gpt1f.download.fetch``) unless ``download=False``. ``cfg`` defaults
    to ``Config.gpt1(n_ctx=n_ctx, n_special=n_special)``; ``n_ctx`` and ``n_special`` are only
    used for that default.

    ``n_transfer`` follows the TF original, which assigns its first ``1 + 12 * n_transfer``
    variables: ``-1`` transfers nothing, ``0`` only ``model/we:0`` (tokens and positions), ``k`` also
    blocks ``0 .. k-1``. Everything not transferred is drawn by ``init_value`` from one generator
    seeded with ``seed``, in ``param_shapes`` order: the special-token rows of ``we`` (or all of
    ``we`` when ``n_transfer == -1``), the blocks not transferred, then the ``clf`` head.

    The whole release is checked (shapes file, every shard's header and size) before any value is
    read, then (``verify``) every file's git-blob SHA-1 against the release's, or against the
    folder's ``gpt1f-manifest.json`` when ``save_openai`` wrote it (hashed once, then trusted while
    size, mtime and inode stay the same: see ``gpt1f.download.verify_files``); errors name the file
    and what was expected. Non-finite values are refused. Nothing partial is returned.
    """
    cfg = Config.gpt1(n_ctx=n_ctx, n_special=n_special) if cfg is None else cfg
    directory = fetch(WEIGHT_NAMES, weights_dir(path), base_url=base_url, download=download,
                      checksums=checksums, progress=progress, verify=False)
    release = read_shapes(directory / SHAPES_NAME)
    check_config(cfg, release, n_transfer, directory / SHAPES_NAME)
    shards = [read_shard_header(directory / name) for name in SHARD_NAMES]
    sizes = [math.prod(s) for s in release_shapes(release)]
    total = sum(s.count for s in shards)
    if total != sum(sizes):
        raise ValueError(f"the shards in {directory} hold {total} values but {SHAPES_NAME} "
                         f"describes {sum(sizes)}")

    if verify:
        verify_files(WEIGHT_NAMES, directory, checksum_table(directory, checksums))

    params = allocate(cfg, n_transfer, seed, n_class)
    targets = transfer_targets(params, cfg, n_transfer, release)
    stream_into(targets, shards, dict(zip(release_names(release.n_layer), sizes)))
    bad = [name for name in targets if not np.isfinite(targets[name]).all()]
    if bad:
        raise ValueError(f"{directory}: the release array {bad[0]} holds NaN or inf values")
    return params, cfg


def stream_into(targets: dict[str, np.ndarray], shards: list[Shard], sizes: dict[str, int]) -> None:
    """Read each release array's leading ``len(targets[name])`` values straight into its target,
    piece by piece across shard boundaries; arrays without a target are not read."""
    pieces = array_pieces([s.count for s in shards], list(sizes.values()))
    for name, own in zip(sizes, pieces):
        out, done = targets.get(name), 0
        for shard, start, count in own:
            if out is None or done == out.size:
                break
            count = min(count, out.size - done)
            read_values(shards[shard], start, out[done:done + count])
            done += count


def allocate(cfg: Config, n_transfer: int, seed: int, n_class: int) -> dict[str, torch.Tensor]:
    """Parameters with the transferred variables left empty and the rest initialised from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in param_shapes(cfg, n_class).items():
        if not is_transferred(name, n_transfer):
            params[name] = init_value(name, shape, generator)
        elif name == "model/we:0":
            params[name] = torch.empty(shape, dtype=torch.float32)
            specials = init_value(name, (cfg.n_special, cfg.n_embd), generator)
            params[name][cfg.n_vocab:cfg.pos_offset] = specials
        else:
            params[name] = torch.empty(shape, dtype=torch.float32)
    return params


def is_transferred(name: str, n_transfer: int) -> bool:
    """Whether the TF original's ``n_transfer`` assigns the variable ``name``."""
    if name == "model/we:0":
        return n_transfer >= 0
    if name.startswith("model/h"):
        return int(name[len("model/h"):].split("/", 1)[0]) < n_transfer
    return False


def transfer_targets(params, cfg: Config, n_transfer: int, release: Release) -> dict[str, np.ndarray]:
    """Release array name -> flat float32 numpy view of where its (leading) values go."""
    if n_transfer < 0:
        return {}
    we = params["model/we:0"]
    targets = {TOKENS: we[:cfg.n_vocab].numpy().reshape(-1),
               POSITIONS: we[cfg.pos_offset:].numpy().reshape(-1)}  # first n_ctx of the rows
    for i in range(n_transfer):
        for v in LAYER_VARIABLES:
            targets[f"model/h{i}/{v}"] = params[f"model/h{i}/{v}"].numpy().reshape(-1)
    return targets


def shapes_json(release: Release) -> str:
    """``params_shapes.json``'s text, formatted as in the release."""
    return json.dumps([list(s) for s in release_shapes(release)])


def save_openai(params: dict[str, torch.Tensor], path, *, cfg: Config) -> pathlib.Path:
    """Write ``params`` in the release format: ``params_shapes.json`` and ten float32 shards.

    Only what the release holds is written: positions (``cfg.n_ctx`` rows), tokens and the blocks.
    Special-token rows and the ``clf`` head have no place in the format (``load_openai`` draws
    them from its seed); keep fine-tuned models with ``save_hf`` or a checkpoint instead. The flat
    values are split into ten nearly equal shards (the first ones one value longer).

    The save is atomic as a whole for ``load_openai``: every file is written under a ``.tmp`` name,
    the folder's old ``gpt1f-manifest.json`` is removed, the files are renamed into place, and the
    new manifest (every file's git-blob SHA-1) is written last. A save killed part-way leaves
    either the old files with their manifest, or files no manifest vouches for, which
    ``load_openai`` refuses. Returns the folder.
    """
    release = Release(cfg.n_ctx, cfg.n_vocab, cfg.n_embd, cfg.n_layer)
    arrays = release_arrays(params, cfg)
    sizes = [math.prod(s) for s in release_shapes(release)]
    counts = shard_counts(sum(sizes))
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    names = (*SHARD_NAMES, SHAPES_NAME)
    temporary = [directory / (name + ".tmp") for name in names]
    try:
        write_shards(arrays, counts, sizes, temporary[:N_SHARDS])
        temporary[-1].write_text(shapes_json(release))
        sha1 = {name: git_blob_sha1(tmp) for name, tmp in zip(names, temporary)}
    except BaseException:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)
        raise
    manifest = {**read_manifest(directory), **sha1}
    (directory / MANIFEST_NAME).unlink(missing_ok=True)
    for tmp in temporary:
        os.replace(tmp, tmp.with_suffix(""))
    write_manifest(directory, manifest)
    _record_verified(directory, sha1)
    return directory


def shard_counts(total: int) -> list[int]:
    """Values per shard: ``total`` split into ten nearly equal parts, the first ones longer."""
    q, r = divmod(total, N_SHARDS)
    return [q + (i < r) for i in range(N_SHARDS)]


def write_shards(arrays, counts: list[int], sizes: list[int], paths: list[pathlib.Path]) -> None:
    """Stream ``arrays`` (file order) into 1-D ``<f4`` ``.npy`` files holding ``counts`` values."""
    files = [open(p, "wb") for p in paths]
    try:
        for f, count in zip(files, counts):
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": (count,)})
        for array, own in zip(arrays, array_pieces(counts, sizes)):
            flat = array.detach().to("cpu", torch.float32).contiguous().numpy().reshape(-1)
            flat = flat.astype("<f4", copy=False)
            done = 0
            for shard, _, count in own:  # pieces come in file order, so appending is enough
                files[shard].write(memoryview(flat[done:done + count]).cast("B"))
                done += count
    finally:
        for f in files:
            f.close()


def release_arrays(params: dict[str, torch.Tensor], cfg: Config) -> list[torch.Tensor]:
    """The release's arrays from ``params``, in file order; checks names and shapes."""
    shapes = param_shapes(cfg)
    needed = ["model/we:0"] + release_names(cfg.n_layer)[2:]
    missing = [n for n in needed if n not in params]
    if missing:
        raise KeyError(f"params lack {', '.join(missing)} needed for the release format")
    for name in needed:
        if tuple(params[name].shape) != shapes[name]:
            raise ValueError(f"params[{name!r}] has shape {list(params[name].shape)}, expected "
                             f"{list(shapes[name])} for cfg")
    we = params["model/we:0"]
    return [we[cfg.pos_offset:], we[:cfg.n_vocab]] + [params[n] for n in needed[1:]]

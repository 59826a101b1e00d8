"""The paper's input transformations (its Figure 1): text splits -> padded token arrays.

Each kind lays out its rows from the example's segments and the task tokens (``LAYOUTS``)::

    classification   [_start_] text [_classify_]                                    [N, T]
    entailment       [_start_] premise [_delimiter_] hypothesis [_classify_]        [N, T]
    similarity       [_start_] a [_delimiter_] b [_classify_], and b; a             [N, 2, T]
    multiple_choice  [_start_] context question [_delimiter_] answer_k [_classify_]  [N, C, T]

A row longer than ``n_ctx`` keeps its task tokens and loses tokens from the END of its segments,
as the TF original's ``x[:max_len]``. How many each segment keeps is ``truncate``'s rule:
water-filling, so the short question and answer of a long RACE article stay whole and the article
takes the rest. ``max_len=`` first caps every segment at ``max_len`` tokens, fitting or not, which is
the TF ROCStories rule (``gpt1f.rocstories.max_len_for``); ``prepare_data(..., max_len=...)`` then
gives exactly ``gpt1f.rocstories.transform``'s arrays.
"""
from __future__ import annotations

import itertools
from typing import Callable, NamedTuple, Sequence

import numpy as np

from gpt1f.finetune.task import Data, Task, TextSplit
from gpt1f.rocstories import DataError

# A row as task-token names and segment slots: slot i is the i-th segment of the row.
LAYOUTS = {
    "classification": ("_start_", 0, "_classify_"),
    "entailment": ("_start_", 0, "_delimiter_", 1, "_classify_"),
    "similarity": ("_start_", 0, "_delimiter_", 1, "_classify_"),
    "multiple_choice": ("_start_", 0, 1, "_delimiter_", 2, "_classify_"),
}
N_SEGMENTS = {"classification": 1, "entailment": 2, "similarity": 2, "multiple_choice": 2}
Ids = list[int]


class EncodedSplit(NamedTuple):
    """A ``TextSplit`` as BPE ids: ``segments`` one [N] list of id lists per text field,
    ``choices`` [N][C] id lists or None; ``label`` and ``source`` as the text split's."""
    segments: tuple[list[Ids], ...]
    choices: list[list[Ids]] | None
    label: np.ndarray | None
    source: list[str]


# ---------------------------------------------------------------- encoding

def encode_split(split: TextSplit, encode: Callable[[list[str]], list[Ids]]) -> EncodedSplit:
    """Every text field and choice of ``split`` as BPE ids, in one call of ``encode`` (list of texts
    -> list of id lists), so the encoder batches and parallelises over the whole split."""
    texts = [text for field in split.segments for text in field]
    widths = [len(c) for c in split.choices] if split.choices is not None else []
    texts += [text for choices in split.choices or () for text in choices]
    ids = encode(texts)
    if len(ids) != len(texts):
        raise ValueError(f"encode returned {len(ids)} id lists for {len(texts)} texts")
    segments, at = [], 0
    for field in split.segments:
        segments.append(ids[at:at + len(field)])
        at += len(field)
    choices = None
    if split.choices is not None:
        choices = []
        for width in widths:
            choices.append(ids[at:at + width])
            at += width
    return EncodedSplit(tuple(segments), choices, split.label, split.source)


# ---------------------------------------------------------------- truncation

def water_fill(lengths: Sequence[int], budget: int) -> list[int]:
    """Lengths summing to ``min(sum(lengths), budget)``: segments no longer than an equal share of
    what is left are kept whole (shortest first, the share recomputed after each), the rest share
    the remainder equally, the first of them in segment order taking one token more each when it
    does not divide."""
    if sum(lengths) <= budget:
        return list(lengths)
    kept = list(lengths)
    left, open_ = budget, sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    while open_ and lengths[open_[0]] <= left // len(open_):
        left -= lengths[open_.pop(0)]
    share, extra = divmod(left, len(open_))
    for rank, i in enumerate(sorted(open_)):
        kept[i] = share + (rank < extra)
    return kept


def truncate(lengths: Sequence[int], budget: int, *, max_len: int | None = None) -> list[int]:
    """How many tokens each segment of a row keeps (the first ones: a segment is cut at its end).

    ``budget``: the row's positions less its task tokens. ``max_len=None``: nothing is cut when the
    row fits, else ``water_fill``. ``max_len``: every segment is first cut to ``max_len`` tokens
    (the TF ROCStories ``x[:max_len]``, fitting or not), then water-filled if still too long.
    [segments] -> [segments], each ``<=`` its length, summing to at most ``budget``.
    """
    if budget < 0:
        raise ValueError(f"budget={budget}: n_ctx leaves no room for the row's task tokens")
    if max_len is not None:
        lengths = [min(n, max_len) for n in lengths]
    return water_fill(lengths, budget)


# ---------------------------------------------------------------- rows

def example_rows(split: EncodedSplit, kind: str, i: int) -> list[list[Ids]]:
    """The segments of each row of example ``i``: [rows][segments of the layout]."""
    fields = [segment[i] for segment in split.segments]
    if kind == "similarity":
        return [fields, fields[::-1]]
    if kind == "multiple_choice":
        return [[*fields, answer] for answer in split.choices[i]]
    return [fields]


def row_lengths(rows: list[list[Ids]], kind: str, n_ctx: int, max_len: int | None) -> list[list[int]]:
    """Kept tokens per segment of each row. Similarity cuts both orders alike, so the rows stay
    each other's swap; multiple choice cuts each choice's row on its own, so a long answer costs
    context in its own row only."""
    budget = n_ctx - sum(isinstance(slot, str) for slot in LAYOUTS[kind])
    if kind == "similarity":
        kept = truncate([len(s) for s in rows[0]], budget, max_len=max_len)
        return [kept, kept[::-1]]
    return [truncate([len(s) for s in row], budget, max_len=max_len) for row in rows]


def assemble(segments: list[Ids], kept: list[int], kind: str, special: dict[str, int]) -> Ids:
    """One row: the layout's task tokens around the first ``kept[i]`` ids of each segment."""
    row = []
    for slot in LAYOUTS[kind]:
        row.extend([special[slot]] if isinstance(slot, str) else segments[slot][:kept[slot]])
    return row


def transform_split(split: EncodedSplit, kind: str, special: dict[str, int], *, n_ctx: int,
                    max_len: int | None = None) -> tuple[list[list[Ids]], int]:
    """The rows of every example ([N][rows] id lists, each at most ``n_ctx`` long) and how many
    examples lost tokens."""
    examples, trimmed = [], 0
    for i in range(len(split.source)):
        rows = example_rows(split, kind, i)
        kept = row_lengths(rows, kind, n_ctx, max_len)
        trimmed += any(k < len(s) for row, lens in zip(rows, kept) for s, k in zip(row, lens))
        examples.append([assemble(row, lens, kind, special) for row, lens in zip(rows, kept)])
    return examples, trimmed


def pad(examples: list[list[Ids]], n_rows: int, n_ctx: int, *, squeeze: bool) -> tuple[np.ndarray, np.ndarray]:
    """``tokens`` int64 (0 after each row's end) and ``mask`` float32 (1 on real tokens), shaped
    [N, n_rows, n_ctx], or [N, n_ctx] when ``squeeze`` (one row per example)."""
    rows = [row for example in examples for row in example]               # [N * n_rows] id lists
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    real = np.arange(n_ctx) < lengths[:, None]                            # [N * n_rows, n_ctx]
    tokens = np.zeros(real.shape, dtype=np.int64)
    tokens[real] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    shape = (len(examples), n_ctx) if squeeze else (len(examples), n_rows, n_ctx)
    return tokens.reshape(shape), real.astype(np.float32).reshape(shape)


# ---------------------------------------------------------------- checks and the entry point

def check_split(task: Task, name: str, split: TextSplit) -> None:
    """Raise DataError naming the split, field or example (its ``source``) that does not fit ``task``."""
    n = len(split.source)
    if len(split.segments) != N_SEGMENTS[task.kind]:
        raise DataError(f"task {task.name!r}, split {name!r}: a {task.kind} split has "
                        f"{N_SEGMENTS[task.kind]} text fields, got {len(split.segments)}")
    lengths = [len(field) for field in split.segments]
    if split.choices is not None:
        lengths.append(len(split.choices))
    if split.label is not None:
        lengths.append(len(split.label))
    if any(length != n for length in lengths):
        raise DataError(f"task {task.name!r}, split {name!r}: fields, choices and labels have "
                        f"{lengths} entries but there are {n} sources")
    if task.kind != "multiple_choice":
        return
    if split.choices is None:
        raise DataError(f"task {task.name!r}, split {name!r}: a multiple-choice split needs choices")
    for source, choices in zip(split.source, split.choices):
        if len(choices) != task.n_classes:
            raise DataError(f"{source}: {len(choices)} choices, task {task.name!r} has "
                            f"{task.n_classes} per example")


def label_array(task: Task, label: np.ndarray | None) -> np.ndarray | None:
    """A copy of ``label`` [N]: float64 scores for an 'mse' task, else int64 classes."""
    if label is None:
        return None
    return np.array(label, dtype=np.float64 if task.objective == "mse" else np.int64)


def prepare_data(task: Task, splits: dict[str, TextSplit], encoder, *, n_ctx: int,
                 max_len: int | None = None) -> tuple[Data, dict[str, int]]:
    """Encode, transform and pad every split to one T, the longest row over all splits (at most
    ``n_ctx``). ``encoder``: ``encode(list[str])``, ``special`` (the three task tokens) and
    ``n_vocab``, as ``gpt1f.text.TextEncoder``. ``max_len``: see ``truncate``.

    Returns ``Data`` (tokens/mask [N, T] or [N, C, T], see ``task.Data``) and the number of
    examples of each split that lost tokens to fit.
    """
    missing = [name for name in ("_start_", "_delimiter_", "_classify_") if name not in encoder.special]
    if missing:
        raise ValueError(f"the encoder's special tokens {encoder.special} lack {missing}")
    for name, split in splits.items():
        check_split(task, name, split)
    rows, trimmed = {}, {}
    for name, split in splits.items():
        encoded = encode_split(split, encoder.encode)
        rows[name], trimmed[name] = transform_split(encoded, task.kind, encoder.special,
                                                    n_ctx=n_ctx, max_len=max_len)
    longest = max((len(row) for examples in rows.values() for ex in examples for row in ex), default=0)
    squeeze = task.kind in ("classification", "entailment")
    n_rows = {"similarity": 2, "multiple_choice": task.n_classes}.get(task.kind, 1)
    arrays = {}
    for name, examples in rows.items():
        tokens, mask = pad(examples, n_rows, longest, squeeze=squeeze)
        arrays[name] = {"tokens": tokens, "mask": mask, "label": label_array(task, splits[name].label)}
    return Data(arrays, encoder.n_vocab, longest), trimmed

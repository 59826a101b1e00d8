"""One synthetic dataset per task kind, with a rule a tiny model learns from scratch.

``write_synthetic(kind, data_dir, n_rows=, seed=)`` writes ``synthetic_{kind}_{train,valid,test}``
files in the generic reader's formats (``readers.read_table``), so ``--dataset synthetic`` runs
through the same reader as a user's own files; ``synthetic_preset(kind, data_dir)`` reads them.
The rules, like ``gpt1f.rocstories``' synthetic stories, can be read off a few words, so a
1-layer, 32-wide model learns them within a few dozen updates: the data checks that the pipeline
learns, not that the model reasons.

=================  ======  =============================================================  =======
kind               format  rule                                                           labels
=================  ======  =============================================================  =======
classification     .tsv    the review holds a positive or a negative word and phrase      2
entailment         .tsv    the hypothesis puts the premise's person at its place          3
                           (entailment), names a stranger never seen in premises
                           (neutral), or says the person ``never`` left home
                           (contradiction)
similarity         .tsv    ``sentence2`` keeps k of ``sentence1``'s five words, the rest  0-5
                           from words never in a ``sentence1``; score k
multiple_choice    .jsonl  of four endings the right one names the context's person, the  4
                           others strangers
=================  ======  =============================================================  =======

Labels are balanced exactly (each class equally often, in a shuffled order). Every row's ``id``
starts with ``synthetic-``, and a file without that mark is never overwritten.
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
from typing import Callable, NamedTuple

import numpy as np

from gpt1f.finetune import presets, readers
from gpt1f.rocstories import NAMES, PLACES, STRANGERS, THINGS, DataError

SPLITS = ("train", "valid", "test")
MARK = "synthetic-"

POSITIVE = ("wonderful", "excellent", "delightful", "brilliant", "lovely", "superb")
NEGATIVE = ("awful", "terrible", "boring", "dreadful", "dull", "horrible")
# Each class closes with its own phrase too: most of a review's tokens carry its class, which a
# 1-layer model pooling at _classify_ picks up within a few dozen updates (one word alone takes ~100).
POSITIVE_CLOSES = ("we loved every minute.", "a real joy.", "we would go again.")
NEGATIVE_CLOSES = ("we left early.", "a waste of time.", "never again.")
SUBJECTS = ("The film", "The meal", "The trip", "The book", "The concert", "The hotel", "The game", "The show")
SENTENCE_WORDS = ("apple", "river", "candle", "window", "garden", "pencil", "violin", "bridge",
                  "forest", "ladder", "mirror", "basket", "tunnel", "carpet", "island", "rocket")
OTHER_WORDS = ("copper", "velvet", "thunder", "marble", "saddle", "lantern", "harbor", "walnut",
               "glacier", "pepper", "falcon", "meadow")          # never in a sentence1
N_WORDS = 5
ENDINGS = ("{name} went home happy with {thing}.", "{name} smiled and kept {thing}.",
           "In the end {name} was glad to have {thing}.")


class Spec(NamedTuple):
    """What the generic reader needs to read one kind's files."""
    suffix: str
    header: tuple[str, ...]
    text_cols: tuple[str, ...]
    label_col: str
    label_map: dict[str, int] | None = None
    choice_cols: tuple[str, ...] | None = None
    score_range: tuple[float, float] | None = None


SPECS = {
    "classification": Spec(".tsv", ("id", "text", "label"), ("text",), "label",
                           label_map={"negative": 0, "positive": 1}),
    "entailment": Spec(".tsv", ("id", "premise", "hypothesis", "label"), ("premise", "hypothesis"), "label",
                       label_map={"entailment": 0, "neutral": 1, "contradiction": 2}),
    "similarity": Spec(".tsv", ("id", "sentence1", "sentence2", "score"), ("sentence1", "sentence2"), "score",
                       score_range=(0.0, float(N_WORDS))),
    "multiple_choice": Spec(".jsonl", ("id", "context", "question", "choices", "label"), ("context", "question"),
                            "label", choice_cols=("choices",)),
}
N_LABELS = {"classification": 2, "entailment": 3, "similarity": N_WORDS + 1, "multiple_choice": 4}


# ---------------------------------------------------------------- one example per kind: (fields, label)

def pick(rng: np.random.Generator, options) -> str:
    return str(options[int(rng.integers(len(options)))])


def review(rng, label: int) -> tuple[list[str], str]:
    words, closes = ((NEGATIVE, NEGATIVE_CLOSES), (POSITIVE, POSITIVE_CLOSES))[label]
    return [f"{pick(rng, SUBJECTS)} was {pick(rng, words)}, {pick(rng, closes)}"], ("negative", "positive")[label]


def inference(rng, label: int) -> tuple[list[str], str]:
    name, place = pick(rng, NAMES), pick(rng, PLACES)
    premise = f"{name} went to the {place} on Sunday. {name} wanted to find {pick(rng, THINGS)}."
    hypothesis = (f"{name} was at the {place} that day.", f"{pick(rng, STRANGERS)} met a friend at the {place}.",
                  f"{name} never left home on Sunday.")[label]
    return [premise, hypothesis], ("entailment", "neutral", "contradiction")[label]


def overlap(rng, label: int) -> tuple[list[str], str]:
    first = list(rng.choice(SENTENCE_WORDS, N_WORDS, replace=False))
    second = [*rng.choice(first, label, replace=False), *rng.choice(OTHER_WORDS, N_WORDS - label, replace=False)]
    return [" ".join(first), " ".join(rng.permutation(second))], f"{label:.1f}"


def story_choice(rng, label: int) -> tuple[list, int]:
    name, place = pick(rng, NAMES), pick(rng, PLACES)
    thing = pick(rng, THINGS)
    context = f"{name} went to the {place} on Sunday. {name} was looking for {thing}."
    template = pick(rng, ENDINGS)
    strangers = rng.choice(STRANGERS, 3, replace=False)
    wrong = iter(template.format(name=s, thing=pick(rng, THINGS)) for s in strangers)
    choices = [template.format(name=name, thing=thing) if k == label else next(wrong) for k in range(4)]
    return [context, "What happened at the end?", choices], label


EXAMPLE: dict[str, Callable] = {"classification": review, "entailment": inference, "similarity": overlap,
                                "multiple_choice": story_choice}


# ---------------------------------------------------------------- files

def synthetic_paths(kind: str, data_dir) -> dict[str, pathlib.Path]:
    check_kind(kind)
    return {split: pathlib.Path(data_dir) / f"synthetic_{kind}_{split}{SPECS[kind].suffix}" for split in SPLITS}


def check_kind(kind: str) -> None:
    if kind not in SPECS:
        raise DataError(f"--task {kind!r}: no synthetic dataset; use one of {', '.join(SPECS)}")


def is_synthetic(path) -> bool:
    """Whether a file was written by ``write_synthetic`` (its first row's id says so)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        if pathlib.Path(path).suffix == ".jsonl":
            first = f.readline()
            try:
                return str(json.loads(first).get("id", "")).startswith(MARK)
            except (json.JSONDecodeError, AttributeError):
                return False
        f.readline()
        return f.readline().startswith(MARK)


def rows(kind: str, n: int, seed: int, split: int) -> list[tuple[str, list, object]]:
    """``n`` examples ``(id, fields, label)`` of one split, labels balanced and shuffled."""
    rng = np.random.default_rng([seed, split])
    labels = rng.permutation(np.arange(n) % N_LABELS[kind])
    return [(f"{MARK}{seed}-{SPLITS[split]}-{i:05d}", *EXAMPLE[kind](rng, int(label)))
            for i, label in enumerate(labels)]


def write_rows(path: pathlib.Path, spec: Spec, examples) -> None:
    """Write under a temporary name and rename, so a reader never sees half a file."""
    part = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(part, "w", newline="", encoding="utf-8") as f:
        if spec.suffix == ".jsonl":
            for id_, fields, label in examples:
                f.write(json.dumps(dict(zip(spec.header, (id_, *fields, label)))) + "\n")
        else:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
            writer.writerow(spec.header)
            writer.writerows((id_, *fields, label) for id_, fields, label in examples)
    os.replace(part, path)


def write_synthetic(kind: str, data_dir, *, n_rows: int = 400, seed: int = 0,
                    n_eval: int | None = None) -> dict[str, pathlib.Path]:
    """Write ``n_rows`` training examples and ``n_eval`` (default ``n_rows // 4``) valid and test
    examples of ``kind`` into ``data_dir``; the same seed writes the same bytes. Refuses, before
    writing anything, to replace a file that ``write_synthetic`` did not write."""
    paths = synthetic_paths(kind, data_dir)
    n_eval = max(n_rows // 4, N_LABELS[kind]) if n_eval is None else n_eval
    if min(n_rows, n_eval) < 1:
        raise DataError(f"n_rows={n_rows}, n_eval={n_eval}: every split needs at least one example")
    for path in paths.values():
        if path.exists() and not is_synthetic(path):
            raise DataError(f"{path}: exists and was not written by write_synthetic; refusing to overwrite it "
                            "(choose another --data_dir)")
    pathlib.Path(data_dir).mkdir(parents=True, exist_ok=True)
    for split, (name, path) in enumerate(paths.items()):
        write_rows(path, SPECS[kind], rows(kind, n_rows if name == "train" else n_eval, seed, split))
    return paths


def synthetic_preset(kind: str, data_dir, *, log: readers.Log = readers.log_to_stderr) -> presets.Preset:
    """The preset of the files ``write_synthetic(kind, data_dir)`` wrote, read through ``read_table``."""
    paths = synthetic_paths(kind, data_dir)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"synthetic {kind} data not found: {', '.join(missing)}; write it with "
                        f"gpt1f.finetune.synthetic.write_synthetic({kind!r}, {str(data_dir)!r}) or --dataset synthetic")
    spec = SPECS[kind]
    return presets.table_preset(kind, train=paths["train"], valid=paths["valid"], test=paths["test"],
                                text_cols=spec.text_cols, label_col=spec.label_col, label_map=spec.label_map,
                                choice_cols=spec.choice_cols, score_range=spec.score_range,
                                name=f"synthetic_{kind}", log=log)

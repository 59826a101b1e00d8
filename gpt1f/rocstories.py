"""The ROCStories Cloze Test as the TF original prepares it: read, split, encode, pad.

The labelled ``cloze_test_val`` file (1,871 stories) is split into 1,497 train / 374 valid exactly
as the original's ``train_test_split(test_size=374, random_state=3535999445)``; the ``cloze_test_test``
file is only predicted. Each example becomes two sequences, one per candidate ending::

    [_start_] story[:max_len] [_delimiter_] ending[:max_len] [_classify_]

and the multiple-choice head picks the sequence whose ``_classify_`` state scores higher.
``write_synthetic`` makes files of the same format with a learnable rule, for trying the pipeline.
pandas is imported inside the reader only, so ``import gpt1f`` stays light.
"""
from __future__ import annotations

import csv
import os
import pathlib
from typing import Callable, NamedTuple, Sequence

import numpy as np

VALID_FILE = "cloze_test_val__spring2016 - cloze_test_ALL_val.csv"
TEST_FILE = "cloze_test_test__spring2016 - cloze_test_ALL_test.csv"
STORY_COLUMNS = ("InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4")
ENDING_COLUMNS = ("RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2")
ID_COLUMN, LABEL_COLUMN = "InputStoryid", "AnswerRightEnding"
COLUMNS = (ID_COLUMN, *STORY_COLUMNS, *ENDING_COLUMNS, LABEL_COLUMN)
SPLIT_SEED = 3535999445  # the original's train_test_split random_state
N_VALID = 374
MAX_N_CTX = 512
DATASET_URL = "https://cs.rochester.edu/nlp/rocstories/"


class DataError(ValueError):
    """The data directory or a CSV in it is unusable; the message says which file and row."""


class Stories(NamedTuple):
    """One split as text. ``label`` [N] int64 is the right ending's index (0 or 1), or None."""
    story: list[str]
    ending1: list[str]
    ending2: list[str]
    label: np.ndarray | None


class Encoded(NamedTuple):
    """One split as BPE ids (lists of varying length). ``label`` [N] int64 or None."""
    story: list[list[int]]
    ending1: list[list[int]]
    ending2: list[list[int]]
    label: np.ndarray | None


# ---------------------------------------------------------------- reading and validation

def missing_files_message(data_dir: pathlib.Path, missing: Sequence[str]) -> str:
    names = "\n".join(f"  {name}" for name in missing)
    return (f"ROCStories data not found: {data_dir} lacks\n{names}\n"
            f"The Cloze Test files are obtained through the request form on the ROCStories "
            f"website ({DATASET_URL}); put both CSVs in --data_dir. To try the pipeline without "
            f"them, run with --dataset synthetic.")


def check_data_dir(data_dir) -> None:
    """Raise DataError naming every missing file, the folder and where the dataset comes from."""
    data_dir = pathlib.Path(data_dir)
    missing = [name for name in (VALID_FILE, TEST_FILE) if not (data_dir / name).is_file()]
    if missing:
        raise DataError(missing_files_message(data_dir, missing))


def read_cloze_csv(path, *, require_labels: bool) -> Stories:
    """One Cloze Test CSV; every cell checked, errors name the file, row (1 = first story) and column.

    The test file's ``AnswerRightEnding`` is optional (``require_labels=False``): when the column is
    absent ``label`` is None.
    """
    import pandas as pd

    path = pathlib.Path(path)
    check_field_counts(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot be read as CSV ({e})") from None
    needed = COLUMNS if require_labels else COLUMNS[:-1]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected a header row "
                        f"with {', '.join(COLUMNS)}")
    if len(frame) == 0:
        raise DataError(f"{path}: no stories below the header row")
    for column in (*STORY_COLUMNS, *ENDING_COLUMNS):
        empty = [i for i, text in enumerate(frame[column]) if not text.strip()]
        if empty:
            raise DataError(f"{path}: row {_row(frame, empty[0])} has an empty {column}"
                            + (f" ({len(empty)} rows in all)" if len(empty) > 1 else ""))
    label = None
    if LABEL_COLUMN in frame.columns:
        label = np.array([_parse_label(path, frame, i, text)
                          for i, text in enumerate(frame[LABEL_COLUMN])], dtype=np.int64)
    story = [" ".join(row) for row in zip(*(frame[c] for c in STORY_COLUMNS))]
    return Stories(story, list(frame[ENDING_COLUMNS[0]]), list(frame[ENDING_COLUMNS[1]]), label)


def check_field_counts(path: pathlib.Path) -> None:
    """Every row must have the header's number of fields: pandas would read one extra field in
    every row as an index column and shift the others silently."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return                      # empty: the reader's own message follows
            for row in reader:
                if row and len(row) != len(header):
                    raise DataError(f"{path}: line {reader.line_num} has {len(row)} fields, the "
                                    f"header has {len(header)} ({', '.join(header)})")
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot be read as UTF-8 CSV ({e})") from None


def _row(frame, i: int) -> str:
    """'3 (InputStoryid abc)': a row as a person finds it in the file (1 = first story)."""
    return f"{i + 1} ({ID_COLUMN} {frame[ID_COLUMN].iloc[i]!r})"


def _parse_label(path, frame, i: int, text: str) -> int:
    """``AnswerRightEnding`` 1 or 2 -> 0 or 1."""
    try:
        value = int(text.strip())
    except ValueError:
        raise DataError(f"{path}: row {_row(frame, i)} has {LABEL_COLUMN}={text!r}, "
                        "not an integer (expected 1 or 2)") from None
    if value not in (1, 2):
        raise DataError(f"{path}: row {_row(frame, i)} has {LABEL_COLUMN}={value}, "
                        "out of range (expected 1 or 2)")
    return value - 1


def split_indices(n_rows: int, n_valid: int = N_VALID, seed: int = SPLIT_SEED):
    """Row indices ``(train [n_rows - n_valid], valid [n_valid])``, as scikit-learn's
    ``train_test_split(test_size=n_valid, random_state=seed)`` draws them."""
    if not 0 < n_valid < n_rows:
        raise DataError(f"--n_valid={n_valid} must lie between 1 and {n_rows - 1}, the labelled "
                        f"file's {n_rows} stories less at least one for training")
    perm = np.random.RandomState(seed).permutation(n_rows)
    return perm[n_valid:], perm[:n_valid]


def take(split: Stories, index: np.ndarray) -> Stories:
    pick = lambda xs: [xs[i] for i in index]  # noqa: E731
    return Stories(pick(split.story), pick(split.ending1), pick(split.ending2),
                   None if split.label is None else split.label[index])


def load_rocstories(data_dir, n_valid: int = N_VALID) -> dict[str, Stories]:
    """``{'train', 'valid', 'test'}`` splits of the Cloze Test files in ``data_dir``."""
    data_dir = pathlib.Path(data_dir)
    check_data_dir(data_dir)
    labelled = read_cloze_csv(data_dir / VALID_FILE, require_labels=True)
    test = read_cloze_csv(data_dir / TEST_FILE, require_labels=False)
    train_index, valid_index = split_indices(len(labelled.story), n_valid)
    return {"train": take(labelled, train_index), "valid": take(labelled, valid_index), "test": test}


# ---------------------------------------------------------------- encoding

def encode_split(split: Stories, encode: Callable[[list[str]], list[list[int]]]) -> Encoded:
    """BPE ids of every story and ending (``encode`` maps a list of texts to lists of ids)."""
    return Encoded(encode(split.story), encode(split.ending1), encode(split.ending2), split.label)


def max_len_for(n_ctx: int) -> int:
    """Longest story or ending kept: two halves of ``n_ctx`` less the three special tokens."""
    return n_ctx // 2 - 2


def fit_n_ctx(splits: Sequence[Encoded], n_ctx: int) -> int:
    """``n_ctx`` shrunk to the longest example over ``splits`` (+3 special tokens), as the original."""
    max_len = max_len_for(n_ctx)
    longest = max(len(s[:max_len]) + max(len(e1[:max_len]), len(e2[:max_len]))
                  for split in splits for s, e1, e2 in zip(split.story, split.ending1, split.ending2))
    return min(longest + 3, n_ctx)


def sequence(story: list[int], ending: list[int], *, max_len: int, start: int, delimiter: int,
             clf: int) -> list[int]:
    """``[start] story[:max_len] [delimiter] ending[:max_len] [clf]``"""
    return [start, *story[:max_len], delimiter, *ending[:max_len], clf]


def transform(split: Encoded, *, n_ctx: int, max_len: int, start: int, delimiter: int,
              clf: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded arrays ``tokens`` [N, 2, n_ctx] int64 (0 after the end) and ``mask`` [N, 2, n_ctx]
    float32 (1 over the real tokens), choice ``c`` holding ending ``c + 1``."""
    n = len(split.story)
    tokens = np.zeros((n, 2, n_ctx), dtype=np.int64)
    mask = np.zeros((n, 2, n_ctx), dtype=np.float32)
    for i, (s, e1, e2) in enumerate(zip(split.story, split.ending1, split.ending2)):
        for c, ending in enumerate((e1, e2)):
            ids = sequence(s, ending, max_len=max_len, start=start, delimiter=delimiter, clf=clf)
            if len(ids) > n_ctx:
                raise ValueError(f"example {i} needs {len(ids)} positions but n_ctx={n_ctx}; "
                                 "size n_ctx with fit_n_ctx over every split")
            tokens[i, c, :len(ids)] = ids
            mask[i, c, :len(ids)] = 1.0
    return tokens, mask


# ---------------------------------------------------------------- training-loop helpers

def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of epoch ``epoch``: a permutation [n], a pure function of (seed, epoch),
    so a resumed run redraws exactly the order it was interrupted in."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def accuracy(logits: np.ndarray, label: np.ndarray) -> float:
    """Percent of rows whose argmax is ``label``.  [N, C], [N] -> float"""
    return float(np.mean(np.argmax(logits, 1) == label) * 100.0)


def clf_cost(logits: np.ndarray, label: np.ndarray) -> float:
    """Mean softmax cross-entropy of the choices, in float64.  [N, C], [N] -> float"""
    logits = logits.astype(np.float64)
    top = logits.max(1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(1))
    return float(np.mean(log_z - logits[np.arange(len(label)), label]))


# ---------------------------------------------------------------- synthetic data

NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack",
         "Kate", "Leo", "Maria", "Nick", "Olivia", "Paul", "Rosa", "Sam", "Tina", "Victor")
STRANGERS = ("Quinn", "Xena", "Yuri", "Wendy", "Omar", "Fiona", "Zack", "Uma")  # never in a story
PLACES = ("market", "park", "beach", "library", "station", "garden", "museum", "lake")
THINGS = ("apples", "a kite", "a book", "a hat", "flowers", "a ticket", "bread", "a map")
OPENINGS = ("{name} went to the {place} on Sunday.", "{name} walked to the {place} early.",
            "One morning {name} visited the {place}.")
MIDDLES = ("{name} wanted to find {thing}.", "{name} was looking for {thing}.",
           "{name} hoped to get {thing}.")
TURNS = ("It was very crowded there.", "The weather was cold and windy.",
         "Many people were waiting in line.", "A friendly man offered to help.")
CLOSES = ("After a while the search was over.", "Soon everything was done.",
          "Finally the day came to an end.")
ENDINGS = ("{name} went home happy with {thing}.", "{name} smiled and kept {thing}.",
           "In the end {name} was glad to have {thing}.")


def synthetic_story(rng: np.random.Generator) -> tuple[list[str], str, str]:
    """Four sentences about one person, the right ending (that person, the thing they looked for)
    and a wrong one (the same template with a stranger and another thing).

    The rule: the right ending names the story's character. Strangers never appear in stories, so
    a model can also tell them from the ending alone, which a small model learns within a few
    dozen updates from scratch: the data checks that the pipeline learns, not that it reasons.
    """
    name, other = rng.choice(NAMES), rng.choice(STRANGERS)
    place = rng.choice(PLACES)
    thing, other_thing = rng.choice(THINGS, 2, replace=False)
    sentences = [str(rng.choice(OPENINGS)).format(name=name, place=place),
                 str(rng.choice(MIDDLES)).format(name=name, thing=thing),
                 str(rng.choice(TURNS)), str(rng.choice(CLOSES))]
    template = str(rng.choice(ENDINGS))
    right = template.format(name=name, thing=thing)
    return sentences, right, template.format(name=other, thing=other_thing)


def write_synthetic_csv(path, n_rows: int, seed: int) -> None:
    """A Cloze-Test-format CSV of ``n_rows`` synthetic stories (labels balanced at random),
    written under a temporary name and renamed, so a reader never sees half a file."""
    path = pathlib.Path(path)
    rng = np.random.default_rng(seed)
    part = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(part, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for i in range(n_rows):
            sentences, right, wrong = synthetic_story(rng)
            answer = int(rng.integers(1, 3))
            endings = (right, wrong) if answer == 1 else (wrong, right)
            writer.writerow([f"synthetic-{seed}-{i:05d}", *sentences, *endings, answer])
    os.replace(part, path)


def is_synthetic(path) -> bool:
    """Whether a Cloze Test CSV was written by ``write_synthetic`` (its first story id says so)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        f.readline()
        return f.readline().startswith("synthetic-")


def write_synthetic(data_dir, n_rows: int = 1871, seed: int = 0) -> pathlib.Path:
    """Write both Cloze Test files (``n_rows`` stories each, fixed seeds) into ``data_dir``."""
    data_dir = pathlib.Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_synthetic_csv(data_dir / VALID_FILE, n_rows, seed)
    write_synthetic_csv(data_dir / TEST_FILE, n_rows, seed + 1)
    return data_dir

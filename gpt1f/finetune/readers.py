"""Readers for the paper's datasets and a user's own tables, into ``TextSplit``s.

Every reader returns ``{'train', 'valid'[, 'test']}``; a test file without labels gives ``label``
None. Each example's ``source`` is ``"path:line"`` (RACE: ``"path:q"``, ``q`` the 0-based index in
the article's ``questions``). Bad input raises ``gpt1f.rocstories.DataError`` naming ``path:line``
and the reason. The layouts followed, as the public downloads have them:

GLUE (``download_glue_data.py``'s folders; tab-separated, read with ``csv.QUOTE_NONE`` because
sentences hold bare ``"``; columns looked up by header name):

- ``SST-2/``: ``train.tsv``, ``dev.tsv`` ``sentence label`` (0/1); ``test.tsv`` ``index sentence``.
- ``CoLA/``: ``train.tsv``, ``dev.tsv`` without a header, ``source label original_label sentence``;
  ``test.tsv`` ``index sentence`` with a header.
- ``MRPC/``: ``Quality #1 ID #2 ID #1 String #2 String`` (the train file may begin with a BOM);
  ``test.tsv`` ``index #1 ID #2 ID #1 String #2 String``.
- ``QQP/``: ``id qid1 qid2 question1 question2 is_duplicate``; ``test.tsv`` ``id question1
  question2``. A few rows lack values or fields (questions with newlines in the source data): they
  are skipped and counted, as is standard, and the count is logged.
- ``STS-B/``: ``index genre filename year old_index source1 source2 sentence1 sentence2 score``,
  score a float in [0, 5]; ``test.tsv`` the same without ``score``.
- ``MNLI/``: ``train.tsv``, ``dev_matched.tsv``, ``dev_mismatched.tsv``, ``test_matched.tsv``,
  ``test_mismatched.tsv``: ``index promptID pairID genre sentence1_binary_parse
  sentence2_binary_parse sentence1_parse sentence2_parse sentence1 sentence2 label1 [label2 ..
  label5] gold_label``; the test files stop at ``sentence2``.
- ``SNLI/``: ``train.tsv``, ``dev.tsv``, ``test.tsv``: ``index captionID pairID
  sentence1_binary_parse sentence2_binary_parse sentence1_parse sentence2_parse sentence1 sentence2
  label1 [label2 .. label5] gold_label``. Rows may have more annotator labels than the header
  names (train.tsv's header stops at ``label1``), so for MNLI and SNLI ``gold_label`` is a row's
  last field. Rows with ``gold_label`` ``-`` (no annotator consensus) are skipped and counted.
- ``QNLI/``: ``index question sentence label``; ``RTE/``: ``index sentence1 sentence2 label``
  (entailment / not_entailment); their test files lack ``label``.

SciTail: ``SciTailV1.1/tsv_format/scitail_1.0_{train,dev,test}.tsv``, no header, ``premise
hypothesis label`` with labels entails / neutral.

RACE: ``RACE/{train,dev,test}/{high,middle}/*.txt``, each file one JSON object per article with
``article``, ``questions`` [Q], ``options`` [Q][4], ``answers`` [Q] (letters A-D) and ``id``; one
example per question: segments (article, question), the 4 options as choices, the letter's index
as label.

Story Cloze: the ROCStories Cloze Test CSVs, read by ``gpt1f.rocstories`` (its split of the
labelled file into train/valid); context the four sentences, question ``""``, two choices.

A user's own table (``read_table``): ``.tsv`` (tab-separated, a header row, no quoting: a field
may hold ``"`` but not a tab or newline), ``.csv`` (comma-separated, a header row, standard CSV
quoting) or ``.jsonl`` (one JSON object a line). See ``read_table`` for columns and labels.
"""
from __future__ import annotations

import csv
import json
import math
import pathlib
import sys
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from gpt1f import rocstories
from gpt1f.finetune.task import TextSplit
from gpt1f.rocstories import DataError

SKIP = object()                 # a label parser's answer for a row the standard practice drops
Log = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------- records of a file

def require_file(path: pathlib.Path, what: str) -> pathlib.Path:
    """``path`` if it is a file, else DataError naming it and what it should be."""
    if not path.is_file():
        raise DataError(f"{path}: not found; expected {what}")
    return path


def bad_utf8_message(path: pathlib.Path) -> str:
    """Where the first non-UTF-8 byte of ``path`` is. A newline byte never occurs inside a UTF-8
    sequence, so decoding line by line finds the exact line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f"{path}:{number}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                        "re-save the file as UTF-8")
    return f"{path}: not UTF-8"


def delimited_records(path: pathlib.Path, *, delimiter: str, quoting: int) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` of every non-blank record of a delimited file, ``line`` the record's first
    line (1-based). A leading BOM is dropped; undecodable bytes and CSV errors raise DataError."""
    line = 1
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            for fields in reader:
                if fields:
                    yield line, fields
                line = reader.line_num + 1
    except UnicodeDecodeError:
        raise DataError(bad_utf8_message(path)) from None
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise DataError(f"{path}:{line}: cannot be read as {kind} ({e})") from None


def jsonl_records(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    """``(line, object)`` of every non-blank line of a JSON Lines file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line}: not JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{line}: a JSON {type(record).__name__}, expected an object")
                yield line, record
    except UnicodeDecodeError:
        raise DataError(bad_utf8_message(path)) from None


# ---------------------------------------------------------------- labels

LabelParser = Callable[[Any, str], Any]   # (value, "path:line: column") -> label, or SKIP


def label_by_name(names: Mapping[str, int], skip: Sequence[str] = ()) -> LabelParser:
    """Labels spelled as names: ``names[value]``; a value in ``skip`` drops the row."""
    def parse(value, where):
        key = value if isinstance(value, str) else json.dumps(value)
        if key in skip:
            return SKIP
        if key not in names:
            raise DataError(f"{where}: unknown label {key!r}; allowed: {', '.join(names)}")
        return names[key]
    return parse


def label_by_id(n_classes: int | None) -> LabelParser:
    """Labels as class ids 0 .. n_classes - 1 (any id >= 0 when ``n_classes`` is None)."""
    def parse(value, where):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise DataError(f"{where}: label {value!r} is not a class id (an integer)")
        try:
            label = int(value)
        except ValueError:
            raise DataError(f"{where}: label {value!r} is not a class id (an integer); give --label_map "
                            "to name the classes") from None
        if label < 0 or (n_classes is not None and label >= n_classes):
            allowed = "an id >= 0" if n_classes is None else f"0 .. {n_classes - 1}"
            raise DataError(f"{where}: label {label} is outside the task's classes ({allowed})")
        return label
    return parse


def label_score(score_range: tuple[float, float] | None) -> LabelParser:
    """Similarity scores: finite floats, inside ``score_range`` (inclusive) when one is given."""
    def parse(value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise DataError(f"{where}: score {value!r} is not a number")
        try:
            score = float(value)
        except ValueError:
            raise DataError(f"{where}: score {value!r} is not a number") from None
        if not math.isfinite(score):
            raise DataError(f"{where}: score {value!r} is not finite")
        if score_range is not None and not score_range[0] <= score <= score_range[1]:
            raise DataError(f"{where}: score {score:g} is outside the task's range "
                            f"{score_range[0]:g} to {score_range[1]:g}")
        return score
    return parse


# ---------------------------------------------------------------- examples from records

class Columns(NamedTuple):
    """The columns one example is made of: ``texts`` in segment order, ``choices`` (multiple choice:
    one column per choice, or in JSONL one column holding a list), the ``label`` column."""
    texts: tuple[str, ...]
    label: str | None
    choices: tuple[str, ...] = ()


class Rows:
    """Examples collected row by row, with the rows skipped by reason (for the log)."""

    def __init__(self, path: pathlib.Path, n_segments: int):
        self.path = path
        self.segments: tuple[list[str], ...] = tuple([] for _ in range(n_segments))
        self.choices: list[list[str]] = []
        self.labels: list = []
        self.source: list[str] = []
        self.skipped: dict[str, list[int]] = {}

    def add(self, source: str, texts: Sequence[str], choices: Sequence[str] | None, label) -> None:
        for segment, text in zip(self.segments, texts):
            segment.append(text)
        if choices is not None:
            self.choices.append(list(choices))
        self.labels.append(label)
        self.source.append(source)

    def skip(self, line: int, reason: str) -> None:
        self.skipped.setdefault(reason, []).append(line)

    def split(self, *, labelled: bool, multiple_choice: bool, log: Log) -> TextSplit:
        for reason, lines in self.skipped.items():
            log(f"{self.path}: skipped {len(lines)} row(s) with {reason} (first at line {lines[0]})")
        if not self.source:
            raise DataError(f"{self.path}: no examples" + (" left after skipping" if self.skipped else ""))
        label = None
        if labelled:
            dtype = np.float64 if any(isinstance(v, float) for v in self.labels) else np.int64
            label = np.array(self.labels, dtype=dtype)
        return TextSplit(self.segments, self.choices if multiple_choice else None, label, self.source)


def text_field(value, where: str) -> str:
    """A text cell: a non-empty string."""
    if not isinstance(value, str):
        raise DataError(f"{where}: {value!r} is not a string")
    if not value.strip():
        raise DataError(f"{where}: empty text")
    return value


def missing_columns(path: pathlib.Path, missing: Sequence[str], have: Sequence[str], hint: str) -> DataError:
    return DataError(f"{path}:1: missing column(s) {', '.join(missing)}; the header has "
                     f"{', '.join(have)}" + (f"; expected {hint}" if hint else ""))


def read_delimited(path, columns: Columns, parse_label: LabelParser | None, *, delimiter: str = "\t",
                   quoting: int = csv.QUOTE_NONE, names: Sequence[str] | None = None,
                   require_label: bool = True, extra_fields: int = 0, skip_incomplete: bool = False,
                   hint: str = "", log: Log = log_to_stderr) -> TextSplit:
    """One delimited file as a TextSplit.

    ``names``: the column names of a headerless file (else the first record is the header).
    ``require_label``: a file without the label column is an error (else it is unlabelled).
    ``extra_fields``: rows may have up to this many fields more than the header (MNLI/SNLI's
    annotator labels), the label then being a row's last field. ``skip_incomplete``: a row with
    the wrong number of fields or an empty text is skipped and counted (QQP) instead of an error.
    """
    path = pathlib.Path(path)
    records = delimited_records(path, delimiter=delimiter, quoting=quoting)
    if names is None:
        first = next(records, None)
        if first is None:
            raise DataError(f"{path}: empty; expected a header row" + (f" ({hint})" if hint else ""))
        header = first[1]
    else:
        header = list(names)
    index = {name: i for i, name in enumerate(header)}
    missing = [c for c in (*columns.texts, *columns.choices) if c not in index]
    labelled = columns.label is not None and columns.label in index
    if columns.label is not None and require_label and not labelled:
        missing.append(columns.label)
    if missing:
        raise missing_columns(path, missing, header, hint)
    if labelled and extra_fields and header[-1] != columns.label:
        raise DataError(f"{path}:1: {columns.label} must be the last column (rows may carry extra fields "
                        f"before it); the header ends with {header[-1]}")
    label_at = -1 if extra_fields else index.get(columns.label)
    rows = Rows(path, len(columns.texts))
    for line, fields in records:
        if not len(header) <= len(fields) <= len(header) + extra_fields:
            if skip_incomplete:
                rows.skip(line, "the wrong number of fields")
                continue
            raise DataError(f"{path}:{line}: {len(fields)} field(s), the header has {len(header)} "
                            f"({', '.join(header)})")
        if skip_incomplete and not all(fields[index[c]].strip() for c in columns.texts):
            rows.skip(line, "a missing value")
            continue
        texts = [text_field(fields[index[c]], f"{path}:{line}: {c}") for c in columns.texts]
        choices = [text_field(fields[index[c]], f"{path}:{line}: {c}") for c in columns.choices]
        label = parse_label(fields[label_at], f"{path}:{line}: {columns.label}") if labelled else None
        if label is SKIP:
            rows.skip(line, f"{columns.label} {fields[label_at]!r}")
            continue
        rows.add(f"{path}:{line}", texts, choices if columns.choices else None, label)
    return rows.split(labelled=labelled, multiple_choice=bool(columns.choices), log=log)


def read_jsonl(path, columns: Columns, parse_label: LabelParser | None, *, require_label: bool = True,
               log: Log = log_to_stderr) -> TextSplit:
    """One JSON Lines file as a TextSplit. Multiple choice: ``columns.choices`` one key holding a
    list of strings, or several keys each holding one choice. The file is labelled when its first
    object has the label key (required when ``require_label``); then every object must have it."""
    path = pathlib.Path(path)
    rows, labelled = Rows(path, len(columns.texts)), None
    for line, record in jsonl_records(path):
        if labelled is None:
            labelled = columns.label is not None and columns.label in record
        wanted = (*columns.texts, *columns.choices) + ((columns.label,) if labelled or require_label else ())
        missing = [c for c in wanted if c is not None and c not in record]
        if missing:
            raise DataError(f"{path}:{line}: missing key(s) {', '.join(missing)}; the object has "
                            f"{', '.join(record) or 'none'}")
        texts = [text_field(record[c], f"{path}:{line}: {c}") for c in columns.texts]
        choices = None
        if columns.choices:
            choices = list_of_choices(record, columns.choices, f"{path}:{line}")
        label = parse_label(record[columns.label], f"{path}:{line}: {columns.label}") if labelled else None
        if label is SKIP:
            rows.skip(line, f"{columns.label} {record[columns.label]!r}")
            continue
        rows.add(f"{path}:{line}", texts, choices, label)
    return rows.split(labelled=bool(labelled), multiple_choice=bool(columns.choices), log=log)


def list_of_choices(record: dict, keys: Sequence[str], where: str) -> list[str]:
    if len(keys) == 1:
        value = record[keys[0]]
        if not isinstance(value, list):
            raise DataError(f"{where}: {keys[0]} is a {type(value).__name__}, expected a list of choices")
        return [text_field(v, f"{where}: {keys[0]}[{k}]") for k, v in enumerate(value)]
    return [text_field(record[k], f"{where}: {k}") for k in keys]


def check_choice_counts(split: TextSplit, n_choices: int | None = None) -> int:
    """Every example's number of choices (the arrays are [N, C, T]): all equal, >= 2, and the label
    a valid index. Returns C."""
    counts = [len(c) for c in split.choices]
    n = n_choices or counts[0]
    for source, count in zip(split.source, counts):
        if count != n or n < 2:
            raise DataError(f"{source}: {count} choice(s); every example needs the same number, at least 2 "
                            f"({n} in {split.source[0]})")
    if split.label is not None:
        for source, label in zip(split.source, split.label):
            if not 0 <= label < n:
                raise DataError(f"{source}: label {label} is not a choice index (0 .. {n - 1})")
    return n


# ---------------------------------------------------------------- a user's own table

FORMATS = {".tsv": ("\t", csv.QUOTE_NONE), ".csv": (",", csv.QUOTE_MINIMAL)}
N_TEXTS = {"classification": (1,), "entailment": (2,), "similarity": (2,), "multiple_choice": (1, 2)}


def read_table(path, *, kind: str, text_cols: Sequence[str], label_col: str | None,
               label_map: Mapping[str, int] | None = None, choice_cols: Sequence[str] | None = None,
               n_classes: int | None = None, objective: str | None = None,
               score_range: tuple[float, float] | None = None, require_label: bool = True,
               log: Log = log_to_stderr) -> TextSplit:
    """A user's own ``.tsv``, ``.csv`` or ``.jsonl`` file (format from the suffix) as a TextSplit.

    ``text_cols``: the segments: classification ``(text,)``; entailment ``(premise, hypothesis)``;
    similarity ``(a, b)``; multiple choice ``(context,)`` or ``(context, question)``.
    ``choice_cols`` (multiple choice): one column per choice, or in JSONL one key holding a list.
    Labels: with ``label_map`` (name -> index) the label column holds names; else class ids
    0 .. n-1 (``n_classes``; multiple choice: the choice index), or for similarity float scores
    (``objective`` 'mse', the default, inside ``score_range`` when given) or 0/1 ('bce').
    A file without the label column is read unlabelled when ``require_label`` is False.
    """
    path = pathlib.Path(path)
    if kind not in N_TEXTS:
        raise DataError(f"--task {kind!r}: not a task kind; use one of {', '.join(N_TEXTS)}")
    if len(text_cols) not in N_TEXTS[kind]:
        raise DataError(f"--text_cols {','.join(text_cols)}: a {kind} task takes "
                        f"{' or '.join(map(str, N_TEXTS[kind]))} text column(s)")
    if (kind == "multiple_choice") != bool(choice_cols):
        raise DataError("--choice_cols: " + ("a multiple_choice task needs them" if kind == "multiple_choice"
                                             else f"only a multiple_choice task has choices, not {kind}"))
    parse = table_label_parser(kind, label_map, n_classes, objective, score_range)
    columns = Columns(tuple(text_cols), label_col, tuple(choice_cols or ()))
    require_file(path, "a .tsv, .csv or .jsonl file")
    if path.suffix == ".jsonl":
        split = read_jsonl(path, columns, parse, require_label=require_label, log=log)
    elif path.suffix in FORMATS:
        if choice_cols and len(choice_cols) < 2:
            raise DataError(f"--choice_cols {','.join(choice_cols)}: a {path.suffix} file needs one column per "
                            "choice (a single column holding a list is for .jsonl)")
        delimiter, quoting = FORMATS[path.suffix]
        split = read_delimited(path, columns, parse, delimiter=delimiter, quoting=quoting,
                               require_label=require_label, log=log)
    else:
        raise DataError(f"{path}: unknown format {path.suffix!r}; use .tsv, .csv or .jsonl")
    if kind == "multiple_choice":
        check_choice_counts(split)
    return split


def table_label_parser(kind, label_map, n_classes, objective, score_range) -> LabelParser:
    if kind == "similarity" and objective not in (None, "mse", "bce"):
        raise DataError(f"objective {objective!r}: a similarity task takes 'mse' (scores) or 'bce' (0/1)")
    if kind == "similarity" and objective in (None, "mse"):
        if label_map:
            raise DataError("--label_map: similarity scores are numbers; a label map is for classes "
                            "(or for 0/1 labels with objective 'bce')")
        return label_score(score_range)
    if label_map:
        return label_by_name(label_map)
    return label_by_id(2 if kind == "similarity" else n_classes)


def parse_label_map(text: str) -> dict[str, int]:
    """``--label_map``: ``"neg,pos"`` (class i is the i-th name) or ``"neg=0,pos=1"``."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise DataError(f"--label_map {text!r}: an empty name; write names,like,this or name=0,other=1")
    if not any("=" in item for item in items):
        mapping = {name: i for i, name in enumerate(items)}
    else:
        mapping = {}
        for item in items:
            name, sep, value = item.rpartition("=")
            if not sep or not name or not value.strip().isdigit():
                raise DataError(f"--label_map {text!r}: {item!r} is not name=index")
            mapping[name.strip()] = int(value)
    if len(mapping) != len(items):
        raise DataError(f"--label_map {text!r}: a name appears twice")
    return mapping


# ---------------------------------------------------------------- GLUE, SciTail

def glue_file(folder: pathlib.Path, name: str, task: str, layout: str) -> pathlib.Path:
    return require_file(folder / name, f"GLUE's {task} folder ({layout}), as download_glue_data.py writes it")


GLUE_FILES = {"train": "train.tsv", "valid": "dev.tsv", "test": "test.tsv"}


def read_glue(folder, task: str, layout: str, columns: Columns, test_columns: Columns, parse: LabelParser, *,
              files: Mapping[str, str] = GLUE_FILES, log: Log = log_to_stderr, **options) -> dict[str, TextSplit]:
    """Splits of a GLUE folder: ``files`` maps split to file name; train and valid must exist,
    test is read (unlabelled unless it has the label column) when present."""
    folder = pathlib.Path(folder)
    splits = {}
    for split, name in files.items():
        if split == "test" and not (folder / name).is_file():
            continue
        path = glue_file(folder, name, task, layout)
        test = split == "test"
        splits[split] = read_delimited(path, test_columns if test else columns, parse, require_label=not test,
                                       hint=layout, log=log, **options)
    return splits


def class_names(*values: str) -> dict[str, int]:
    return {value: i for i, value in enumerate(values)}


def read_sst2(folder, *, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    layout = "train.tsv, dev.tsv with header sentence\\tlabel; test.tsv index\\tsentence"
    return read_glue(folder, "SST-2", layout, Columns(("sentence",), "label"), Columns(("sentence",), None),
                     label_by_name(class_names("0", "1")), log=log)


COLA_COLUMNS = ("source", "label", "original_label", "sentence")


def read_cola(folder, *, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    """CoLA: train/dev headerless, test with a header."""
    folder = pathlib.Path(folder)
    layout = ("train.tsv, dev.tsv without a header: source\\tlabel\\toriginal_label\\tsentence; "
              "test.tsv with header index\\tsentence")
    parse = label_by_name(class_names("0", "1"))
    splits = {split: read_delimited(glue_file(folder, name, "CoLA", layout), Columns(("sentence",), "label"), parse,
                                    names=COLA_COLUMNS, hint=layout, log=log)
              for split, name in (("train", "train.tsv"), ("valid", "dev.tsv"))}
    if (folder / "test.tsv").is_file():
        splits["test"] = read_delimited(folder / "test.tsv", Columns(("sentence",), None), None, hint=layout, log=log)
    return splits


def read_mrpc(folder, *, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    layout = ("train.tsv, dev.tsv with header Quality\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String; "
              "test.tsv index\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String")
    texts = ("#1 String", "#2 String")
    return read_glue(folder, "MRPC", layout,
                     Columns(texts, "Quality"), Columns(texts, None), label_by_name(class_names("0", "1")), log=log)


def read_qqp(folder, *, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    """QQP: rows with missing values or the wrong number of fields are skipped and counted."""
    layout = "train.tsv, dev.tsv with header id\\tqid1\\tqid2\\tquestion1\\tquestion2\\tis_duplicate; test.tsv " \
             "id\\tquestion1\\tquestion2"
    texts = ("question1", "question2")
    return read_glue(folder, "QQP", layout,
                     Columns(texts, "is_duplicate"), Columns(texts, None), label_by_name(class_names("0", "1")),
                     skip_incomplete=True, log=log)


STSB_RANGE = (0.0, 5.0)


def read_stsb(folder, *, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    layout = ("train.tsv, dev.tsv with header index\\tgenre\\tfilename\\tyear\\told_index\\tsource1\\tsource2\\t"
              "sentence1\\tsentence2\\tscore; test.tsv the same without score")
    texts = ("sentence1", "sentence2")
    return read_glue(folder, "STS-B", layout,
                     Columns(texts, "score"), Columns(texts, None), label_score(STSB_RANGE), log=log)


NLI_LABELS = ("entailment", "neutral", "contradiction")
NLI_LAYOUT = ("index\\t...\\tsentence1\\tsentence2\\tlabel1\\t[label2..label5\\t]gold_label; the test files "
              "stop at sentence2 (MNLI)")


def read_nli(folder, task: str, files: Mapping[str, str], *, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    """MNLI and SNLI: gold_label is a row's last field; rows with gold_label '-' are skipped."""
    texts = ("sentence1", "sentence2")
    layout = f"{', '.join(files.values())}: {NLI_LAYOUT}"
    return read_glue(folder, task, layout, Columns(texts, "gold_label"), Columns(texts, "gold_label"),
                     label_by_name(class_names(*NLI_LABELS), skip=("-",)), files=files, extra_fields=4, log=log)


def read_mnli(folder, *, matched: bool = True, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    which = "matched" if matched else "mismatched"
    return read_nli(folder, "MNLI", {"train": "train.tsv", "valid": f"dev_{which}.tsv",
                                     "test": f"test_{which}.tsv"}, log=log)


def read_snli(folder, *, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    return read_nli(folder, "SNLI", GLUE_FILES, log=log)


def read_qnli(folder, *, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    layout = "train.tsv, dev.tsv with header index\\tquestion\\tsentence\\tlabel; test.tsv without label"
    texts = ("question", "sentence")
    return read_glue(folder, "QNLI", layout,
                     Columns(texts, "label"), Columns(texts, None),
                     label_by_name(class_names("entailment", "not_entailment")), log=log)


def read_rte(folder, *, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    layout = "train.tsv, dev.tsv with header index\\tsentence1\\tsentence2\\tlabel; test.tsv without label"
    texts = ("sentence1", "sentence2")
    return read_glue(folder, "RTE", layout,
                     Columns(texts, "label"), Columns(texts, None),
                     label_by_name(class_names("entailment", "not_entailment")), log=log)


SCITAIL_COLUMNS = ("premise", "hypothesis", "label")
SCITAIL_LABELS = ("entails", "neutral")


def read_scitail(folder, *, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    """SciTail's tsv_format folder: headerless premise, hypothesis, label; all three splits labelled."""
    folder = pathlib.Path(folder)
    what = ("SciTail's SciTailV1.1/tsv_format/scitail_1.0_{train,dev,test}.tsv, headerless "
            "premise\\thypothesis\\tlabel (entails/neutral)")
    parse = label_by_name(class_names(*SCITAIL_LABELS))
    splits = {}
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        path = folder / f"scitail_1.0_{name}.tsv"
        if split == "test" and not path.is_file():
            continue
        splits[split] = read_delimited(require_file(path, what), Columns(("premise", "hypothesis"), "label"), parse,
                                       names=SCITAIL_COLUMNS, hint=what, log=log)
    return splits


# ---------------------------------------------------------------- RACE

RACE_LEVELS = ("high", "middle")
RACE_KEYS = ("article", "questions", "options", "answers")
RACE_LETTERS = ("A", "B", "C", "D")


def read_race_file(path: pathlib.Path, rows: Rows) -> None:
    """One RACE article (a JSON object): one example per question."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(bad_utf8_message(path)) from None
    try:
        article = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(article, dict):
        raise DataError(f"{path}:1: a JSON {type(article).__name__}, expected an object with {', '.join(RACE_KEYS)}")
    missing = [key for key in RACE_KEYS if key not in article]
    if missing:
        raise DataError(f"{path}:1: missing key(s) {', '.join(missing)}; a RACE article has {', '.join(RACE_KEYS)}")
    questions, options, answers = article["questions"], article["options"], article["answers"]
    if not all(isinstance(x, list) for x in (questions, options, answers)) or \
            not len(questions) == len(options) == len(answers):
        raise DataError(f"{path}:1: questions, options and answers must be lists of one length")
    context = text_field(article["article"], f"{path}:1: article")
    for q, (question, choices, answer) in enumerate(zip(questions, options, answers)):
        where = f"{path}:{q}"
        if not isinstance(question, str):
            raise DataError(f"{where}: question {question!r} is not a string")
        if not isinstance(choices, list) or len(choices) != len(RACE_LETTERS):
            raise DataError(f"{where}: options must be a list of {len(RACE_LETTERS)}, got {choices!r}")
        choices = [text_field(c, f"{where}: options[{k}]") for k, c in enumerate(choices)]
        if answer not in RACE_LETTERS:
            raise DataError(f"{where}: unknown answer {answer!r}; allowed: {', '.join(RACE_LETTERS)}")
        rows.add(where, (context, question), choices, RACE_LETTERS.index(answer))


def read_race(folder, *, levels: Sequence[str] = RACE_LEVELS, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    """RACE's ``{train,dev,test}/{high,middle}/*.txt`` under ``folder``, the ``levels`` asked for,
    articles in file-name order."""
    folder = pathlib.Path(folder)
    splits = {}
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        rows = Rows(folder / name, 2)
        for level in levels:
            level_dir = folder / name / level
            if not level_dir.is_dir():
                if split == "test" and not (folder / name).exists():
                    break
                raise DataError(f"{level_dir}: not found; expected RACE's layout {{train,dev,test}}/{{high,middle}}/"
                                "*.txt, one JSON article a file")
            files = sorted(level_dir.glob("*.txt"))
            if not files:
                raise DataError(f"{level_dir}: no *.txt articles")
            for path in files:
                read_race_file(path, rows)
        if rows.source:
            splits[split] = rows.split(labelled=True, multiple_choice=True, log=log)
    return splits


# ---------------------------------------------------------------- Story Cloze

def csv_record_lines(path: pathlib.Path) -> list[int]:
    """The first line of every data record of a CSV (quoted fields may span lines)."""
    return [line for line, _ in delimited_records(path, delimiter=",", quoting=csv.QUOTE_MINIMAL)][1:]


def stories_split(stories: rocstories.Stories, sources: list[str]) -> TextSplit:
    choices = [[e1, e2] for e1, e2 in zip(stories.ending1, stories.ending2)]
    return TextSplit((list(stories.story), [""] * len(stories.story)), choices, stories.label, sources)


def read_story_cloze(data_dir, *, n_valid: int = rocstories.N_VALID, log: Log = log_to_stderr) -> dict[str, TextSplit]:
    """The Cloze Test CSVs in ``data_dir``, split as ``gpt1f.rocstories.load_rocstories`` splits them."""
    data_dir = pathlib.Path(data_dir)
    rocstories.check_data_dir(data_dir)
    labelled_path, test_path = data_dir / rocstories.VALID_FILE, data_dir / rocstories.TEST_FILE
    labelled = rocstories.read_cloze_csv(labelled_path, require_labels=True)
    test = rocstories.read_cloze_csv(test_path, require_labels=False)
    lines = csv_record_lines(labelled_path)
    train_index, valid_index = rocstories.split_indices(len(labelled.story), n_valid)
    return {split: stories_split(rocstories.take(labelled, index), [f"{labelled_path}:{lines[i]}" for i in index])
            for split, index in (("train", train_index), ("valid", valid_index))} | {
        "test": stories_split(test, [f"{test_path}:{line}" for line in csv_record_lines(test_path)])}

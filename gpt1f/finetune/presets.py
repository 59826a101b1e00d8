"""The paper's tasks as presets: the Task, the reader of its public files, and the paper's score.

``PRESETS[name].read(data_dir)`` reads the task's folder inside ``data_dir`` (``data_dir/SST-2``;
``data_dir`` itself when it is that folder). ``paper`` is the score Radford et al. (2018) report
on the task's test set (Tables 2-4), in percent like every metric here. ``table_preset`` makes a
preset of a user's own files (the command line's ``--task classification --train F ...``).
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Callable, Mapping, Sequence

import numpy as np

from gpt1f import rocstories
from gpt1f.finetune import readers
from gpt1f.finetune.task import Task, TextSplit
from gpt1f.rocstories import DataError


@dataclasses.dataclass(frozen=True)
class Preset:
    """A task and its data. ``read(data_dir)`` -> ``{'train', 'valid'[, 'test']}``; ``folder`` the
    sub-folder of ``data_dir`` the files live in (``""``: ``data_dir`` itself); ``files`` the layout
    expected there, for help and errors; ``paper`` the paper's (metric, score) or None."""
    task: Task
    read: Callable[[pathlib.Path], dict[str, TextSplit]]
    folder: str
    files: str
    paper: tuple[str, float] | None = None


def task_folder(data_dir, folder: str) -> pathlib.Path:
    """``data_dir/folder`` when it exists, else ``data_dir`` (the user pointed at the folder itself)."""
    data_dir = pathlib.Path(data_dir)
    return data_dir / folder if folder and (data_dir / folder).is_dir() else data_dir


def folder_reader(reader: Callable, folder: str, **options) -> Callable[[pathlib.Path], dict[str, TextSplit]]:
    def read(data_dir, **kwargs):
        return reader(task_folder(data_dir, folder), **options, **kwargs)
    return read


BINARY = ("f1", "acc")   # MRPC, QQP: F1 picks the best checkpoint


def glue(name, reader, folder, files, paper, **task) -> Preset:
    return Preset(Task(name, **task), folder_reader(reader, folder), folder, files, paper)


PRESETS: dict[str, Preset] = {p.task.name: p for p in (
    glue("sst2", readers.read_sst2, "SST-2", "train.tsv dev.tsv [test.tsv]", ("acc", 91.3),
         kind="classification", n_classes=2, label_names=("negative", "positive")),
    glue("cola", readers.read_cola, "CoLA", "train.tsv dev.tsv (no header) [test.tsv]", ("mcc", 45.4),
         kind="classification", n_classes=2, metrics=("mcc",), label_names=("unacceptable", "acceptable")),
    glue("mrpc", readers.read_mrpc, "MRPC", "train.tsv dev.tsv [test.tsv]", ("f1", 82.3),
         kind="similarity", objective="bce", metrics=BINARY, label_names=("not_equivalent", "equivalent")),
    glue("qqp", readers.read_qqp, "QQP", "train.tsv dev.tsv [test.tsv]", ("f1", 70.3),
         kind="similarity", objective="bce", metrics=BINARY, label_names=("not_duplicate", "duplicate")),
    glue("stsb", readers.read_stsb, "STS-B", "train.tsv dev.tsv [test.tsv], score 0-5", ("pearson", 82.0),
         kind="similarity", objective="mse", metrics=("pearson", "spearman"), score_range=readers.STSB_RANGE),
    glue("mnli", readers.read_mnli, "MNLI", "train.tsv dev_matched.tsv [test_matched.tsv]", ("acc", 82.1),
         kind="entailment", n_classes=3, label_names=readers.NLI_LABELS),
    Preset(Task("mnli_mm", "entailment", n_classes=3, label_names=readers.NLI_LABELS),
           folder_reader(readers.read_mnli, "MNLI", matched=False), "MNLI",
           "train.tsv dev_mismatched.tsv [test_mismatched.tsv]", ("acc", 81.4)),
    glue("qnli", readers.read_qnli, "QNLI", "train.tsv dev.tsv [test.tsv]", ("acc", 88.1),
         kind="entailment", n_classes=2, label_names=("entailment", "not_entailment")),
    glue("rte", readers.read_rte, "RTE", "train.tsv dev.tsv [test.tsv]", ("acc", 56.0),
         kind="entailment", n_classes=2, label_names=("entailment", "not_entailment")),
    glue("snli", readers.read_snli, "SNLI", "train.tsv dev.tsv [test.tsv]", ("acc", 89.9),
         kind="entailment", n_classes=3, label_names=readers.NLI_LABELS),
    glue("scitail", readers.read_scitail, "SciTailV1.1/tsv_format",
         "scitail_1.0_train.tsv scitail_1.0_dev.tsv [scitail_1.0_test.tsv] (no header)", ("acc", 88.3),
         kind="entailment", n_classes=2, label_names=readers.SCITAIL_LABELS),
    *(Preset(Task(name, "multiple_choice", n_classes=4, label_names=readers.RACE_LETTERS),
             folder_reader(readers.read_race, "RACE", levels=levels), "RACE",
             f"{{train,dev,test}}/{where}/*.txt (one JSON article a file)", ("acc", paper))
      for name, levels, where, paper in (("race", readers.RACE_LEVELS, "{high,middle}", 59.0),
                                         ("race_m", ("middle",), "middle", 62.9),
                                         ("race_h", ("high",), "high", 57.4))),
    Preset(Task("story_cloze", "multiple_choice", n_classes=2, label_names=("1", "2")),
           readers.read_story_cloze, "", f"{rocstories.VALID_FILE!r} {rocstories.TEST_FILE!r}", ("acc", 86.5)),
)}


# ---------------------------------------------------------------- a user's own files

def metrics_of(kind: str, objective: str) -> tuple[str, ...]:
    if kind == "similarity":
        return ("pearson", "spearman") if objective == "mse" else BINARY
    return ("acc",)


def label_names_of(label_map: Mapping[str, int] | None) -> tuple[str, ...] | None:
    """Class index -> the first name mapped to it, when every index 0 .. max has a name."""
    if not label_map:
        return None
    first = {}
    for name, index in label_map.items():
        first.setdefault(index, name)
    return tuple(first[i] for i in range(max(first) + 1)) if set(first) == set(range(max(first) + 1)) else None


def n_classes_of(kind: str, splits: Mapping[str, TextSplit], label_map: Mapping[str, int] | None,
                 n_classes: int | None) -> int | None:
    """Classes (or choices) of a user's task: given, or the label map's, or the labels' largest + 1."""
    if kind == "similarity":
        return None
    if kind == "multiple_choice":
        return len(splits["train"].choices[0])
    if n_classes is not None:
        return n_classes
    if label_map:
        return max(label_map.values()) + 1
    labels = [s.label for s in splits.values() if s.label is not None]
    return max(2, int(max(label.max() for label in labels)) + 1)


def score_range_of(splits: Mapping[str, TextSplit], score_range) -> tuple[float, float]:
    """The given range, else the smallest and largest score of the labelled splits."""
    if score_range is not None:
        return tuple(map(float, score_range))
    scores = np.concatenate([s.label for s in splits.values() if s.label is not None])
    return float(scores.min()), float(scores.max())


def table_preset(kind: str, *, train, valid, test=None, text_cols: Sequence[str], label_col: str,
                 label_map: Mapping[str, int] | None = None, choice_cols: Sequence[str] | None = None,
                 n_classes: int | None = None, objective: str | None = None,
                 score_range: tuple[float, float] | None = None, name: str | None = None,
                 log: readers.Log = readers.log_to_stderr) -> Preset:
    """A preset of a user's own files, read now (the Task's ``n_classes`` may come from the labels);
    ``read`` returns them whatever its argument. See ``readers.read_table`` for the columns."""
    objective = objective or ("mse" if kind == "similarity" else "ce")
    table = functools.partial(readers.read_table, kind=kind, text_cols=text_cols, label_col=label_col,
                              label_map=label_map, choice_cols=choice_cols, n_classes=n_classes,
                              objective=objective if kind == "similarity" else None, score_range=score_range,
                              log=log)
    splits = {"train": table(train), "valid": table(valid)}
    if test is not None:
        splits["test"] = table(test, require_label=False)
    for split in ("train", "valid"):
        if splits[split].label is None:
            raise DataError(f"{split} file {splits[split].source[0].rsplit(':', 1)[0]} has no labels")
    if kind == "multiple_choice":
        n = readers.check_choice_counts(splits["train"])
        for split in splits.values():
            readers.check_choice_counts(split, n)
    task = Task(name or kind, kind, n_classes=n_classes_of(kind, splits, label_map, n_classes), objective=objective,
                metrics=metrics_of(kind, objective), label_names=label_names_of(label_map),
                score_range=score_range_of(splits, score_range) if objective == "mse" else None)
    files = " ".join(str(f) for f in (train, valid, test) if f is not None)
    return Preset(task, lambda data_dir=None: dict(splits), "", files, None)

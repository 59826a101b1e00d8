"""What the fine-tuning loop needs to know of a task: its kind, head, loss and metrics.

A task is one of the paper's four input transformations (its Figure 1):

=================  =====================================================  ===============
kind               one example's token rows                               head
=================  =====================================================  ===============
classification     ``_start_ text _classify_``                            ``classify``
entailment         ``_start_ premise _delimiter_ hypothesis _classify_``  ``classify``
similarity         ``_start_ a _delimiter_ b _classify_`` and ``b; a``    ``similarity``
multiple_choice    ``_start_ context question _delimiter_ answer_k        ``multiple_choice``
                   _classify_`` for every choice k
=================  =====================================================  ===============
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

KINDS = ("classification", "entailment", "similarity", "multiple_choice")
HEAD_OF_KIND = {"classification": "classify", "entailment": "classify", "similarity": "similarity",
                "multiple_choice": "multiple_choice"}


class TextSplit(NamedTuple):
    """One split of a task as text, before encoding.

    ``segments``: one list [N] of strings per text field, in the order the transformation uses
    them: classification ``(text,)``; entailment ``(premise, hypothesis)``; similarity ``(a, b)``;
    multiple choice ``(context, question)``, the question ``""`` where a task has none.
    ``choices``: [N][C] candidate answers (multiple choice only, else None).
    ``label`` [N]: int64 class or choice index; float64 score for similarity with ``objective
    'mse'``, int64 0/1 with ``'bce'``; None for an unlabelled split (a test file).
    ``source`` [N]: ``"file:line"`` of each example, for error messages.
    """
    segments: tuple[list[str], ...]
    choices: list[list[str]] | None
    label: np.ndarray | None
    source: list[str]


@dataclasses.dataclass(frozen=True)
class Task:
    """A task as the loop sees it.

    ``n_classes``: classes of a classification/entailment task (the width of ``model/clf``), choices
    per example of a multiple-choice one, None for similarity. ``objective``: ``'ce'``, or for
    similarity ``'mse'`` (scores in ``score_range``) or ``'bce'`` (0/1 labels). ``metrics``: names
    in ``gpt1f.finetune.metrics.METRICS``; the first picks the best checkpoint. ``label_names``:
    what each class index means, for the predictions file.
    """
    name: str
    kind: str
    n_classes: int | None = None
    objective: str = "ce"
    metrics: tuple[str, ...] = ("acc",)
    label_names: tuple[str, ...] | None = None
    score_range: tuple[float, float] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind {self.kind!r}; use one of {KINDS}")
        wanted = ("mse", "bce") if self.kind == "similarity" else ("ce",)
        if self.objective not in wanted:
            raise ValueError(f"task {self.name!r}: objective {self.objective!r} does not fit kind "
                             f"{self.kind!r}; use one of {wanted}")
        if self.kind != "similarity" and (self.n_classes is None or self.n_classes < 2):
            raise ValueError(f"task {self.name!r}: a {self.kind} task needs n_classes >= 2")
        if not self.metrics:
            raise ValueError(f"task {self.name!r} names no metric")

    @property
    def head(self) -> str:
        return HEAD_OF_KIND[self.kind]

    @property
    def head_kwargs(self) -> dict:
        return {"objective": self.objective} if self.kind == "similarity" else {}

    @property
    def n_class(self) -> int:
        """Width of ``model/clf``: the classes of ``classify``, else one score."""
        return self.n_classes if self.head == "classify" else 1

    @property
    def primary(self) -> str:
        """The metric that picks the best checkpoint (higher is better)."""
        return self.metrics[0]


class Data(NamedTuple):
    """A task's splits as arrays, ready for the loop.

    ``splits[name]`` for ``train``, ``valid`` and optionally ``test``: ``tokens`` int64 and ``mask``
    float32 of shape [N, T] (classification, entailment) or [N, C, T] (multiple choice: C choices;
    similarity: C = 2 orders), ``label`` [N] (see ``TextSplit``) or None. ``n_vocab``: BPE tokens
    (the specials follow them); ``n_ctx``: T, the longest example over every split.
    """
    splits: dict[str, dict[str, np.ndarray | None]]
    n_vocab: int
    n_ctx: int

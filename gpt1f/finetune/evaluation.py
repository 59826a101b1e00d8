"""Scoring a split without the LM head or dropout, and the log line of one evaluation.

The loop evaluates, as the TF original does, on the first ``n_valid`` training examples and on the
valid split; the test split is only predicted (and scored when it has labels).
"""
from __future__ import annotations

import functools
import time
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..distributed import World, gather_rows, row_shard
from .. import regional
from ..packing import compile_packed
from ..heads import clf_head, multiple_choice_logits, pool_clf_token, trunk
from . import metrics
from .task import Task


def classify_logits(params, tokens: torch.Tensor, *, cfg: Config) -> torch.Tensor:
    """Class logits.  [B, T] -> [B, n_class]"""
    _, hidden = trunk(params, tokens, cfg=cfg)
    return clf_head(params, pool_clf_token(hidden, tokens, cfg.clf_token))


def similarity_logits(params, tokens: torch.Tensor, *, cfg: Config) -> torch.Tensor:
    """The score of both orders' summed ``_classify_`` states.  [B, 2, T] -> [B]"""
    _, hidden = trunk(params, tokens, cfg=cfg)
    return clf_head(params, pool_clf_token(hidden, tokens, cfg.clf_token).sum(-2))[..., 0]


EVAL_LOGITS = {"multiple_choice": multiple_choice_logits, "classify": classify_logits,
               "similarity": similarity_logits}


def make_scorer(task: Task, cfg: Config, compile: bool | str) -> Callable:
    """``scores(params, tokens) -> logits`` of ``task``'s head: no LM head, no dropout; compiled
    as one graph (``compile=True``), or with the blocks of ``gpt1f.regional`` (``'regional'``)."""
    fn = functools.partial(EVAL_LOGITS[task.head], cfg=cfg)
    if compile == "regional":
        return regional.with_regions(fn)
    return compile_packed(fn, fullgraph=True) if compile else fn   # real-token count: dynamic


@torch.no_grad()
def predict(scorer, params, tokens: torch.Tensor, batch: int, desc: str, cast,
            world: World = World()) -> np.ndarray:
    """Logits of every row in float32, every batch padded to ``batch`` rows so shapes never change.

    On several ranks each scores its :func:`~gpt1f.distributed.row_shard` of whole batches and
    the rows are gathered back in order: the very batches, so the very logits, of one process.
    """
    mine = row_shard(len(tokens), world, batch)
    out = []
    for start in tqdm(range(mine.start, max(mine.stop, mine.start + 1), batch), desc=desc,
                      leave=False, unit="batch"):          # (an empty shard: one batch, kept empty)
        chunk = tokens[start:min(start + batch, mine.stop)]
        n = len(chunk)
        if n < batch:
            chunk = torch.cat([chunk, tokens.new_zeros((batch - n, *tokens.shape[1:]))])
        with cast:
            out.append(scorer(params, chunk)[:n].float().cpu())
    return gather_rows(torch.cat(out), len(tokens), world, batch).numpy()


def log_entry(task: Task, scorer, params, splits, *, batch: int, cast, n_updates: int,
              n_epochs: int, world: World = World()) -> dict:
    """One log line: the task cost and every metric on the first n_valid train rows and on valid.

    Keys: ``n_epochs, n_updates, tr_cost, va_cost, tr_<metric>..., va_<metric>..., time``.
    """
    train, valid = splits["train"], splits["valid"]
    n_valid = len(valid["label"])
    scored = {"tr": (train["tokens"][:n_valid], train["label"][:n_valid]),
              "va": (valid["tokens"], valid["label"])}
    entry, values = {"n_epochs": n_epochs, "n_updates": n_updates}, {}
    for prefix, (tokens, label) in scored.items():
        logits = predict(scorer, params, tokens, batch, f"eval {prefix}", cast, world)
        label = label.cpu().numpy()
        entry[f"{prefix}_cost"] = metrics.task_cost(task, logits, label)
        values[prefix] = metrics.evaluate(task, logits, label)
    for prefix in scored:
        entry.update({f"{prefix}_{name}": value for name, value in values[prefix].items()})
    entry["time"] = time.time()
    return entry


def prediction_strings(task: Task, logits: np.ndarray) -> list[str]:
    """The predictions file's column: class names where the task has them, else ids or scores."""
    predicted = metrics.predictions(task, logits)
    if task.objective == "mse":
        return [f"{float(p):.6g}" for p in predicted]
    if task.label_names is not None:
        return [task.label_names[int(p)] for p in predicted]
    return [str(int(p)) for p in predicted]

"""A task's predictions, cost and metrics from its head's logits, on the host in float64.

``METRICS[name](predictions [N], labels [N]) -> float`` in percent (x100): ``acc``; ``f1`` (binary,
positive class 1); ``mcc`` (Matthews correlation, any number of classes); ``pearson`` and
``spearman`` (scipy.stats, imported when first used: ``pip install 'gpt1f[finetune]'``).

Degenerate inputs give a defined value and no warning: MCC is 0 when either side holds one class
(as scikit-learn's ``matthews_corrcoef``), F1 is 0 when there is no positive on either side (its
``zero_division=0``), and a correlation is 0 when either side is constant or has fewer than two
points (scipy's would be NaN), so a collapsed model never wins the best-checkpoint comparison.
Accuracy, F1 and MCC count a numpy confusion matrix: a few lines that scikit-learn is the test's
reference for, instead of a heavy import for the library.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from gpt1f.finetune.task import Task


def checked(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 1 or predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must both be [N]")
    if len(labels) == 0:
        raise ValueError("no predictions to score")
    return predictions, labels


def confusion(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts [K, K], row = label, column = prediction, over the K values either side holds."""
    _, index = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    k = index.max() + 1
    truth, guess = index[:len(labels)], index[len(labels):]
    return np.bincount(truth * k + guess, minlength=k * k).reshape(k, k).astype(np.float64)


def accuracy(predictions, labels) -> float:
    predictions, labels = checked(predictions, labels)
    return float(np.mean(predictions == labels) * 100.0)


def f1(predictions, labels) -> float:
    """Binary F1 of class 1: ``2 tp / (2 tp + fp + fn)``, 0 with no positive at all."""
    predictions, labels = checked(predictions, labels)
    for name, values in (("predictions", predictions), ("labels", labels)):
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"f1 is binary: {name} hold {np.unique(values)[:5].tolist()}, not only 0 and 1")
    tp = np.sum((predictions == 1) & (labels == 1))
    wrong = np.sum(predictions != labels)
    return float(200.0 * tp / (2 * tp + wrong)) if tp + wrong else 0.0


def mcc(predictions, labels) -> float:
    """Matthews correlation of the confusion matrix (multi-class: Gorodkin's R_K), 0 when undefined."""
    counts = confusion(*checked(predictions, labels))
    n, correct = counts.sum(), np.trace(counts)
    true, guessed = counts.sum(1), counts.sum(0)
    covariance = correct * n - guessed @ true
    scale = (n * n - guessed @ guessed) * (n * n - true @ true)
    return float(100.0 * covariance / np.sqrt(scale)) if scale > 0 else 0.0


def scipy_stats():
    try:
        from scipy import stats
    except ImportError:
        raise ImportError("the pearson and spearman metrics need scipy: pip install 'gpt1f[finetune]'") from None
    return stats


def correlation(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """``scipy.stats.pearsonr`` or ``spearmanr`` in percent, 0 where it is undefined."""
    def metric(predictions, labels) -> float:
        predictions, labels = checked(predictions, labels)
        predictions, labels = predictions.astype(np.float64), labels.astype(np.float64)
        if len(labels) < 2 or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
            return 0.0
        return float(getattr(scipy_stats(), name)(predictions, labels).statistic * 100.0)
    metric.__name__ = name
    return metric


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "acc": accuracy, "f1": f1, "mcc": mcc, "pearson": correlation("pearsonr"),
    "spearman": correlation("spearmanr")}


# ---------------------------------------------------------------- from logits

def scores(task: Task, logits) -> np.ndarray:
    """The head's logits as float64: [N, n_classes] / [N, C] (classify, multiple choice), [N] (similarity)."""
    logits = np.asarray(logits, dtype=np.float64)
    wanted = 1 if task.kind == "similarity" else 2
    if logits.ndim != wanted:
        raise ValueError(f"task {task.name!r}: {task.head} logits should have {wanted} dimension(s), "
                         f"got shape {logits.shape}")
    return logits


def predictions(task: Task, logits) -> np.ndarray:
    """[N]: the argmax class or choice (int64); similarity's score ('mse', float64) or score > 0 ('bce', 0/1)."""
    logits = scores(task, logits)
    if task.kind != "similarity":
        return np.argmax(logits, -1)
    return logits if task.objective == "mse" else (logits > 0).astype(np.int64)


def cross_entropy(logits: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Softmax cross-entropy per row.  [N, C], [N] -> [N]"""
    top = logits.max(-1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
    return log_z - logits[np.arange(len(label)), label]


def task_cost(task: Task, logits, label) -> float:
    """The mean task loss in float64: cross-entropy ('ce'), squared error ('mse') or binary
    cross-entropy of the score's sigmoid ('bce')."""
    logits, label = scores(task, logits), np.asarray(label)
    if len(label) != len(logits):
        raise ValueError(f"task {task.name!r}: {len(logits)} logits but {len(label)} labels")
    if task.objective == "ce":
        return float(np.mean(cross_entropy(logits, label.astype(np.int64))))
    label = label.astype(np.float64)
    if task.objective == "mse":
        return float(np.mean((logits - label) ** 2))
    return float(np.mean(np.logaddexp(0.0, logits) - label * logits))


def evaluate(task: Task, logits, label) -> dict[str, float]:
    """Every metric of ``task``, in its order: ``{name: percent}``."""
    unknown = [name for name in task.metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"task {task.name!r} names unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    guessed = predictions(task, logits)
    return {name: METRICS[name](guessed, label) for name in task.metrics}

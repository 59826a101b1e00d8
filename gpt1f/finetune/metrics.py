"""Task metrics (a minimal first version; the full set with scipy follows)."""
from __future__ import annotations

import numpy as np


def predictions(task, logits: np.ndarray) -> np.ndarray:
    """argmax for classify / multiple choice; the score (mse) or ``score > 0`` (bce) for similarity."""
    if task.head == "similarity":
        return logits if task.objective == "mse" else (logits > 0).astype(np.int64)
    return np.argmax(logits, 1)


def task_cost(task, logits: np.ndarray, label: np.ndarray) -> float:
    """The head's loss on ``logits`` in float64: cross-entropy, MSE or BCE with logits."""
    logits = logits.astype(np.float64)
    if task.objective == "ce":
        top = logits.max(1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(1))
        return float(np.mean(log_z - logits[np.arange(len(label)), label]))
    if task.objective == "mse":
        return float(np.mean((logits - label) ** 2))
    return float(np.mean(np.logaddexp(0, logits) - logits * label))


def accuracy(predicted: np.ndarray, label: np.ndarray) -> float:
    return float(np.mean(predicted == label) * 100.0)


def pearson(predicted: np.ndarray, label: np.ndarray) -> float:
    return float(np.corrcoef(predicted, label)[0, 1] * 100.0)


METRICS = {"acc": accuracy, "pearson": pearson}


def evaluate(task, logits: np.ndarray, label: np.ndarray) -> dict[str, float]:
    predicted = predictions(task, logits)
    return {name: METRICS[name](predicted, label) for name in task.metrics}

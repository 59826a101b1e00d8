"""Metrics against scikit-learn and scipy, costs against torch, predictions per kind."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn import metrics as skm

from gpt1f import rocstories as roc
from gpt1f.finetune import metrics as fm
from gpt1f.finetune.task import Task
from tests.conftest import ROOT

CLS = Task("cola", "classification", n_classes=2, metrics=("mcc", "acc", "f1"))
NLI = Task("mnli", "entailment", n_classes=3)
STS = Task("stsb", "similarity", objective="mse", metrics=("pearson", "spearman"))
QQP = Task("qqp", "similarity", objective="bce", metrics=("acc", "f1"))
MC = Task("race", "multiple_choice", n_classes=4)


def labels_and_guesses(seed, n, k):
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, n), rng.integers(0, k, n)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_binary_metrics_match_scikit_learn(seed, n):
    label, guess = labels_and_guesses(seed, n, 2)
    with warnings.catch_warnings():   # scikit-learn's own note when one class is seen on both sides
        warnings.simplefilter("ignore", UserWarning)
        acc, f1 = skm.accuracy_score(label, guess), skm.f1_score(label, guess, zero_division=0)
        mcc = skm.matthews_corrcoef(label, guess)
    assert fm.METRICS["acc"](guess, label) == pytest.approx(100 * acc, abs=1e-12)
    assert fm.METRICS["f1"](guess, label) == pytest.approx(100 * f1, abs=1e-12)
    assert fm.METRICS["mcc"](guess, label) == pytest.approx(100 * mcc, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [3, 5])
def test_multiclass_mcc_and_accuracy_match_scikit_learn(seed, k):
    label, guess = labels_and_guesses(seed, 60, k)
    guess[:10] = label[:10]
    assert fm.mcc(guess, label) == pytest.approx(100 * skm.matthews_corrcoef(label, guess), abs=1e-9)
    assert fm.accuracy(guess, label) == pytest.approx(100 * skm.accuracy_score(label, guess), abs=1e-12)


def test_mcc_of_unseen_and_missing_classes_matches_scikit_learn():
    label, guess = np.array([0, 0, 2, 2, 2]), np.array([0, 1, 1, 2, 3])
    assert fm.mcc(guess, label) == pytest.approx(100 * skm.matthews_corrcoef(label, guess), abs=1e-9)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [False, True])
def test_correlations_match_scipy(seed, ties):
    rng = np.random.default_rng(seed)
    label = rng.normal(size=50)
    guess = label + rng.normal(size=50)
    if ties:                          # STS-B scores come in fifths: many tied ranks
        label, guess = np.round(label * 5) / 5, np.round(guess)
    assert fm.METRICS["pearson"](guess, label) == pytest.approx(100 * stats.pearsonr(guess, label)[0], abs=1e-9)
    assert fm.METRICS["spearman"](guess, label) == pytest.approx(100 * stats.spearmanr(guess, label)[0], abs=1e-9)


def test_a_perfect_model_scores_100_and_a_reversed_one_minus_100():
    label = np.array([0.0, 1.5, 2.0, 4.5, 5.0])
    assert fm.METRICS["pearson"](2 * label + 1, label) == pytest.approx(100.0)
    assert fm.METRICS["spearman"](label ** 3, label) == pytest.approx(100.0)
    assert fm.METRICS["spearman"](-label, label) == pytest.approx(-100.0)
    binary = np.array([0, 1, 1, 0])
    assert fm.mcc(binary, binary) == 100.0 and fm.mcc(1 - binary, binary) == -100.0
    assert fm.f1(binary, binary) == 100.0 and fm.f1(1 - binary, binary) == 0.0


def test_degenerate_inputs_give_zero_without_warnings():
    label = np.array([0, 1, 1, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fm.mcc(np.ones(5, dtype=int), label) == 0.0                 # constant predictions
        assert fm.mcc(label, np.zeros(5, dtype=int)) == 0.0                 # constant labels
        assert fm.f1(np.zeros(5, dtype=int), np.zeros(5, dtype=int)) == 0.0  # no positive anywhere
        assert fm.METRICS["pearson"](np.full(5, 2.0), label) == 0.0
        assert fm.METRICS["spearman"](label, np.full(5, 3.0)) == 0.0
        assert fm.METRICS["pearson"](np.array([1.0]), np.array([2.0])) == 0.0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"predictions \(3,\) and labels \(2,\)"):
        fm.accuracy(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="no predictions"):
        fm.mcc(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match=r"f1 is binary: labels hold \[0, 2\]"):
        fm.f1(np.array([0, 1]), np.array([0, 2]))


# ---------------------------------------------------------------- predictions

def test_predictions_per_kind():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    assert fm.predictions(NLI, logits).tolist() == [1, 0]
    assert fm.predictions(MC, np.array([[0.0, 0.1, 5.0, -1.0]])).tolist() == [2]
    score = np.array([-0.5, 0.0, 2.5])
    assert fm.predictions(STS, score).tolist() == [-0.5, 0.0, 2.5]
    assert fm.predictions(QQP, score).tolist() == [0, 0, 1]
    assert fm.predictions(NLI, torch.tensor(logits)).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"'stsb': similarity logits should have 1 dimension\(s\), got shape \(3, 1\)"):
        fm.predictions(STS, score[:, None])


# ---------------------------------------------------------------- costs

@pytest.mark.parametrize("seed", range(4))
def test_cross_entropy_cost_matches_torch_and_rocstories(seed):
    rng = np.random.default_rng(seed)
    logits, label = rng.normal(size=(20, 4)) * 5, rng.integers(0, 4, 20)
    expected = F.cross_entropy(torch.tensor(logits), torch.tensor(label)).item()
    assert fm.task_cost(MC, logits, label) == pytest.approx(expected, rel=1e-12)
    assert fm.task_cost(MC, logits, label) == pytest.approx(roc.clf_cost(logits, label), rel=1e-12)
    big = logits * 1e3                # no overflow where a naive softmax would
    assert fm.task_cost(NLI, big[:, :3], label % 3) == pytest.approx(
        F.cross_entropy(torch.tensor(big[:, :3]), torch.tensor(label % 3)).item(), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_similarity_costs_match_torch(seed):
    rng = np.random.default_rng(seed)
    score, target = rng.normal(size=30) * 3, rng.uniform(0, 5, 30)
    assert fm.task_cost(STS, score, target) == pytest.approx(
        F.mse_loss(torch.tensor(score), torch.tensor(target)).item(), rel=1e-12)
    binary = rng.integers(0, 2, 30)
    score = score * 20                # far in the tails, where log(sigmoid) underflows
    assert fm.task_cost(QQP, score, binary) == pytest.approx(
        F.binary_cross_entropy_with_logits(torch.tensor(score), torch.tensor(binary, dtype=torch.float64)).item(),
        rel=1e-12)


# ---------------------------------------------------------------- evaluate

def test_evaluate_gives_every_metric_in_order():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    label = np.array([0, 1, 0, 0])
    result = fm.evaluate(CLS, logits, label)
    assert list(result) == ["mcc", "acc", "f1"]
    assert result["acc"] == 75.0 and result["f1"] == pytest.approx(100 * 2 / 3)
    assert result["mcc"] == pytest.approx(100 * skm.matthews_corrcoef(label, [0, 1, 1, 0]))
    assert fm.evaluate(STS, np.array([1.0, 2.0, 3.5]), np.array([0.0, 2.0, 2.5]))["spearman"] == pytest.approx(100.0)


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match=r"'x' names unknown metric\(s\) \['auc'\]"):
        fm.evaluate(Task("x", "classification", n_classes=2, metrics=("acc", "auc")), np.zeros((1, 2)), [0])


def test_scipy_is_imported_only_when_a_correlation_is_computed():
    code = ("import sys, gpt1f.finetune.metrics as m; assert 'scipy' not in sys.modules; "
            "m.accuracy([1], [1]); m.mcc([1, 0], [1, 1]); assert 'scipy' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

"""Synthetic datasets: they read back through the generic reader, labels balanced, the rule present
(a trivial rule-based predictor is perfect), deterministic, and no user file is ever overwritten."""
import numpy as np
import pytest

from gpt1f.finetune import synthetic
from gpt1f.rocstories import DataError, STRANGERS


def predict_classification(segments, choices):
    (text,) = segments
    words = [set(t.replace(",", " ").split()) for t in text]
    assert all(bool(w & set(synthetic.POSITIVE)) != bool(w & set(synthetic.NEGATIVE)) for w in words)
    return [int(bool(w & set(synthetic.POSITIVE))) for w in words]


def predict_entailment(segments, choices):
    out = []
    for premise, hypothesis in zip(*segments):
        person, named = premise.split()[0], hypothesis.split()[0]
        out.append(2 if " never " in hypothesis else 0 if named == person else 1)
    return out


def predict_similarity(segments, choices):
    return [float(len(set(b.split()) & set(a.split()))) for a, b in zip(*segments)]


def predict_multiple_choice(segments, choices):
    context, _ = segments
    named = [[k for k, c in enumerate(options) if f" {text.split()[0]} " in f" {c} "]
             for text, options in zip(context, choices)]
    assert all(len(k) == 1 for k in named)          # exactly one choice names the context's person
    return [k[0] for k in named]


PREDICT = {"classification": predict_classification, "entailment": predict_entailment,
           "similarity": predict_similarity, "multiple_choice": predict_multiple_choice}


@pytest.mark.parametrize("kind", list(synthetic.SPECS))
def test_files_read_back_balanced_and_follow_the_rule(tmp_path, kind):
    paths = synthetic.write_synthetic(kind, tmp_path, n_rows=120, seed=5, n_eval=60)
    assert set(paths) == {"train", "valid", "test"} and all(p.is_file() for p in paths.values())
    preset = synthetic.synthetic_preset(kind, tmp_path)
    splits = preset.read(tmp_path)
    assert {name: len(s.source) for name, s in splits.items()} == {"train": 120, "valid": 60, "test": 60}
    n_labels = synthetic.N_LABELS[kind]
    for name, split in splits.items():
        values, counts = np.unique(split.label, return_counts=True)
        assert len(values) == n_labels and (counts == len(split.label) // n_labels).all(), (name, counts)
        predicted = PREDICT[kind](split.segments, split.choices)
        np.testing.assert_array_equal(predicted, split.label, err_msg=f"{kind} {name}: the rule does not hold")
        assert split.source[0] == f"{paths[name]}:{1 if kind == 'multiple_choice' else 2}"
    assert preset.task.kind == kind
    if kind == "similarity":
        assert preset.task.objective == "mse" and preset.task.score_range == (0.0, 5.0)
        assert splits["train"].label.dtype == np.float64
    else:
        assert preset.task.n_classes == n_labels and splits["train"].label.dtype == np.int64
    if kind == "multiple_choice":
        assert all(len(c) == 4 for c in splits["train"].choices)


def test_strangers_never_appear_in_contexts(tmp_path):
    for kind in ("entailment", "multiple_choice"):
        synthetic.write_synthetic(kind, tmp_path, n_rows=200, seed=1)
        context = synthetic.synthetic_preset(kind, tmp_path).read(tmp_path)["train"].segments[0]
        assert not any(f"{s} " in text for s in STRANGERS for text in context), kind
    synthetic.write_synthetic("similarity", tmp_path, n_rows=200, seed=1)
    first = synthetic.synthetic_preset("similarity", tmp_path).read(tmp_path)["train"].segments[0]
    assert not set(" ".join(first).split()) & set(synthetic.OTHER_WORDS)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    paths = synthetic.write_synthetic("entailment", tmp_path / "a", n_rows=40, seed=3)
    again = synthetic.write_synthetic("entailment", tmp_path / "b", n_rows=40, seed=3)
    other = synthetic.write_synthetic("entailment", tmp_path / "c", n_rows=40, seed=4)
    for split in paths:
        assert paths[split].read_bytes() == again[split].read_bytes()
        assert paths[split].read_bytes() != other[split].read_bytes()
    assert paths["valid"].read_text().splitlines()[1:] != paths["test"].read_text().splitlines()[1:]


def test_never_overwrites_a_file_it_did_not_write(tmp_path):
    paths = synthetic.synthetic_paths("classification", tmp_path)
    paths["valid"].write_text("id\ttext\tlabel\nmine-1\tmy own review\tpositive\n")
    with pytest.raises(DataError, match=r"synthetic_classification_valid\.tsv: exists and was not written by "
                                        "write_synthetic; refusing to overwrite it"):
        synthetic.write_synthetic("classification", tmp_path, n_rows=8)
    assert "my own review" in paths["valid"].read_text()
    assert not paths["train"].exists() and not paths["test"].exists()       # nothing written
    jsonl = synthetic.synthetic_paths("multiple_choice", tmp_path)["test"]
    jsonl.write_text('{"id": "q1", "context": "mine"}\n')
    with pytest.raises(DataError, match="refusing to overwrite"):
        synthetic.write_synthetic("multiple_choice", tmp_path, n_rows=8)
    first = synthetic.write_synthetic("similarity", tmp_path, n_rows=8, seed=0)["train"].read_bytes()
    assert synthetic.write_synthetic("similarity", tmp_path, n_rows=8, seed=1)["train"].read_bytes() != first


def test_missing_files_and_unknown_kind_are_named(tmp_path):
    with pytest.raises(DataError, match=r"synthetic entailment data not found: .*synthetic_entailment_train\.tsv"):
        synthetic.synthetic_preset("entailment", tmp_path)
    with pytest.raises(DataError, match="--task 'regression': no synthetic dataset"):
        synthetic.write_synthetic("regression", tmp_path, n_rows=8)

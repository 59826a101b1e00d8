"""ROCStories data: CSV reading and validation, the original split, encoding and padding."""
import csv

import numpy as np
import pytest

from gpt1f import rocstories as roc

HEADER = list(roc.COLUMNS)


def write_csv(path, rows, header=HEADER):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def story_row(i, label="1", s1="He woke up."):
    return [f"id{i}", s1, "He ate.", "He ran.", "He slept.", f"Good {i}.", f"Bad {i}.", label]


# ---------------------------------------------------------------- reading

def test_read_joins_the_four_sentences_and_shifts_labels_to_zero_based(tmp_path):
    path = write_csv(tmp_path / "a.csv", [story_row(0, "1"), story_row(1, "2")])
    stories = roc.read_cloze_csv(path, require_labels=True)
    assert stories.story == ["He woke up. He ate. He ran. He slept."] * 2
    assert stories.ending1 == ["Good 0.", "Good 1."]
    assert stories.ending2 == ["Bad 0.", "Bad 1."]
    assert stories.label.tolist() == [0, 1] and stories.label.dtype == np.int64


def test_test_file_may_lack_labels(tmp_path):
    path = write_csv(tmp_path / "t.csv", [r[:-1] for r in [story_row(0)]], header=HEADER[:-1])
    stories = roc.read_cloze_csv(path, require_labels=False)
    assert stories.label is None and len(stories.story) == 1
    with pytest.raises(roc.DataError, match="AnswerRightEnding"):
        roc.read_cloze_csv(path, require_labels=True)


def test_missing_column_is_named(tmp_path):
    header = [h for h in HEADER if h != "InputSentence3"]
    path = write_csv(tmp_path / "a.csv", [story_row(0)[:3] + story_row(0)[4:]], header=header)
    with pytest.raises(roc.DataError, match=r"a\.csv: missing column\(s\) InputSentence3"):
        roc.read_cloze_csv(path, require_labels=True)


@pytest.mark.parametrize("label, problem", [("x", "not an integer"), ("3", "out of range"),
                                            ("0", "out of range"), ("", "not an integer")])
def test_bad_label_names_the_row(tmp_path, label, problem):
    rows = [story_row(0), story_row(1), story_row(2, label)]
    path = write_csv(tmp_path / "a.csv", rows)
    with pytest.raises(roc.DataError, match=rf"row 3 \(InputStoryid 'id2'\).*{problem}"):
        roc.read_cloze_csv(path, require_labels=True)


def test_empty_sentence_names_row_and_column(tmp_path):
    rows = [story_row(0), story_row(1, s1="   ")]
    path = write_csv(tmp_path / "a.csv", rows)
    with pytest.raises(roc.DataError, match=r"row 2 \(InputStoryid 'id1'\) has an empty InputSentence1"):
        roc.read_cloze_csv(path, require_labels=True)


def test_missing_files_message_names_files_folder_and_source(tmp_path):
    write_csv(tmp_path / roc.VALID_FILE, [story_row(0)])
    with pytest.raises(roc.DataError) as info:
        roc.load_rocstories(tmp_path)
    message = str(info.value)
    assert roc.TEST_FILE in message and roc.VALID_FILE not in message
    assert str(tmp_path) in message and "request form" in message and "ROCStories website" in message


# ---------------------------------------------------------------- the split

def test_split_is_train_test_split_of_the_original():
    train, valid = roc.split_indices(1871)
    perm = np.random.RandomState(3535999445).permutation(1871)
    assert len(train) == 1497 and len(valid) == 374
    np.testing.assert_array_equal(valid, perm[:374])   # sklearn's ShuffleSplit: test first
    np.testing.assert_array_equal(train, perm[374:])
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(1871))


def test_split_of_a_small_file_and_bad_n_valid():
    train, valid = roc.split_indices(10, 3)
    assert len(train) == 7 and len(valid) == 3 and not set(train) & set(valid)
    with pytest.raises(roc.DataError, match="n_valid"):
        roc.split_indices(10, 10)


def test_load_takes_rows_in_split_order(tmp_path):
    rows = [story_row(i, "1" if i % 3 else "2") for i in range(12)]
    write_csv(tmp_path / roc.VALID_FILE, rows)
    write_csv(tmp_path / roc.TEST_FILE, rows[:4])
    splits = roc.load_rocstories(tmp_path, n_valid=5)
    train, valid = roc.split_indices(12, 5)
    assert splits["valid"].ending1 == [f"Good {i}." for i in valid]
    assert splits["train"].ending2 == [f"Bad {i}." for i in train]
    assert splits["train"].label.tolist() == [0 if i % 3 else 1 for i in train]
    assert len(splits["test"].story) == 4


# ---------------------------------------------------------------- encoding

START, DELIM, CLF = 100, 101, 102


def test_sequence_layout():
    assert roc.sequence([1, 2, 3], [7, 8], max_len=2, start=START, delimiter=DELIM, clf=CLF) == \
        [START, 1, 2, DELIM, 7, 8, CLF]


def test_fit_n_ctx_and_max_len():
    # n_ctx 12 -> max_len 4: story 6 -> 4, longest ending over both choices: 3 -> 4 + 3 + 3 = 10
    split = roc.Encoded([[1] * 6, [1] * 2], [[2] * 3, [2]], [[3], [3] * 2], None)
    assert roc.max_len_for(12) == 4
    assert roc.fit_n_ctx([split], 12) == 10
    # a long ending is cut at max_len too, and the result never exceeds n_ctx
    long = roc.Encoded([[1] * 9], [[2] * 9], [[3]], None)
    assert roc.fit_n_ctx([split, long], 12) == 11   # 4 + 4 + 3
    assert roc.fit_n_ctx([long], 8) == 7            # max_len 2: 2 + 2 + 3
    assert roc.fit_n_ctx([long], 6) == 5            # max_len 1: 1 + 1 + 3


def test_transform_pads_and_masks_by_hand():
    split = roc.Encoded([[5, 6, 7], [9]], [[11], [12, 13]], [[21, 22], [23]], np.array([1, 0]))
    tokens, mask = roc.transform(split, n_ctx=8, max_len=2, start=START, delimiter=DELIM, clf=CLF)
    assert tokens.shape == (2, 2, 8) and tokens.dtype == np.int64 and mask.dtype == np.float32
    assert tokens[0, 0].tolist() == [START, 5, 6, DELIM, 11, CLF, 0, 0]
    assert tokens[0, 1].tolist() == [START, 5, 6, DELIM, 21, 22, CLF, 0]
    assert tokens[1, 0].tolist() == [START, 9, DELIM, 12, 13, CLF, 0, 0]
    assert tokens[1, 1].tolist() == [START, 9, DELIM, 23, CLF, 0, 0, 0]
    assert mask[0, 0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert mask[0, 1].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    assert mask[1, 1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


def test_transform_refuses_an_n_ctx_too_small():
    split = roc.Encoded([[5, 6, 7]], [[11]], [[21]], None)
    with pytest.raises(ValueError, match="n_ctx=5"):
        roc.transform(split, n_ctx=5, max_len=3, start=START, delimiter=DELIM, clf=CLF)


# ---------------------------------------------------------------- loop helpers

def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a = roc.epoch_order(42, 0, 50)
    assert sorted(a.tolist()) == list(range(50))
    np.testing.assert_array_equal(a, roc.epoch_order(42, 0, 50))
    assert not np.array_equal(a, roc.epoch_order(42, 1, 50))
    assert not np.array_equal(a, roc.epoch_order(43, 0, 50))


def test_accuracy_and_cost_by_hand():
    logits = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    label = np.array([0, 0, 0])
    assert roc.accuracy(logits, label) == pytest.approx(200 / 3)   # ties go to choice 0
    expected = (np.log(2) + np.log(1 + np.exp(-2.0)) + np.log(1 + np.e)) / 3
    assert roc.clf_cost(logits, label) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- synthetic data

def test_synthetic_files_follow_the_rule_and_the_format(tmp_path):
    roc.write_synthetic(tmp_path, n_rows=200, seed=7)
    first = (tmp_path / roc.VALID_FILE).read_bytes()
    splits = roc.load_rocstories(tmp_path, n_valid=50)
    for split in splits.values():
        assert split.label is not None
        for story, e1, e2, y in zip(split.story, split.ending1, split.ending2, split.label):
            right, wrong = (e1, e2) if y == 0 else (e2, e1)
            character = story.split()[0] if story.split()[0] in roc.NAMES else next(
                n for n in roc.NAMES if f" {n} " in f" {story} ")
            assert character in right and character not in wrong
    labels = np.concatenate([s.label for s in splits.values()])
    assert 0.35 < labels.mean() < 0.65
    roc.write_synthetic(tmp_path, n_rows=200, seed=7)
    assert (tmp_path / roc.VALID_FILE).read_bytes() == first
    assert (tmp_path / roc.TEST_FILE).read_bytes() != first

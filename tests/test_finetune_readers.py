"""Readers of the paper's public formats and of a user's own tables: fixtures written in exactly
the public layouts (real headers and quirks), and every bad input named at file:line."""
import json
import re

import numpy as np
import pytest

from gpt1f import rocstories as roc
from gpt1f.finetune import presets, readers
from gpt1f.finetune.task import TextSplit
from gpt1f.rocstories import DataError


def write_lines(path, lines, *, bom=False):
    """Raw tab-separated lines, as GLUE ships them (no quoting: a bare " stays as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join("\t".join(fields) + "\n" for fields in lines)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def texts(split: TextSplit, k=0):
    return split.segments[k]


def where(path, line):
    return re.escape(f"{path}:{line}")


# ---------------------------------------------------------------- GLUE, single sentence

def test_sst2_reads_headers_bare_quotes_and_an_unlabelled_test(tmp_path):
    write_lines(tmp_path / "SST-2/train.tsv", [["sentence", "label"], ['a "gripping tale ', "1"],
                                                ["dull and flat ", "0"], ["a joy", "1"]])
    write_lines(tmp_path / "SST-2/dev.tsv", [["sentence", "label"], ["it 's a charming journey .", "1"]])
    write_lines(tmp_path / "SST-2/test.tsv", [["index", "sentence"], ["0", "uneven"], ["1", "fine"]])
    splits = presets.PRESETS["sst2"].read(tmp_path)
    assert set(splits) == {"train", "valid", "test"}
    train = splits["train"]
    assert texts(train) == ['a "gripping tale ', "dull and flat ", "a joy"]
    assert train.label.tolist() == [1, 0, 1] and train.label.dtype == np.int64
    assert train.choices is None and len(train.segments) == 1
    assert train.source == [f"{tmp_path / 'SST-2/train.tsv'}:{n}" for n in (2, 3, 4)]
    assert texts(splits["valid"]) == ["it 's a charming journey ."]
    assert splits["test"].label is None and texts(splits["test"]) == ["uneven", "fine"]
    # the folder itself works as --data_dir too
    assert texts(presets.PRESETS["sst2"].read(tmp_path / "SST-2")["train"]) == texts(train)


def test_cola_train_and_dev_have_no_header(tmp_path):
    rows = [["gj04", "1", "", "Our friends won't buy this analysis."], ["gj04", "0", "*", "They drank the pub."],
            ["bc01", "1", "", 'He said "hi".']]
    write_lines(tmp_path / "CoLA/train.tsv", rows)
    write_lines(tmp_path / "CoLA/dev.tsv", rows[:2])
    write_lines(tmp_path / "CoLA/test.tsv", [["index", "sentence"], ["0", "Bill whistled past the house."]])
    splits = presets.PRESETS["cola"].read(tmp_path)
    assert texts(splits["train"]) == [r[3] for r in rows]        # the first row is data, not a header
    assert splits["train"].label.tolist() == [1, 0, 1]
    assert splits["train"].source[0].endswith("train.tsv:1")
    assert len(texts(splits["valid"])) == 2
    assert splits["test"].label is None and texts(splits["test"]) == ["Bill whistled past the house."]


def test_cola_row_with_a_missing_field_is_named(tmp_path):
    path = write_lines(tmp_path / "CoLA/train.tsv", [["gj04", "1", "", "Fine."], ["gj04", "1", "No source."]])
    write_lines(tmp_path / "CoLA/dev.tsv", [["gj04", "1", "", "Fine."]])
    with pytest.raises(DataError, match=where(path, 2) + r": 3 field\(s\), the header has 4"):
        readers.read_cola(tmp_path / "CoLA")


# ---------------------------------------------------------------- GLUE, pairs

MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


def test_mrpc_with_a_byte_order_mark_and_a_test_file(tmp_path):
    write_lines(tmp_path / "MRPC/train.tsv", [MRPC_HEADER, ["1", "702876", "702977", 'He said "no".', "He refused."],
                                              ["0", "2108705", "2108831", "Shares rose.", "Profits fell."]], bom=True)
    write_lines(tmp_path / "MRPC/dev.tsv", [MRPC_HEADER, ["1", "1", "2", "A cat sat.", "A cat was sitting."]])
    write_lines(tmp_path / "MRPC/test.tsv", [["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                                             ["0", "1089874", "1089925", "It rained.", "Rain fell."]])
    splits = presets.PRESETS["mrpc"].read(tmp_path)
    train = splits["train"]
    assert train.segments == (['He said "no".', "Shares rose."], ["He refused.", "Profits fell."])
    assert train.label.tolist() == [1, 0] and train.label.dtype == np.int64
    assert splits["test"].label is None and splits["test"].segments == (["It rained."], ["Rain fell."])


QQP_HEADER = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]


def test_qqp_skips_and_counts_rows_with_missing_values(tmp_path):
    lines = [QQP_HEADER,
             ["0", "1", "2", "How do I learn Python?", "What is the best way to learn Python?", "1"],
             ["1", "3", "4", "Why is the sky blue?", "", "0"],                      # a missing value
             ["2", "5", "6", "Is Muhammad a real", ],                             # a question broken by a newline
             ['"', "historical figure?", "0"],
             ["3", "7", "8", "Who am I?", "Who are you?", "0"]]
    path = write_lines(tmp_path / "QQP/train.tsv", lines)
    write_lines(tmp_path / "QQP/dev.tsv", [QQP_HEADER, ["9", "1", "2", "Why?", "How?", "0"]])
    write_lines(tmp_path / "QQP/test.tsv", [["id", "question1", "question2"], ["0", "Is it?", "Isn't it?"]])
    log = []
    splits = readers.read_qqp(tmp_path / "QQP", log=log.append)
    assert splits["train"].segments[1] == ["What is the best way to learn Python?", "Who are you?"]
    assert splits["train"].label.tolist() == [1, 0]
    assert splits["train"].source == [f"{path}:2", f"{path}:6"]
    assert f"{path}: skipped 2 row(s) with the wrong number of fields (first at line 4)" in log
    assert f"{path}: skipped 1 row(s) with a missing value (first at line 3)" in log
    assert len(log) == 2 and splits["test"].label is None


STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score"]


def stsb_row(i, a, b, score):
    return [str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b, score]


def test_stsb_reads_float_scores(tmp_path):
    write_lines(tmp_path / "STS-B/train.tsv", [STSB_HEADER, stsb_row(0, "A plane is taking off.",
                                                                    "An air plane is taking off.", "5.000"),
                                               stsb_row(1, "A man plays a flute.", "A man sings.", "0.750")])
    write_lines(tmp_path / "STS-B/dev.tsv", [STSB_HEADER, stsb_row(0, "A dog runs.", "A dog is running.", "4.2")])
    write_lines(tmp_path / "STS-B/test.tsv", [STSB_HEADER[:-1], stsb_row(0, "Hi.", "Hello.", "")[:-1]])
    splits = presets.PRESETS["stsb"].read(tmp_path)
    assert splits["train"].label.dtype == np.float64
    np.testing.assert_array_equal(splits["train"].label, [5.0, 0.75])
    assert splits["train"].segments[1] == ["An air plane is taking off.", "A man sings."]
    assert splits["test"].label is None and splits["valid"].label.tolist() == [4.2]


@pytest.mark.parametrize("score, problem", [("5.5", "outside the task's range 0 to 5"), ("-0.1", "outside"),
                                            ("high", "not a number"), ("nan", "not finite")])
def test_stsb_bad_score_is_named(tmp_path, score, problem):
    path = write_lines(tmp_path / "train.tsv", [STSB_HEADER, stsb_row(0, "a", "b", "1"), stsb_row(1, "a", "b", score)])
    write_lines(tmp_path / "dev.tsv", [STSB_HEADER, stsb_row(0, "a", "b", "1")])
    with pytest.raises(DataError, match=where(path, 3) + ": score.*" + problem):
        readers.read_stsb(tmp_path)


# ---------------------------------------------------------------- GLUE, NLI

MNLI_COLS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
MNLI_TRAIN = MNLI_COLS + ["label1", "gold_label"]
MNLI_DEV = MNLI_COLS + ["label1", "label2", "label3", "label4", "label5", "gold_label"]


def mnli_row(i, premise, hypothesis, *labels):
    return [str(i), "31193", f"31193{i}n", "government", f"( ( {premise} ) )", f"( {hypothesis} )",
            f"(ROOT (S {premise}))", f"(ROOT (S {hypothesis}))", premise, hypothesis, *labels]


def write_mnli(folder):
    write_lines(folder / "train.tsv", [MNLI_TRAIN,
                                       mnli_row(0, 'He said "go".', "He spoke.", "entailment", "entailment"),
                                       mnli_row(1, "It rains.", "It is dry.", "contradiction", "contradiction"),
                                       mnli_row(2, "A man waits.", "He is late.", "neutral", "neutral")])
    write_lines(folder / "dev_matched.tsv", [MNLI_DEV, mnli_row(0, "A cat.", "An animal.", *["entailment"] * 6)])
    write_lines(folder / "dev_mismatched.tsv", [MNLI_DEV, mnli_row(0, "A dog.", "No dog.", "contradiction",
                                                                   "neutral", "contradiction", "contradiction",
                                                                   "contradiction", "contradiction"),
                                                mnli_row(1, "Two men.", "People.", *["entailment"] * 6)])
    write_lines(folder / "test_matched.tsv", [MNLI_COLS, mnli_row(0, "Sun.", "Light.")])
    write_lines(folder / "test_mismatched.tsv", [MNLI_COLS, mnli_row(0, "Moon.", "Night."),
                                                 mnli_row(1, "Star.", "Sky.")])


def test_mnli_matched_and_mismatched(tmp_path):
    write_mnli(tmp_path / "MNLI")
    matched = presets.PRESETS["mnli"].read(tmp_path)
    assert matched["train"].segments == (['He said "go".', "It rains.", "A man waits."],
                                         ["He spoke.", "It is dry.", "He is late."])
    assert matched["train"].label.tolist() == [0, 2, 1]       # entailment, neutral, contradiction
    assert matched["valid"].segments[0] == ["A cat."] and matched["test"].segments[0] == ["Sun."]
    assert matched["test"].label is None
    mismatched = presets.PRESETS["mnli_mm"].read(tmp_path)
    assert mismatched["valid"].segments[0] == ["A dog.", "Two men."]
    assert mismatched["valid"].label.tolist() == [2, 0]
    assert len(mismatched["test"].source) == 2 and mismatched["test"].source[1].endswith("test_mismatched.tsv:3")


SNLI_COLS = ["index", "captionID", "pairID", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
             "sentence2_parse", "sentence1", "sentence2"]


def snli_row(i, premise, hypothesis, *labels):
    return [str(i), "3416050480.jpg#4", f"3416050480.jpg#4r1{i}", f"( {premise} )", f"( {hypothesis} )",
            f"(ROOT {premise})", f"(ROOT {hypothesis})", premise, hypothesis, *labels]


def test_snli_rows_with_more_labels_than_the_header_and_no_consensus_rows(tmp_path):
    path = write_lines(tmp_path / "SNLI/train.tsv", [
        SNLI_COLS + ["label1", "gold_label"],
        snli_row(0, "A person on a horse.", "A person is outdoors.", "entailment", "entailment"),
        snli_row(1, "Kids smile.", "Kids frown.", "contradiction", "contradiction", "contradiction",
                 "neutral", "contradiction", "contradiction"),          # label1..label5: 15 fields
        snli_row(2, "A man.", "A tall man.", "neutral", "entailment", "contradiction", "neutral",
                 "entailment", "-"),                                    # no consensus
    ])
    write_lines(tmp_path / "SNLI/dev.tsv", [SNLI_COLS + ["label1", "label2", "label3", "label4", "label5",
                                                         "gold_label"],
                                            snli_row(0, "Two dogs.", "Animals.", *["entailment"] * 6)])
    write_lines(tmp_path / "SNLI/test.tsv", [SNLI_COLS + ["label1", "gold_label"],
                                             snli_row(0, "A boy.", "A girl.", "contradiction", "contradiction")])
    log = []
    splits = readers.read_snli(tmp_path / "SNLI", log=log.append)
    assert splits["train"].segments[1] == ["A person is outdoors.", "Kids frown."]
    assert splits["train"].label.tolist() == [0, 2]
    assert log == [f"{path}: skipped 1 row(s) with gold_label '-' (first at line 4)"]
    assert splits["test"].label.tolist() == [2]            # SNLI's test file is labelled


def test_nli_row_with_too_many_fields_is_named(tmp_path):
    path = write_lines(tmp_path / "train.tsv", [SNLI_COLS + ["label1", "gold_label"],
                                                snli_row(0, "a", "b", *["neutral"] * 7)])
    write_lines(tmp_path / "dev.tsv", [SNLI_COLS + ["label1", "gold_label"], snli_row(0, "a", "b", "neutral", "-")])
    with pytest.raises(DataError, match=where(path, 2) + r": 16 field\(s\), the header has 11"):
        readers.read_snli(tmp_path)


@pytest.mark.parametrize("name, folder, cols, labels", [
    ("qnli", "QNLI", ["index", "question", "sentence", "label"], ("entailment", "not_entailment")),
    ("rte", "RTE", ["index", "sentence1", "sentence2", "label"], ("entailment", "not_entailment"))])
def test_qnli_and_rte(tmp_path, name, folder, cols, labels):
    write_lines(tmp_path / folder / "train.tsv", [cols, ["0", "Who wrote it?", "Ann wrote it.", labels[0]],
                                                  ["1", "When?", 'The "old" days.', labels[1]]])
    write_lines(tmp_path / folder / "dev.tsv", [cols, ["0", "Where?", "Here.", labels[1]]])
    write_lines(tmp_path / folder / "test.tsv", [cols[:-1], ["0", "Why?", "Because."]])
    splits = presets.PRESETS[name].read(tmp_path)
    assert splits["train"].segments == (["Who wrote it?", "When?"], ["Ann wrote it.", 'The "old" days.'])
    assert splits["train"].label.tolist() == [0, 1] and splits["valid"].label.tolist() == [1]
    assert splits["test"].label is None
    assert presets.PRESETS[name].task.label_names == labels


def test_scitail_headerless_tsv(tmp_path):
    folder = tmp_path / "SciTailV1.1" / "tsv_format"
    rows = [["Plants make food by photosynthesis.", "Photosynthesis makes food.", "entails"],
            ["The sun is a star.", "The moon is made of rock.", "neutral"]]
    for name in ("train", "dev", "test"):
        write_lines(folder / f"scitail_1.0_{name}.tsv", rows)
    splits = presets.PRESETS["scitail"].read(tmp_path)
    assert splits["train"].segments[0] == [rows[0][0], rows[1][0]]
    assert splits["train"].label.tolist() == [0, 1] and splits["test"].label.tolist() == [0, 1]
    assert splits["valid"].source[0].endswith("scitail_1.0_dev.tsv:1")


# ---------------------------------------------------------------- RACE

def race_article(i, n_questions=2, answers=None):
    return {"answers": answers or ["B", "D"][:n_questions],
            "options": [[f"opt{q}{k} of {i}" for k in "abcd"] for q in range(n_questions)],
            "questions": [f"Question {q} about article {i}?" for q in range(n_questions)],
            "article": f"Article {i}: a \"story\"\nwith two lines.", "id": f"high{i}.txt"}


def write_race(root, splits=("train", "dev", "test"), levels=("high", "middle")):
    for s, split in enumerate(splits):
        for level in levels:
            folder = root / "RACE" / split / level
            folder.mkdir(parents=True)
            for i in range(2):
                (folder / f"{10 * s + i}.txt").write_text(json.dumps(race_article(f"{split}-{level}-{i}")))


def test_race_one_example_per_question_and_the_level_presets(tmp_path):
    write_race(tmp_path)
    splits = presets.PRESETS["race"].read(tmp_path)
    train = splits["train"]
    assert len(train.source) == 2 * 2 * 2                               # levels x articles x questions
    assert train.segments[0][0] == 'Article train-high-0: a "story"\nwith two lines.'
    assert train.segments[1][:2] == ["Question 0 about article train-high-0?", "Question 1 about article train-high-0?"]
    assert train.choices[1] == [f"opt1{k} of train-high-0" for k in "abcd"]
    assert train.label.tolist() == [1, 3] * 4
    assert train.source[:2] == [f"{tmp_path / 'RACE/train/high/0.txt'}:{q}" for q in (0, 1)]
    assert set(splits) == {"train", "valid", "test"}
    middle = presets.PRESETS["race_m"].read(tmp_path / "RACE")["valid"]
    assert all("-middle-" in text for text in middle.segments[0]) and len(middle.source) == 4
    high = presets.PRESETS["race_h"].read(tmp_path)["test"]
    assert all("-high-" in text for text in high.segments[0])


@pytest.mark.parametrize("change, problem", [
    (lambda a: a.update(answers=["B", "E"]), r":1: unknown answer 'E'; allowed: A, B, C, D"),
    (lambda a: a["options"][1].pop(), r":1: options must be a list of 4"),
    (lambda a: a.pop("questions"), r":1: missing key\(s\) questions"),
    (lambda a: a["options"][0].__setitem__(2, " "), r":0: options\[2\]: empty text"),
    (lambda a: a["answers"].pop(), r":1: questions, options and answers must be lists of one length")])
def test_race_bad_article_is_named(tmp_path, change, problem):
    write_race(tmp_path)
    path = tmp_path / "RACE/dev/middle/11.txt"
    article = json.loads(path.read_text())
    change(article)
    path.write_text(json.dumps(article))
    with pytest.raises(DataError, match=re.escape(str(path)) + problem):
        readers.read_race(tmp_path / "RACE")


def test_race_not_json_and_missing_layout(tmp_path):
    write_race(tmp_path)
    path = tmp_path / "RACE/train/high/1.txt"
    path.write_text('{"article": "x",\n "questions": [}')
    with pytest.raises(DataError, match=where(path, 2) + ": not JSON"):
        readers.read_race(tmp_path / "RACE")
    with pytest.raises(DataError, match=r"elsewhere/train/high: not found; expected RACE's layout"):
        presets.PRESETS["race"].read(tmp_path / "elsewhere")


# ---------------------------------------------------------------- Story Cloze

def test_story_cloze_is_the_rocstories_split_with_sources(tmp_path):
    roc.write_synthetic(tmp_path, n_rows=40, seed=3)
    splits = readers.read_story_cloze(tmp_path, n_valid=10)
    expected = roc.load_rocstories(tmp_path, n_valid=10)
    for name in ("train", "valid", "test"):
        split, story = splits[name], expected[name]
        assert split.segments[0] == story.story and split.segments[1] == [""] * len(story.story)
        assert split.choices == [[a, b] for a, b in zip(story.ending1, story.ending2)]
        np.testing.assert_array_equal(split.label, story.label)
        for source, ending in zip(split.source, story.ending1):       # each source's line holds its story
            path, line = source.rsplit(":", 1)
            assert ending in open(path, encoding="utf-8").read().splitlines()[int(line) - 1]
    assert len(splits["train"].source) == 30 and len(splits["valid"].source) == 10


# ---------------------------------------------------------------- bad input in GLUE files

def write_sst2(folder, train_lines):
    write_lines(folder / "dev.tsv", [["sentence", "label"], ["fine", "1"]])
    return write_lines(folder / "train.tsv", [["sentence", "label"], *train_lines])


def test_missing_file_names_the_file_and_the_glue_layout(tmp_path):
    write_lines(tmp_path / "SST-2/train.tsv", [["sentence", "label"], ["ok", "1"]])
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "SST-2/dev.tsv")) +
                       r": not found; expected GLUE's SST-2 folder \(train.tsv, dev.tsv with header"):
        presets.PRESETS["sst2"].read(tmp_path)


def test_missing_column_is_named(tmp_path):
    path = write_lines(tmp_path / "train.tsv", [["index", "question", "text", "label"], ["0", "a", "b", "entailment"]])
    write_lines(tmp_path / "dev.tsv", [["index", "question", "sentence", "label"], ["0", "a", "b", "entailment"]])
    with pytest.raises(DataError, match=where(path, 1) + r": missing column\(s\) sentence; the header has index, "
                       "question, text, label"):
        readers.read_qnli(tmp_path)


def test_missing_label_column_in_train_is_named(tmp_path):
    path = write_sst2(tmp_path, [])
    write_lines(path, [["sentence"], ["good"]])
    with pytest.raises(DataError, match=where(path, 1) + r": missing column\(s\) label"):
        readers.read_sst2(tmp_path)


def test_empty_text_is_named(tmp_path):
    path = write_sst2(tmp_path, [["good", "1"], ["  ", "0"]])
    with pytest.raises(DataError, match=where(path, 3) + ": sentence: empty text"):
        readers.read_sst2(tmp_path)


def test_unknown_label_names_label_and_allowed(tmp_path):
    path = write_lines(tmp_path / "train.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "yes"]])
    write_lines(tmp_path / "dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "entailment"]])
    with pytest.raises(DataError, match=where(path, 2) + ": label: unknown label 'yes'; allowed: entailment, "
                       "not_entailment"):
        readers.read_rte(tmp_path)


def test_wrong_number_of_fields_is_named(tmp_path):
    path = write_sst2(tmp_path, [["good", "1"], ["bad", "0", "extra"]])
    with pytest.raises(DataError, match=where(path, 3) + r": 3 field\(s\), the header has 2 \(sentence, label\)"):
        readers.read_sst2(tmp_path)


def test_non_utf8_byte_names_its_line(tmp_path):
    path = write_sst2(tmp_path, [["good", "1"], ["fine", "1"], ["caf\u00e9", "1"]])
    raw = path.read_bytes().replace("caf\u00e9".encode(), b"caf\xe9")       # latin-1, not UTF-8
    path.write_bytes(raw)
    with pytest.raises(DataError, match=where(path, 4) + r": not UTF-8 \(byte 0xe9 at column 4\)"):
        readers.read_sst2(tmp_path)


def test_a_file_with_only_a_header_has_no_examples(tmp_path):
    path = write_sst2(tmp_path, [])
    with pytest.raises(DataError, match=re.escape(str(path)) + ": no examples"):
        readers.read_sst2(tmp_path)


# ---------------------------------------------------------------- a user's own table

def test_read_table_tsv_csv_and_jsonl_agree(tmp_path):
    rows = [("a good film", 'she said "wow"', "pos"), ("bad, really", "meh", "neg"), ("ok", "fine", "pos")]
    (tmp_path / "t.tsv").write_text("text\tother\ty\n" + "".join("\t".join(r) + "\n" for r in rows))
    (tmp_path / "t.csv").write_text('text,other,y\n"a good film","she said ""wow""",pos\n"bad, really",meh,neg\n'
                                    "ok,fine,pos\n")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": a, "other": b, "y": y}) + "\n" for a, b, y in rows))
    for suffix in ("tsv", "csv", "jsonl"):
        split = readers.read_table(tmp_path / f"t.{suffix}", kind="entailment", text_cols=["text", "other"],
                                   label_col="y", label_map={"neg": 0, "pos": 1})
        assert split.segments == (["a good film", "bad, really", "ok"], ['she said "wow"', "meh", "fine"]), suffix
        assert split.label.tolist() == [1, 0, 1]
        assert split.source[2] == f"{tmp_path / f't.{suffix}'}:{4 if suffix != 'jsonl' else 3}"


def test_read_table_class_ids_scores_and_unlabelled(tmp_path):
    path = write_lines(tmp_path / "c.tsv", [["s", "y"], ["x", "2"], ["y", "0"]])
    split = readers.read_table(path, kind="classification", text_cols=["s"], label_col="y")
    assert split.label.tolist() == [2, 0] and split.label.dtype == np.int64
    with pytest.raises(DataError, match=where(path, 2) + r": y: label 2 is outside the task's classes \(0 .. 1\)"):
        readers.read_table(path, kind="classification", text_cols=["s"], label_col="y", n_classes=2)
    bad = write_lines(tmp_path / "d.tsv", [["s", "y"], ["x", "pos"]])
    with pytest.raises(DataError, match=where(bad, 2) + ": y: label 'pos' is not a class id.*--label_map"):
        readers.read_table(bad, kind="classification", text_cols=["s"], label_col="y")
    scores = write_lines(tmp_path / "s.tsv", [["a", "b", "sim"], ["x", "y", "0.5"], ["x", "x", "1"]])
    split = readers.read_table(scores, kind="similarity", text_cols=["a", "b"], label_col="sim", score_range=(0, 1))
    assert split.label.tolist() == [0.5, 1.0] and split.label.dtype == np.float64
    with pytest.raises(DataError, match=where(scores, 3) + ": sim: score 1 is outside the task's range 0 to 0.5"):
        readers.read_table(scores, kind="similarity", text_cols=["a", "b"], label_col="sim", score_range=(0, 0.5))
    unlabelled = write_lines(tmp_path / "u.tsv", [["s"], ["x"]])
    assert readers.read_table(unlabelled, kind="classification", text_cols=["s"], label_col="y",
                              require_label=False).label is None
    with pytest.raises(DataError, match=where(unlabelled, 1) + r": missing column\(s\) y"):
        readers.read_table(unlabelled, kind="classification", text_cols=["s"], label_col="y")


def test_read_table_multiple_choice_columns_and_json_lists(tmp_path):
    tsv = write_lines(tmp_path / "mc.tsv", [["ctx", "q", "c0", "c1", "c2", "y"], ["Ann ran.", "Who?", "Ann", "Bo", "Cy",
                                                                                  "0"]])
    split = readers.read_table(tsv, kind="multiple_choice", text_cols=["ctx", "q"], label_col="y",
                               choice_cols=["c0", "c1", "c2"])
    assert split.segments == (["Ann ran."], ["Who?"]) and split.choices == [["Ann", "Bo", "Cy"]]
    jsonl = tmp_path / "mc.jsonl"
    jsonl.write_text(json.dumps({"ctx": "Bo sat.", "options": ["Ann", "Bo"], "answer": "B"}) + "\n"
                     + json.dumps({"ctx": "Ann sat.", "options": ["Ann", "Bo"], "answer": "A"}) + "\n")
    split = readers.read_table(jsonl, kind="multiple_choice", text_cols=["ctx"], label_col="answer",
                               choice_cols=["options"], label_map={"A": 0, "B": 1})
    assert split.segments == (["Bo sat.", "Ann sat."],) and split.label.tolist() == [1, 0]
    assert split.choices == [["Ann", "Bo"], ["Ann", "Bo"]]
    with jsonl.open("a") as f:
        f.write(json.dumps({"ctx": "Cy sat.", "options": ["Ann", "Bo", "Cy"], "answer": "A"}) + "\n")
    with pytest.raises(DataError, match=where(jsonl, 3) + r": 3 choice\(s\); every example needs the same number"):
        readers.read_table(jsonl, kind="multiple_choice", text_cols=["ctx"], label_col="answer",
                           choice_cols=["options"], label_map={"A": 0, "B": 1})
    with pytest.raises(DataError, match=where(tsv, 2) + r": label 3 is not a choice index \(0 .. 2\)"):
        write_lines(tsv, [["ctx", "q", "c0", "c1", "c2", "y"], ["Ann ran.", "Who?", "Ann", "Bo", "Cy", "3"]])
        readers.read_table(tsv, kind="multiple_choice", text_cols=["ctx", "q"], label_col="y",
                           choice_cols=["c0", "c1", "c2"])


def test_read_table_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"s": "a", "y": 0}\n\n{"s": "b"}\n')
    with pytest.raises(DataError, match=where(path, 3) + r": missing key\(s\) y; the object has s"):
        readers.read_table(path, kind="classification", text_cols=["s"], label_col="y")
    path.write_text('{"s": "a", "y": 0}\n{"s": "b", "y": 1,}\n')
    with pytest.raises(DataError, match=where(path, 2) + ": not JSON"):
        readers.read_table(path, kind="classification", text_cols=["s"], label_col="y")
    path.write_text('{"s": "a", "y": 0}\n{"s": 5, "y": 1}\n')
    with pytest.raises(DataError, match=where(path, 2) + ": s: 5 is not a string"):
        readers.read_table(path, kind="classification", text_cols=["s"], label_col="y")
    path.write_bytes(b'{"s": "a", "y": 0}\n{"s": "\xff", "y": 1}\n')
    with pytest.raises(DataError, match=where(path, 2) + ": not UTF-8"):
        readers.read_table(path, kind="classification", text_cols=["s"], label_col="y")


def test_read_table_flag_mistakes(tmp_path):
    path = write_lines(tmp_path / "c.tsv", [["s", "y"], ["x", "1"]])
    with pytest.raises(DataError, match="--text_cols s: a entailment task takes 2 text column"):
        readers.read_table(path, kind="entailment", text_cols=["s"], label_col="y")
    with pytest.raises(DataError, match="--choice_cols: a multiple_choice task needs them"):
        readers.read_table(path, kind="multiple_choice", text_cols=["s"], label_col="y")
    with pytest.raises(DataError, match="unknown format '.txt'"):
        (tmp_path / "c.txt").write_text("s\ty\n")
        readers.read_table(tmp_path / "c.txt", kind="classification", text_cols=["s"], label_col="y")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope.tsv")) + ": not found"):
        readers.read_table(tmp_path / "nope.tsv", kind="classification", text_cols=["s"], label_col="y")


def test_parse_label_map():
    assert readers.parse_label_map("neg,pos") == {"neg": 0, "pos": 1}
    assert readers.parse_label_map("no=0, yes=1,maybe=1") == {"no": 0, "yes": 1, "maybe": 1}
    for bad in ("a,,b", "a=x", "a,a"):
        with pytest.raises(DataError, match="--label_map"):
            readers.parse_label_map(bad)


# ---------------------------------------------------------------- presets

def test_every_paper_task_has_a_preset_with_the_paper_score():
    expected = {"sst2": ("acc", 91.3), "cola": ("mcc", 45.4), "mrpc": ("f1", 82.3), "qqp": ("f1", 70.3),
                "stsb": ("pearson", 82.0), "mnli": ("acc", 82.1), "mnli_mm": ("acc", 81.4), "qnli": ("acc", 88.1),
                "rte": ("acc", 56.0), "snli": ("acc", 89.9), "scitail": ("acc", 88.3), "race": ("acc", 59.0),
                "race_m": ("acc", 62.9), "race_h": ("acc", 57.4), "story_cloze": ("acc", 86.5)}
    assert {name: p.paper for name, p in presets.PRESETS.items()} == expected
    for name, preset in presets.PRESETS.items():
        assert preset.task.name == name and preset.paper[0] == preset.task.primary
    assert presets.PRESETS["stsb"].task.score_range == (0.0, 5.0)
    assert presets.PRESETS["mrpc"].task.objective == presets.PRESETS["qqp"].task.objective == "bce"
    assert presets.PRESETS["stsb"].task.metrics == ("pearson", "spearman")


def test_table_preset_infers_classes_and_range(tmp_path):
    train = write_lines(tmp_path / "train.tsv", [["s", "y"], ["x", "0"], ["y", "2"]])
    valid = write_lines(tmp_path / "valid.tsv", [["s", "y"], ["z", "1"]])
    test = write_lines(tmp_path / "test.tsv", [["s"], ["w"]])
    preset = presets.table_preset("classification", train=train, valid=valid, test=test, text_cols=["s"],
                                  label_col="y")
    assert preset.task.n_classes == 3 and preset.task.metrics == ("acc",)
    assert set(preset.read(None)) == {"train", "valid", "test"} and preset.read(None)["test"].label is None
    sim = write_lines(tmp_path / "sim.tsv", [["a", "b", "y"], ["x", "y", "1.5"], ["x", "x", "4"]])
    preset = presets.table_preset("similarity", train=sim, valid=sim, text_cols=["a", "b"], label_col="y")
    assert preset.task.objective == "mse" and preset.task.score_range == (1.5, 4.0)
    named = presets.table_preset("entailment", train=write_lines(tmp_path / "e.tsv", [["p", "h", "y"],
                                                                                     ["x", "y", "no"]]),
                                 valid=tmp_path / "e.tsv", text_cols=["p", "h"], label_col="y",
                                 label_map=readers.parse_label_map("yes,no,maybe"))
    assert named.task.n_classes == 3 and named.task.label_names == ("yes", "no", "maybe")

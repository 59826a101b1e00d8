"""Input transformations: each kind's rows written by hand, truncation properties, ROCStories parity."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt1f import rocstories as roc
from gpt1f.finetune import transforms as tf
from gpt1f.finetune.task import Task, TextSplit

WORDS = "a b c d e f g h i j".split()
S, D, C = 20, 21, 22          # _start_, _delimiter_, _classify_ of the fake encoder


class WordEncoder:
    """Word i of WORDS is id i + 1 (0 stays the padding id); the task tokens follow the vocabulary."""
    n_vocab = 20
    special = {"_start_": S, "_delimiter_": D, "_classify_": C}

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return [[WORDS.index(w) + 1 for w in text.split()] for text in texts]


def ids(text):
    return [WORDS.index(w) + 1 for w in text.split()]


def text_split(*segments, choices=None, label=None):
    n = len(segments[0])
    return TextSplit(tuple(list(s) for s in segments), choices, label, [f"x.tsv:{i + 2}" for i in range(n)])


def prepare(task, n_ctx=64, max_len=None, **splits):
    return tf.prepare_data(task, splits, WordEncoder(), n_ctx=n_ctx, max_len=max_len)


CLS = Task("sst2", "classification", n_classes=2)
NLI = Task("snli", "entailment", n_classes=3)
STS = Task("stsb", "similarity", objective="mse")
MC3 = Task("race", "multiple_choice", n_classes=3)


# ---------------------------------------------------------------- each kind by hand

def test_classification_rows():
    data, trimmed = prepare(CLS, train=text_split(["a b c", "d"], label=np.array([1, 0])))
    train = data.splits["train"]
    assert train["tokens"].tolist() == [[S, 1, 2, 3, C], [S, 4, C, 0, 0]]
    assert train["mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert train["tokens"].dtype == np.int64 and train["mask"].dtype == np.float32
    assert train["label"].tolist() == [1, 0] and train["label"].dtype == np.int64
    assert data.n_ctx == 5 and data.n_vocab == 20 and trimmed == {"train": 0}


def test_entailment_rows():
    data, _ = prepare(NLI, train=text_split(["a b", "c"], ["d", "e f g"], label=np.array([2, 0])))
    assert data.splits["train"]["tokens"].tolist() == [[S, 1, 2, D, 4, C, 0], [S, 3, D, 5, 6, 7, C]]


def test_similarity_rows_are_both_orders():
    data, _ = prepare(STS, train=text_split(["a b"], ["c"], label=np.array([3.5])))
    train = data.splits["train"]
    assert train["tokens"].tolist() == [[[S, 1, 2, D, 3, C], [S, 3, D, 1, 2, C]]]
    assert train["label"].dtype == np.float64 and train["label"].tolist() == [3.5]


def test_multiple_choice_rows_with_and_without_a_question():
    split = text_split(["a b", "c"], ["d", ""], choices=[["e", "f g", "h"], ["i", "j", "a"]],
                       label=np.array([0, 2]))
    data, _ = prepare(MC3, train=split)
    assert data.splits["train"]["tokens"].tolist() == [
        [[S, 1, 2, 4, D, 5, C, 0], [S, 1, 2, 4, D, 6, 7, C], [S, 1, 2, 4, D, 8, C, 0]],
        [[S, 3, D, 9, C, 0, 0, 0], [S, 3, D, 10, C, 0, 0, 0], [S, 3, D, 1, C, 0, 0, 0]]]
    assert data.splits["train"]["mask"].sum(-1).tolist() == [[7, 8, 7], [5, 5, 5]]


def test_every_split_is_padded_to_the_longest_row_of_all_and_unlabelled_stays_none():
    data, _ = prepare(CLS, train=text_split(["a"], label=np.array([0])), test=text_split(["a b c d"]))
    assert data.n_ctx == 6
    assert data.splits["train"]["tokens"].tolist() == [[S, 1, C, 0, 0, 0]]
    assert data.splits["test"]["label"] is None


def test_labels_are_copied():
    label = np.array([1, 0])
    data, _ = prepare(CLS, train=text_split(["a", "b"], label=label))
    label[0] = 0
    assert data.splits["train"]["label"].tolist() == [1, 0]


def test_one_encode_call_per_split():
    encoder = WordEncoder()
    split = text_split(["a", "b"], [""] * 2, choices=[["c", "d", "e"]] * 2)
    tf.prepare_data(MC3, {"train": split, "valid": split}, encoder, n_ctx=16)
    assert encoder.calls == 2


def test_encode_split_keeps_fields_and_choices_apart():
    split = text_split(["a", "b c"], ["", "d"], choices=[["e"], ["f", "g h"]])
    encoded = tf.encode_split(split, WordEncoder().encode)
    assert encoded.segments == ([[1], [2, 3]], [[], [4]])
    assert encoded.choices == [[[5]], [[6], [7, 8]]]


# ---------------------------------------------------------------- checks

def test_wrong_number_of_choices_names_the_example():
    split = text_split(["a", "b"], ["", ""], choices=[["c", "d", "e"], ["c", "d"]])
    with pytest.raises(roc.DataError, match=r"x\.tsv:3: 2 choices, task 'race' has 3"):
        prepare(MC3, train=split)


def test_missing_choices_and_wrong_fields_are_named():
    with pytest.raises(roc.DataError, match="'valid'.*needs choices"):
        prepare(MC3, valid=text_split(["a"], [""]))
    with pytest.raises(roc.DataError, match="'train'.*2 text fields, got 1"):
        prepare(NLI, train=text_split(["a"]))
    with pytest.raises(roc.DataError, match=r"\[2, 1\] entries but there are 2"):
        prepare(CLS, train=text_split(["a", "b"], label=np.array([1])))


def test_n_ctx_without_room_for_the_task_tokens_raises():
    with pytest.raises(ValueError, match="budget=-1"):
        prepare(NLI, n_ctx=2, train=text_split(["a"], ["b"]))


# ---------------------------------------------------------------- truncation

@pytest.mark.parametrize("lengths, budget, kept", [
    ([300, 5, 3], 100, [92, 5, 3]),      # RACE-like: the short question and answer stay whole
    ([10, 10], 15, [8, 7]),              # an odd token goes to the first cut segment
    ([4, 30, 30, 2], 20, [4, 7, 7, 2]),
    ([6, 9, 12], 20, [6, 7, 7]),         # 6 <= 20 // 3 stays; 9 > 14 // 2 is cut
    ([3, 4], 7, [3, 4]),                 # fits: nothing cut
    ([5, 5], 0, [0, 0]),
])
def test_water_filling_by_hand(lengths, budget, kept):
    assert tf.truncate(lengths, budget) == kept


def test_max_len_cuts_every_segment_even_when_the_row_fits():
    assert tf.truncate([10, 3, 8], 100, max_len=5) == [5, 3, 5]
    assert tf.truncate([10, 3, 8], 9, max_len=5) == [3, 3, 3]      # still too long: water-filled


lengths_st = st.lists(st.integers(0, 60), min_size=1, max_size=5)


@settings(deadline=None, max_examples=300)
@given(lengths_st, st.integers(0, 120), st.one_of(st.none(), st.integers(0, 40)))
def test_truncation_properties(lengths, budget, max_len):
    kept = tf.truncate(lengths, budget, max_len=max_len)
    capped = lengths if max_len is None else [min(n, max_len) for n in lengths]
    assert len(kept) == len(lengths)
    assert all(0 <= k <= n for k, n in zip(kept, capped))
    assert sum(kept) == min(sum(capped), budget)                  # fits, and wastes no room
    if sum(capped) <= budget:
        assert kept == capped
    share = budget // len(lengths)
    assert all(k == n for k, n in zip(kept, capped) if n <= share)    # short segments stay whole
    cut = [k for k, n in zip(kept, capped) if k < n]
    whole = [k for k, n in zip(kept, capped) if k == n]
    if cut:       # one water level: the cut ones within a token of each other, none below a whole one
        assert max(cut) - min(cut) <= 1 and max(whole, default=0) <= min(cut) + 1


def concatenated_prefixes(piece, group):
    """Whether ``piece`` is a prefix of group[0], then one of group[1], ..."""
    if not group:
        return not piece
    first, rest = group[0], group[1:]
    return any(piece[:k] == first[:k] and concatenated_prefixes(piece[k:], rest)
               for k in range(min(len(first), len(piece)) + 1))


def words(n):
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


text_st = st.integers(0, 40).map(words)


@settings(deadline=None, max_examples=60)
@given(st.sampled_from([CLS, NLI, STS, MC3]), st.lists(st.tuples(text_st, text_st, text_st, text_st), min_size=1,
       max_size=4), st.integers(6, 48), st.booleans())
def test_rows_fit_keep_their_task_tokens_in_order_and_cut_segments_at_the_end(task, texts, n_ctx, tf_rule):
    a, b, c, d = (list(column) for column in zip(*texts))
    split = {"classification": lambda: text_split(a),
             "entailment": lambda: text_split(a, b),
             "similarity": lambda: text_split(a, b),
             "multiple_choice": lambda: text_split(a, b, choices=[list(x) for x in zip(c, d, a)])}[task.kind]()
    max_len = roc.max_len_for(n_ctx) if tf_rule else None
    data, trimmed = prepare(task, n_ctx=n_ctx, max_len=max_len, train=split)
    tokens, mask = data.splits["train"]["tokens"], data.splits["train"]["mask"]
    assert data.n_ctx <= n_ctx and tokens.shape[-1] == data.n_ctx
    rows = tokens.reshape(len(texts), -1, data.n_ctx)
    layout = tf.LAYOUTS[task.kind]
    specials = [WordEncoder.special[slot] for slot in layout if isinstance(slot, str)]
    n_cut = 0
    for i, example in enumerate(rows):
        segments = tf.example_rows(tf.encode_split(split, WordEncoder().encode), task.kind, i)
        example_cut = False
        for r, row in enumerate(example):
            real = row[mask.reshape(rows.shape)[i, r] == 1].tolist()
            assert [t for t in real if t >= S] == specials
            assert real[0] == S and real[-1] == C
            pieces, piece = [], []                  # the segments as kept, split at the task tokens
            for t in real[1:]:
                if t >= S:
                    pieces.append(piece)
                    piece = []
                else:
                    piece.append(t)
            groups = [segments[r][:2], segments[r][2:]] if task.kind == "multiple_choice" else \
                [[segment] for segment in segments[r]]
            for kept, group in zip(pieces, groups):
                assert concatenated_prefixes(kept, group)          # each segment cut at its end
                example_cut |= len(kept) < sum(map(len, group))
        n_cut += example_cut
    assert trimmed == {"train": n_cut}


def test_trimmed_counts_examples_not_rows():
    split = text_split(["a b c d e f", "a", "a b c d"], [""] * 3,
                       choices=[["a", "b", "c"], ["a", "b", "c d e f g h"], ["a", "b", "c"]])
    data, trimmed = prepare(MC3, n_ctx=8, train=split, valid=text_split(["a"], [""], choices=[["a", "b", "c"]]))
    assert trimmed == {"train": 2, "valid": 0}
    assert data.splits["train"]["tokens"][1].tolist() == [[S, 1, D, 1, C, 0, 0, 0], [S, 1, D, 2, C, 0, 0, 0],
                                                          [S, 1, D, 3, 4, 5, 6, C]]


def test_truncated_similarity_rows_are_each_others_swap():
    split = text_split(["a b c d e f g", "a"], ["h i j a b c d", "b c d e f g h i j"])
    data, trimmed = prepare(STS, n_ctx=10, train=split)
    assert trimmed == {"train": 2}
    for pair in data.splits["train"]["tokens"].tolist():
        first, second = (row[1:row.index(C)] for row in pair)
        a, b = first[:first.index(D)], first[first.index(D) + 1:]
        assert second == [*b, D, *a]
        assert len(a) + len(b) == 7


# ---------------------------------------------------------------- ROCStories parity

@pytest.fixture(scope="module")
def synthetic_stories(tmp_path_factory):
    data_dir = roc.write_synthetic(tmp_path_factory.mktemp("roc"), n_rows=40, seed=5)
    return roc.load_rocstories(data_dir, n_valid=12)


@pytest.fixture(scope="module")
def text_encoder():
    from gpt1f.text import TextEncoder
    return TextEncoder(download=False)


@pytest.mark.parametrize("n_ctx", [512, 30, 21])
def test_max_len_mode_reproduces_rocstories_transform(synthetic_stories, text_encoder, n_ctx):
    special = text_encoder.special
    encoded = {name: roc.encode_split(split, text_encoder.encode) for name, split in synthetic_stories.items()}
    fitted = roc.fit_n_ctx(list(encoded.values()), n_ctx)
    splits = {name: TextSplit((s.story, [""] * len(s.story)), [[e1, e2] for e1, e2 in zip(s.ending1, s.ending2)],
                              s.label, [f"{name}:{i}" for i in range(len(s.story))])
              for name, s in synthetic_stories.items()}
    task = Task("rocstories", "multiple_choice", n_classes=2)
    data, trimmed = tf.prepare_data(task, splits, text_encoder, n_ctx=n_ctx, max_len=roc.max_len_for(n_ctx))
    assert data.n_ctx == fitted
    for name, split in encoded.items():
        tokens, mask = roc.transform(split, n_ctx=fitted, max_len=roc.max_len_for(n_ctx), start=special["_start_"],
                                     delimiter=special["_delimiter_"], clf=special["_classify_"])
        np.testing.assert_array_equal(data.splits[name]["tokens"], tokens)
        np.testing.assert_array_equal(data.splits[name]["mask"], mask)
        np.testing.assert_array_equal(data.splits[name]["label"], split.label)
    if n_ctx == 512:
        assert trimmed == {"train": 0, "valid": 0, "test": 0}
    else:
        assert trimmed["train"] > 0

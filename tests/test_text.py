"""gpt1f.text on a tiny vocabulary built here: hand-checked encodings, the API, bad input and files.

The release vocabulary's golden tests are in test_text_golden.py; properties in
test_text_properties.py.
"""
import json
import pickle
import re
import subprocess
import sys

import pytest

from gpt1f.download import git_blob_sha1, write_manifest
from gpt1f.text import ROCSTORIES_SPECIAL, TextEncoder, VocabularyError, special_token_ids
from gpt1f.text import encoder as encoder_module
from gpt1f.text.bpe import bpe, token_pieces
from gpt1f.text.normalize import fix_text, normalize, standardize
from tests.text_reference import Reference

# A vocabulary small enough to check by hand: single characters (each also with </w>), then these
# merges in rank order. Every merge's symbols come from earlier merges, as in a trained vocabulary.
TINY_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-$():;_<>/"
TINY_MERGES = [
    ("t", "h"), ("th", "e</w>"),  # the</w>
    ("a", "n"), ("an", "d</w>"),  # and</w>
    ("c", "a"), ("ca", "t</w>"),  # cat</w>
    ("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o</w>"),  # hello</w>
    ("a", "a"), ("a", "a</w>"), ("aa", "aa</w>"),  # aa, aa</w>, aaaa</w>
    ("d", "o</w>"), ("'", "t</w>"), ("n", "'t</w>"),  # do</w>, n't</w>
    ("0", "0"), ("00", "0</w>"),  # 000</w>
]


def write_vocabulary(directory, characters=TINY_CHARACTERS, merges=TINY_MERGES, manifest=False):
    """The release's two files for a vocabulary: ``<unk>`` = 0, characters, '\\n</w>', merges."""
    pieces = ["<unk>"] + [p for c in characters for p in (c, c + "</w>")] + ["\n</w>"]
    pieces += [a + b for a, b in merges]
    encoder_path = directory / "encoder_bpe_40000.json"
    bpe_path = directory / "vocab_40000.bpe"
    encoder_path.write_text(json.dumps({p: i for i, p in enumerate(pieces)}), encoding="utf-8")
    bpe_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                        encoding="utf-8")
    if manifest:   # under the release's names but not its files: a manifest vouches for them
        write_manifest(directory, {p.name: git_blob_sha1(p) for p in (encoder_path, bpe_path)})
    return encoder_path, bpe_path


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    return write_vocabulary(tmp_path_factory.mktemp("tiny_vocab"))


@pytest.fixture(scope="module")
def tiny(tiny_paths):
    return TextEncoder(*tiny_paths)


@pytest.fixture(scope="module")
def tiny_table(tiny_paths):
    """piece -> id, read from the file the test wrote (not through gpt1f)."""
    return json.loads(tiny_paths[0].read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny_reference(tiny_paths):
    return Reference(*tiny_paths)


# ------------------------------------------------------------------------------------------------
# Hand-checked encodings: text -> the pieces worked out by hand from the merges above.

HAND_CHECKED = [
    # "!" is padded into its own word; 'hat' has no merges (no "h a" or "a t</w>").
    ("The cat and the hat!",
     ["the</w>", "cat</w>", "and</w>", "the</w>", "h", "a", "t</w>", "!</w>"]),
    # h e l l o</w>: (h,e) rank 6, then (l,l) 7, (he,ll) 8, (hell,o</w>) 9.
    ("Hello", ["hello</w>"]),
    # 'hellos': the last symbol is 's</w>', so (hell, o) never forms: h e -> he, l l -> ll, he ll.
    ("hellos", ["hell", "o", "s</w>"]),
    # Every occurrence of the best pair merges, left to right: a a a a</w> -> aa a a</w>
    # -> (a, a</w>) -> aa aa</w> -> aaaa</w>.
    ("aaaa", ["aaaa</w>"]),
    # a a a</w>: (a,a) at 0 -> aa a</w>; (aa, a</w>) is no merge.
    ("aaa", ["aa", "a</w>"]),
    # a a a a a</w> -> aa aa a</w>; no merge joins (aa, aa) or (aa, a</w>).
    ("aaaaa", ["aa", "aa", "a</w>"]),
    # spaCy splits "don't" into "do" + "n't".
    ("don't", ["do</w>", "n't</w>"]),
    # Newlines (and the blank lines and spaces around them) become one "\n</w>".
    ("a\n\n  b", ["a</w>", "\n</w>", "b</w>"]),
    # "," is padded: "1 , 000"; 0 0 0</w> -> 00 0</w> -> 000</w>.
    ("1,000", ["1</w>", ",</w>", "000</w>"]),
    # A run of one padded character is one word, which spaCy then splits.
    ("wow!!", ["w", "o", "w</w>", "!</w>", "!</w>"]),
    # Upper case is lowered after spaCy; "—" becomes "-", a padded word.
    ("THE—CAT", ["the</w>", "-</w>", "cat</w>"]),
    # Unknown characters: 'é' and 'é</w>' are not in this vocabulary -> id 0.
    ("café", ["ca", "f", "é</w>"]),
    ("", []),
    ("  \n\t ", []),
]


@pytest.mark.parametrize("text, pieces", HAND_CHECKED)
def test_hand_checked_encodings(tiny, tiny_table, text, pieces):
    assert tiny.encode_one(text) == [tiny_table.get(p, 0) for p in pieces]


def test_hand_checked_agree_with_reference(tiny, tiny_reference):
    texts = [text for text, _ in HAND_CHECKED]
    assert tiny.encode(texts) == tiny_reference.encode(texts)


def test_unknown_piece_is_zero(tiny):
    assert tiny.encode_one("é") == [0]
    assert tiny.decoder[0] == "<unk>"


def test_bpe_greedy_lowest_rank_first():
    ranks = {("b", "c"): 0, ("a", "b"): 1, ("bc", "d</w>"): 2}
    # (b,c) outranks (a,b), so 'a' stays alone although (a,b) is a merge.
    assert bpe("abcd", ranks) == ["a", "bcd</w>"]
    assert bpe("x", ranks) == ["x</w>"]


def test_token_pieces_split_like_the_original():
    # Symbols are joined with spaces and split again: a symbol holding a space yields ''.
    assert token_pieces(" x", {}) == ["", "", "x</w>"]
    # The newline token spaCy makes ("\n ") reads as the single piece "\n</w>".
    assert token_pieces("\n ", {}) == ["\n</w>"]
    assert token_pieces("\n", {}) == ["\n</w>"]


# ------------------------------------------------------------------------------------------------
# Normalisation


@pytest.mark.parametrize("text, expected", [
    ("a—b–c―d", "a - b - c - d"),
    ("wait…", "wait..."),
    ("don´t", "don't"),
    ("hey!!! you??", "hey !!! you ??"),
    ("a-~b", "a - ~ b"),
    ('say "hi" (now) [x] {y} a|b a/b a\\b *c* d_e f+g h;i j,k',
     'say " hi " ( now ) [ x ] { y } a | b a / b a\\b * c * d _ e f + g h ; i j , k'),
    ("back\\slash \\\\ \\n a\\+b", "back\\slash \\\\ \\n a\\ + b"),   # backslashes stay as they are
    ("  lots   of\tspace  ", "lots of space"),
    ("line\r\n\r\n  next \n", "line \n next"),
    ("\n", ""),
    ("", ""),
])
def test_standardize(text, expected):
    assert standardize(text) == expected


def test_fix_text_repairs_what_ftfy_repairs():
    assert fix_text("don\u00e2\u20ac\u2122t") == "don't"
    assert fix_text("caf\u00c3\u00a9") == "caf\u00e9"
    assert fix_text("&amp;") == "&"  # '&' is kept off the ASCII fast path
    assert fix_text("a\r\nb") == "a\nb"
    assert normalize("\u201cHi,\u201d") == '" Hi , "'


# ------------------------------------------------------------------------------------------------
# Special tokens


def test_default_special_tokens(tiny):
    n = tiny.n_vocab
    assert tiny.special == {"_start_": n, "_delimiter_": n + 1, "_classify_": n + 2}
    assert tuple(tiny.special) == ROCSTORIES_SPECIAL
    assert tiny.n_special == 3


def test_with_special_tokens_extends_the_table(tiny):
    n = tiny.n_vocab
    layout = tiny.with_special_tokens(["_start_", "_delimiter_", "_delimiter2_", "_classify_"])
    assert layout.special == {"_start_": n, "_delimiter_": n + 1, "_delimiter2_": n + 2,
                              "_classify_": n + 3}
    assert tiny.special["_classify_"] == n + 2  # the original is unchanged
    assert layout.encode(["the cat"]) == tiny.encode(["the cat"])
    assert layout.decode([n + 2]) == "_delimiter2_"


def test_special_token_ids_function():
    assert special_token_ids(10, ["a", "b"]) == {"a": 10, "b": 11}
    assert special_token_ids(10, []) == {}
    with pytest.raises(ValueError, match="distinct"):
        special_token_ids(10, ["a", "a"])
    with pytest.raises(ValueError, match="non-empty"):
        special_token_ids(10, [""])


# ------------------------------------------------------------------------------------------------
# Decoding


def test_decode(tiny, tiny_table):
    ids = [tiny_table[p] for p in ["the</w>", "ca", "t</w>", "\n</w>", "!</w>"]]
    assert tiny.decode(ids) == "the cat \n !"
    start, delimiter, classify = tiny.special.values()
    assert (tiny.decode([start, *ids[:1], delimiter, classify])
            == "_start_ the _delimiter_ _classify_")
    assert tiny.decode([]) == ""
    assert tiny.decode([tiny_table["ca"]]) == "ca"  # no end of word: no space


def test_decode_round_trip(tiny):
    ids = tiny.encode_one("The  cat, and\n\nthe hat!!")
    assert tiny.decode(ids) == "the cat , and \n the hat ! !"


def test_decode_rejects_bad_ids(tiny):
    with pytest.raises(ValueError, match=r"ids\[1\] = -1"):
        tiny.decode([1, -1])
    with pytest.raises(ValueError, match=rf"ids\[0\] = {tiny.n_vocab + 3}"):
        tiny.decode([tiny.n_vocab + 3])
    with pytest.raises(TypeError):
        tiny.decode([1.5])


# ------------------------------------------------------------------------------------------------
# Batches, processes, caches


def test_list_equals_items_one_by_one(tiny):
    texts = ["The cat.", "", "hello hello\nhello", "don't", "aaaa aaa", "The cat."]
    assert tiny.encode(texts) == [tiny.encode_one(t) for t in texts]


def test_worker_processes_give_the_same_ids(tiny_paths):
    texts = [f"the cat {i} and {'a' * (i % 7)}!" for i in range(50)]
    serial = TextEncoder(*tiny_paths).encode(texts, workers=1)
    assert TextEncoder(*tiny_paths).encode(texts, workers=2) == serial
    assert TextEncoder(*tiny_paths).encode(texts, workers=3) == serial


def test_auto_workers_by_input_size_and_idle_cpus(tiny, monkeypatch):
    monkeypatch.setattr(encoder_module, "available_cpus", lambda: 4)
    monkeypatch.setattr(encoder_module.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    per_worker = encoder_module.MIN_TEXTS_PER_WORKER
    assert tiny.worker_count(2 * per_worker - 1) == 1
    assert tiny.worker_count(2 * per_worker) == 2
    assert tiny.worker_count(100 * per_worker) == 4
    monkeypatch.setattr(encoder_module.os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert tiny.worker_count(100 * per_worker) == 1  # 4 CPUs, about 3 busy
    monkeypatch.setattr(encoder_module.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert tiny.worker_count(100 * per_worker) == 1


def test_batches_and_cache_limit_do_not_change_ids(tiny_paths, monkeypatch):
    texts = [f"the {'cat' if i % 2 else 'hat'} {i}, and {i * 7}" for i in range(30)]
    expected = TextEncoder(*tiny_paths).encode(texts)
    monkeypatch.setattr(encoder_module, "BATCH_TEXTS", 4)
    monkeypatch.setattr(encoder_module, "MAX_CACHED", 5)
    assert TextEncoder(*tiny_paths).encode(texts) == expected


def test_pickle_round_trip(tiny):
    tiny.encode_one("the cat")  # spaCy loaded and caches filled: neither is pickled
    copy = pickle.loads(pickle.dumps(tiny))
    assert copy.encode(["the cat and", "hello"]) == tiny.encode(["the cat and", "hello"])
    assert copy.special == tiny.special


# ------------------------------------------------------------------------------------------------
# Words tokenized apart must equal spaCy on the whole text


CROSS_WORD = [
    # In each, a special-case pattern spans the space between two words and hides a special case
    # inside the second word: spaCy on the whole text differs from spaCy word by word.
    ":La.' ''S.",
    "this'll' ''S.",
    "( * > :o.O.",
    ">< (( :1pm:",
    "( > _ < ) :3p.m.",
    # And some where nothing happens, for contrast.
    "I 'm here",
    "it 's x: (:",
    "Mr. Smith at 5 p.m. sharp",
]


@pytest.mark.parametrize("text", CROSS_WORD)
def test_cross_word_special_cases_match_whole_text(tiny, tiny_reference, text):
    assert tiny.encode_one(text) == tiny_reference.encode_one(text)


def test_cross_word_examples_really_differ_word_by_word(tiny):
    """The first examples above are ones where tokenizing word by word would be wrong."""
    import spacy

    nlp = spacy.blank("en")
    for text in CROSS_WORD[:5]:
        normalized = normalize(text)
        whole = [t.text for t in nlp(normalized)]
        by_word = [t.text for word in normalized.split(" ") for t in nlp(word)]
        assert whole != by_word, text


def straddling_texts(n: int, seed: int = 0) -> list[str]:
    """Two words where a special-case pattern (the rule's string split by affixes alone) is cut
    across the space, with more special cases after it in the second word."""
    import random

    import spacy
    from spacy.tokenizer import Tokenizer

    tokenizer = spacy.blank("en").tokenizer
    affixes_only = Tokenizer(tokenizer.vocab, rules={}, prefix_search=tokenizer.prefix_search,
                             suffix_search=tokenizer.suffix_search,
                             infix_finditer=tokenizer.infix_finditer)
    rules = sorted(tokenizer.rules)
    patterns = [p for p in ([t.text for t in affixes_only(r)] for r in rules) if len(p) > 1]
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        pattern, more = rng.choice(patterns), rng.choice(patterns)
        cut = rng.randint(1, len(pattern) - 1)
        first = rng.choice(["", rng.choice(rules)]) + "".join(pattern[:cut])
        second = "".join(pattern[cut:] + more) + rng.choice(["", ".", "'", "S.", rng.choice(rules)])
        texts.append(f"{first} {second}")
    return texts


def test_straddling_special_cases_match_whole_text(tiny, tiny_reference):
    import spacy

    texts = straddling_texts(1500)
    nlp = spacy.blank("en")
    differ = [t for t in map(normalize, texts)
              if [x.text for x in nlp(t)] != [x.text for w in t.split(" ") for x in nlp(w)]]
    assert len(differ) >= 5  # the sample does hold texts where word-by-word tokens differ
    assert tiny.encode(texts) == tiny_reference.encode(texts)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_non_string_items_raise_naming_the_index(tiny):
    with pytest.raises(TypeError, match=r"texts\[2\] is a int"):
        tiny.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is a bytes"):
        tiny.encode([b"a"])
    with pytest.raises(TypeError, match=r"texts\[1\] is a NoneType"):
        tiny.encode(["a", None])
    with pytest.raises(TypeError, match="encode_one"):
        tiny.encode("a single string")
    with pytest.raises(TypeError, match="not a str"):
        tiny.encode_one(["a list"])


def corrupt(tmp_path, tiny_paths, *, encoder=None, merges=None):
    """Copies of the tiny files, with either one's text replaced."""
    encoder_text = tiny_paths[0].read_text(encoding="utf-8")
    merges_text = tiny_paths[1].read_text(encoding="utf-8")
    encoder_path, bpe_path = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    encoder_path.write_text(encoder if encoder is not None else encoder_text, encoding="utf-8")
    bpe_path.write_text(merges if merges is not None else merges_text, encoding="utf-8")
    return encoder_path, bpe_path


def test_missing_file_names_it(tmp_path, tiny_paths):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.json"))):
        TextEncoder(tmp_path / "nope.json", tiny_paths[1])
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.bpe"))):
        TextEncoder(tiny_paths[0], tmp_path / "nope.bpe")


@pytest.mark.parametrize("text, message", [
    (None, "not valid JSON"),  # truncated: first half of the real file
    ("this is not json", "not valid JSON"),
    ("[1, 2, 3]", "JSON object"),
    ('{"a": 0, "b": 2}', "ids must be the integers 0 .. 1"),
    ('{"a": 0, "b": "1"}', "ids must be"),
])
def test_bad_encoder_file_names_it(tmp_path, tiny_paths, text, message):
    if text is None:
        full = tiny_paths[0].read_text(encoding="utf-8")
        text = full[:len(full) // 2]
    encoder_path, bpe_path = corrupt(tmp_path, tiny_paths, encoder=text)
    with pytest.raises(VocabularyError, match=message) as error:
        TextEncoder(encoder_path, bpe_path)
    assert str(encoder_path) in str(error.value)


def merges_text(merges, header="#version: 0.2\n"):
    return header + "".join(f"{a} {b}\n" for a, b in merges)


@pytest.mark.parametrize("text, message", [
    (merges_text(TINY_MERGES)[:-3], "no newline"),  # cut inside the last line
    (merges_text(TINY_MERGES[:-2]), "truncated"),  # cut at a line end: 2 merged pieces orphaned
    (merges_text(TINY_MERGES, header=""), "#version"),
    (merges_text(TINY_MERGES) + "a b c\n", "line 20: expected two symbols"),
    (merges_text(TINY_MERGES + [("x", "y")]), "line 20: merge 'x' \\+ 'y' uses \\['xy'\\] absent"),
    (merges_text(TINY_MERGES + [("q", "ü")]), "absent from"),
])
def test_bad_merges_file_names_it(tmp_path, tiny_paths, text, message):
    encoder_path, bpe_path = corrupt(tmp_path, tiny_paths, merges=text)
    with pytest.raises(VocabularyError, match=message) as error:
        TextEncoder(encoder_path, bpe_path)
    assert str(bpe_path) in str(error.value)


def test_not_utf8_names_the_file(tmp_path, tiny_paths):
    encoder_path, bpe_path = corrupt(tmp_path, tiny_paths)
    bpe_path.write_bytes(b"#version: 0.2\n\xff\xfe x\n")
    with pytest.raises(VocabularyError, match="not UTF-8") as error:
        TextEncoder(encoder_path, bpe_path)
    assert str(bpe_path) in str(error.value)


def test_failed_load_leaves_nothing_behind(tmp_path, tiny_paths, monkeypatch):
    """A broken file in the weights folder fails; once repaired, the next load reads it afresh."""
    encoder_path, bpe_path = write_vocabulary(tmp_path, manifest=True)
    good = bpe_path.read_text(encoding="utf-8")
    bpe_path.write_text(good[:-5], encoding="utf-8")
    with pytest.raises(VocabularyError, match=re.escape(str(bpe_path))):
        TextEncoder(weights_dir=tmp_path, download=False)
    bpe_path.write_text(good, encoding="utf-8")
    assert TextEncoder(weights_dir=tmp_path, download=False).encode_one("the cat") == TextEncoder(
        *tiny_paths).encode_one("the cat")


# ------------------------------------------------------------------------------------------------
# Default paths


def test_the_default_is_the_packaged_release_vocabulary_whatever_gpt1f_weights_says(
        tmp_path, monkeypatch):
    write_vocabulary(tmp_path)                       # a stand-in where $GPT1F_WEIGHTS points
    monkeypatch.setenv("GPT1F_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("GPT1F_BASE_URL", "http://127.0.0.1:9/")   # nothing is downloaded
    encoder = TextEncoder(download=False)
    assert encoder.n_vocab == 40478 and encoder.special["_classify_"] == 40480


def test_weights_dir_overrides_the_packaged_vocabulary(tmp_path, tiny_paths):
    write_vocabulary(tmp_path, manifest=True)
    encoder = TextEncoder(weights_dir=tmp_path, download=False)
    assert encoder.n_vocab == TextEncoder(*tiny_paths).n_vocab != 40478
    assert encoder.encode_one("hello, the cat") == TextEncoder(*tiny_paths).encode_one("hello, the cat")


def test_explicit_paths_override_the_packaged_vocabulary(tiny_paths):
    assert TextEncoder(*tiny_paths).n_vocab != TextEncoder().n_vocab


def test_a_weights_dir_without_the_files_offline_raises_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder_bpe_40000.json") as error:
        TextEncoder(weights_dir=tmp_path, download=False)
    assert str(tmp_path) in str(error.value)


def test_import_does_not_load_spacy_or_ftfy():
    code = ("import sys, gpt1f, gpt1f.text; "
            "print(sorted(m for m in ('spacy', 'ftfy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.stdout.strip() == "[]"

"""Properties of gpt1f.text over generated text, on the tiny vocabulary and on the release's."""
import re
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpt1f import release_data
from gpt1f.text import TextEncoder
from gpt1f.text.normalize import FTFY_FIXED_POINT, fix_text, standardize
from tests import text_reference
from tests.test_text import write_vocabulary
from tests.text_reference import Reference

FIXTURE_OK = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ENCODERS: dict = {}  # vocabulary kind -> (TextEncoder, Reference), built once per session


@pytest.fixture(params=["tiny", "release"])
def pair(request, tmp_path_factory):
    """(TextEncoder, Reference) on the tiny vocabulary, or on the release's (the packaged copy)."""
    kind = request.param
    if kind not in ENCODERS:
        if kind == "tiny":
            paths = write_vocabulary(tmp_path_factory.mktemp("tiny_vocab"))
        else:
            paths = release_data.path("encoder_bpe_40000.json"), release_data.path("vocab_40000.bpe")
        ENCODERS[kind] = TextEncoder(*paths), Reference(*paths)
    return ENCODERS[kind]


# Any code point, lone surrogates included; and text made of the pieces that make tokenizing hard.
ANY_CHARACTER = st.characters(exclude_categories=())
TRICKY = st.sampled_from([
    " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u2028", "\x85", "\xa0", "\u200b", "\ufeff", "-", "--",
    "\u2014", "\u2013", "\u2026", "\u00b4", "'", "\u2019", '"', "\u201c", "!", "?!", "...", ",",
    ";", ":", "(", ")", "[", "_", "*", "/", "\\", "|", "~", "+", "&amp;", "<", "\x1b[0m", "$",
    "1,000", "3.5", "can't", "I'm", "'s", "n't", "U.S.", "p.m.", ":)", "(:", "o.O", "Mr.",
    "caf\u00e9", "\u00c3\u00a9", "\U0001f600", "\u65e5\u672c", "THE", "the", "cat", "aaaa",
])
TEXT = st.one_of(st.text(ANY_CHARACTER, max_size=40),
                 st.lists(st.one_of(TRICKY, st.text(ANY_CHARACTER, max_size=3)), max_size=12)
                 .map("".join))


@FIXTURE_OK
@given(text=TEXT)
def test_never_raises_and_ids_in_range(pair, text):
    encoder, _ = pair
    ids = encoder.encode_one(text)
    assert all(type(i) is int and 0 <= i < encoder.n_vocab for i in ids)


@FIXTURE_OK
@given(text=TEXT)
def test_equals_the_plain_reference(pair, text):
    encoder, reference = pair
    assert encoder.encode_one(text) == reference.encode_one(text)


@FIXTURE_OK
@given(texts=st.lists(TEXT, max_size=8).flatmap(
    lambda texts: st.permutations(texts + texts[:2])))
def test_list_equals_items(pair, texts):
    encoder, _ = pair
    assert encoder.encode(texts) == [encoder.encode_one(text) for text in texts]


def known_characters(encoder) -> str:
    """Characters whose lower case is a piece both inside and at the end of a word."""
    return "".join(sorted(c for c in (p for p in encoder.encoder if len(p) == 1)
                          if len(c.lower()) == 1 and c.lower() in encoder.encoder
                          and c.lower() + "</w>" in encoder.encoder))


@FIXTURE_OK
@given(data=st.data())
def test_decode_inverts_encode(pair, data):
    """decode(encode(s)) is the normalised text's spaCy tokens, lower-cased, joined by spaces
    (the newline token "\\n " read as "\\n"), whenever every piece is in the vocabulary."""
    encoder, reference = pair
    alphabet = known_characters(encoder) + " \n\t"
    text = data.draw(st.lists(st.one_of(st.text(alphabet, max_size=6), TRICKY), max_size=8)
                     .map("".join))
    ids = encoder.encode_one(text)
    assume(0 not in ids)
    tokens = ["\n" if token == "\n " else token.lower() for token in reference.tokens(text)]
    assert encoder.decode(ids) == " ".join(tokens)


# ------------------------------------------------------------------------------------------------
# The normalisation's shortcuts against their plain forms (no vocabulary needed)

ASCII_ISH = st.text(st.one_of(st.characters(max_codepoint=127), st.sampled_from("&<\r\x1b\x85é")),
                    max_size=30)


@settings(deadline=None)
@given(text=ASCII_ISH)
def test_ftfy_fast_path_is_ftfy(text):
    import ftfy

    assert fix_text(text) == ftfy.fix_text(text)
    if FTFY_FIXED_POINT.fullmatch(text):
        assert ftfy.fix_text(text) == text


@settings(deadline=None)
@given(text=TEXT)
def test_standardize_equals_plain_version(text):
    assert standardize(text) == text_reference.standardize(text)


def test_regex_whitespace_is_str_isspace():
    """standardize's shortcut (str.split) and the original's regex (\\s) agree on whitespace."""
    space = re.compile(r"\s")
    assert all(bool(space.match(chr(c))) == chr(c).isspace() for c in range(sys.maxunicode + 1))

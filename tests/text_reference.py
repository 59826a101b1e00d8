"""The original text pipeline written out plainly, to check ``gpt1f.text`` against.

Deliberately independent of gpt1f's code: the standardisation walks characters instead of using
regular expressions, spaCy sees each whole text (``nlp(text)``, the released pipeline's call), and
BPE applies the merges in rank order, each to every occurrence. That last form equals greedy
lowest-rank-first merging when every merge comes after the merges that make its two symbols,
which ``sweep_is_greedy`` checks for a vocabulary.
"""
from __future__ import annotations

import json
from pathlib import Path

END = "</w>"
# A run of one of these becomes a word of its own. Not the backslash: the original's pattern is a
# plain string literal, in which the source text \\+ reads as \+, one '+', not a backslash run.
PADDED = set('-~!";?+,)(/*[]}{|_')
REPLACED = (("\u2014", "-"), ("\u2013", "-"), ("\u2015", "-"), ("\u2026", "..."), ("\u00b4", "'"))


def pad_punctuation(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        j = i + 1
        if text[i] in PADDED:
            while j < len(text) and text[j] == text[i]:
                j += 1
            out.append(" " + text[i:j] + " ")
        else:
            out.append(text[i])
        i = j
    return "".join(out)


def squeeze_whitespace(text: str) -> str:
    """Each run of whitespace -> " \\n " if it holds a newline, else " "; then strip."""
    out, i = [], 0
    while i < len(text):
        j = i + 1
        if text[i].isspace():
            while j < len(text) and text[j].isspace():
                j += 1
            out.append(" \n " if "\n" in text[i:j] else " ")
        else:
            out.append(text[i])
        i = j
    return "".join(out).strip()


def standardize(text: str) -> str:
    for old, new in REPLACED:
        text = text.replace(old, new)
    return squeeze_whitespace(pad_punctuation(text))


def read_merges(bpe_path) -> list[tuple[str, str]]:
    lines = Path(bpe_path).read_text(encoding="utf-8").split("\n")
    return [tuple(line.split(" ")) for line in lines[1:-1]]


def sweep_is_greedy(merges: list[tuple[str, str]]) -> bool:
    """True if every merge's two symbols are made (if at all) by merges of lower rank."""
    made_at = {a + b: rank for rank, (a, b) in enumerate(merges)}
    return all(made_at.get(a, -1) < rank and made_at.get(b, -1) < rank
               for rank, (a, b) in enumerate(merges))


def apply_merge(word: list[str], a: str, b: str) -> list[str]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def bpe_sweep(token: str, merges: list[tuple[str, str]]) -> str:
    """Space-joined symbols after applying every merge, in rank order, wherever it fits."""
    word = list(token[:-1]) + [token[-1] + END]
    for a, b in merges:
        if len(word) == 1:
            break
        if a in word and b in word:
            word = apply_merge(word, a, b)
    joined = " ".join(word)
    return "\n" + END if joined == "\n  " + END else joined


class Reference:
    """``encode(texts)`` the way the released code does it, one text at a time."""

    def __init__(self, encoder_path, bpe_path):
        import spacy

        self.encoder = json.loads(Path(encoder_path).read_text(encoding="utf-8"))
        self.merges = read_merges(bpe_path)
        assert sweep_is_greedy(self.merges), "rank-order sweep would differ from greedy BPE"
        self.nlp = spacy.blank("en")
        self.memo: dict[str, str] = {}  # token -> bpe_sweep(token): saves time, not a shortcut

    def bpe(self, token: str) -> str:
        if token not in self.memo:
            self.memo[token] = bpe_sweep(token, self.merges)
        return self.memo[token]

    def normalize(self, text: str) -> str:
        import ftfy

        return standardize(ftfy.fix_text(text))

    def tokens(self, text: str) -> list[str]:
        return [token.text for token in self.nlp(self.normalize(text))]

    def encode_one(self, text: str) -> list[int]:
        return [self.encoder.get(piece, 0) for token in self.tokens(text)
                for piece in self.bpe(token.lower()).split(" ")]

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [self.encode_one(text) for text in texts]

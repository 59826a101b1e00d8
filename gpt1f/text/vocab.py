"""The BPE vocabulary: ``encoder_bpe_40000.json`` (piece -> id) and ``vocab_40000.bpe`` (merges).

Loading checks both files against each other, so a truncated or mismatched pair fails here,
naming the file, instead of quietly encoding unknown pieces as id 0 later.
"""
from __future__ import annotations

import json
import pathlib
from typing import NamedTuple

from .bpe import END, Ranks

ENCODER_NAME = "encoder_bpe_40000.json"
MERGES_NAME = "vocab_40000.bpe"


class VocabularyError(ValueError):
    """A vocabulary file is malformed, truncated, or disagrees with its partner file."""


class Vocabulary(NamedTuple):
    encoder: dict[str, int]  # piece ('the</w>', 'th') -> id
    ranks: Ranks  # merge pair -> rank, 0 merged first


def release_path(name: str, weights_dir=None, download: bool = True) -> pathlib.Path:
    """The release file ``name``: the copy shipped in ``gpt1f/release_data/``, or, given a
    ``weights_dir``, the one in that folder (downloaded and SHA-1-verified there if missing)."""
    if weights_dir is None:
        from .. import release_data

        return release_data.path(name)
    from ..download import fetch

    return fetch([name], pathlib.Path(weights_dir), download=download, verify=False) / name


def read_text(path: pathlib.Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"vocabulary file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise VocabularyError(f"{path} is not UTF-8 text ({e})") from None


def load_encoder(path: pathlib.Path) -> dict[str, int]:
    """The piece -> id table; ids must be exactly 0 .. n-1."""
    try:
        encoder = json.loads(read_text(path), object_pairs_hook=lambda pairs: _unique(pairs, path))
    except json.JSONDecodeError as e:
        raise VocabularyError(f"{path} is not valid JSON (truncated?): {e}") from None
    if not isinstance(encoder, dict) or not encoder:
        raise VocabularyError(f"{path} must hold a non-empty JSON object of piece -> id")
    ids = encoder.values()
    pieces_of: dict[int, list[str]] = {}
    for piece, i in encoder.items():
        if type(i) is int:
            pieces_of.setdefault(i, []).append(piece)
    shared = next(((i, pieces) for i, pieces in pieces_of.items() if len(pieces) > 1), None)
    if shared:
        raise VocabularyError(f"{path}: id {shared[0]} is given to {len(shared[1])} pieces "
                              f"({', '.join(map(repr, shared[1][:5]))}); each id names one piece")
    if not all(type(i) is int for i in ids) or sorted(ids) != list(range(len(encoder))):
        raise VocabularyError(f"{path}: ids must be the integers 0 .. {len(encoder) - 1}, "
                              "each once")
    return encoder


def _unique(pairs: list[tuple[str, object]], path: pathlib.Path) -> dict:
    """A JSON object's pairs as a dict; a key given twice is an error (json keeps the last)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise VocabularyError(f"{path}: the piece {key!r} appears twice (ids {out[key]!r} and "
                                  f"{value!r})")
        out[key] = value
    return out


def parse_merges(text: str, path: pathlib.Path) -> list[tuple[str, str]]:
    """Merge pairs in rank order: a ``#version`` header, then one ``left right`` pair a line."""
    lines = text.split("\n")
    if not lines[0].startswith("#version"):
        raise VocabularyError(f"{path}: first line should be a '#version: ...' header, "
                              f"got {lines[0][:40]!r}")
    if lines[-1] != "":
        raise VocabularyError(f"{path}: last line {lines[-1][:40]!r} has no newline (truncated?)")
    merges, seen = [], {}
    # The original splits a line on any whitespace (str.split()); one space is stricter and, as
    # no line of the release holds other whitespace, gives the same pairs for the release.
    for number, line in enumerate(lines[1:-1], start=2):
        pair = tuple(line.split(" "))
        if len(pair) != 2 or not all(pair):
            raise VocabularyError(f"{path}, line {number}: expected two symbols separated by one "
                                  f"space, got {line[:40]!r}")
        if pair in seen:   # a repeated pair would take the later rank and change tokenization
            raise VocabularyError(f"{path}, line {number}: the merge {line[:40]!r} repeats "
                                  f"line {seen[pair]}")
        seen[pair] = number
        merges.append(pair)
    return merges


def check_merges(merges: list[tuple[str, str]], encoder: dict[str, int],
                 merges_path: pathlib.Path, encoder_path: pathlib.Path) -> None:
    """Every merge's inputs and output must be pieces, and every multi-character piece
    (other than id 0, the unknown piece) must come out of some merge."""
    for number, (left, right) in enumerate(merges, start=2):
        absent = [s for s in (left, right, left + right) if s not in encoder]
        if absent:
            raise VocabularyError(f"{merges_path}, line {number}: merge {left!r} + {right!r} uses "
                                  f"{absent} absent from {encoder_path} (mismatched files?)")
    produced = {left + right for left, right in merges}
    orphans = [piece for piece, i in encoder.items()
               if i != 0 and len(piece.removesuffix(END)) > 1 and piece not in produced]
    if orphans:
        raise VocabularyError(
            f"{merges_path} has {len(merges)} merges, but {len(orphans)} pieces of {encoder_path} "
            f"come out of none of them (e.g. {orphans[:3]}): is {merges_path.name} truncated?")


def load_vocabulary(encoder_path=None, bpe_path=None, *, weights_dir=None,
                    download: bool = True) -> Vocabulary:
    """Read and cross-check the two files; a None path means the release file (see release_path).
    Release files taken from a ``weights_dir`` have their git-blob SHA-1s verified too
    (``gpt1f.download.verify_files``); the packaged copies are checked by the test suite."""
    defaults = [p for p, given in ((ENCODER_NAME, encoder_path), (MERGES_NAME, bpe_path))
                if given is None and weights_dir is not None]
    if encoder_path is None:
        encoder_path = release_path(ENCODER_NAME, weights_dir, download)
    if bpe_path is None:
        bpe_path = release_path(MERGES_NAME, weights_dir, download)
    encoder_path, bpe_path = pathlib.Path(encoder_path), pathlib.Path(bpe_path)
    encoder = load_encoder(encoder_path)
    merges = parse_merges(read_text(bpe_path), bpe_path)
    check_merges(merges, encoder, bpe_path, encoder_path)
    if defaults:   # the release's files by name: their SHA-1s are known (checked once, stamped)
        from ..download import verify_files
        verify_files(defaults, (encoder_path if ENCODER_NAME in defaults else bpe_path).parent)
    return Vocabulary(encoder, {pair: rank for rank, pair in enumerate(merges)})

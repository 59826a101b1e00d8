"""Byte-pair encoding of one token: greedy merges by rank, ``</w>`` marking the end of a word."""
from __future__ import annotations

import math

END = "</w>"
NEWLINE_PIECES = "\n  " + END  # what a spaCy newline token ("\n ") becomes; read as "\n</w>"
Ranks = dict[tuple[str, str], int]  # merge pair -> rank (line number in the merges file)


def initial_symbols(token: str) -> list[str]:
    """``'cat'`` -> ``['c', 'a', 't</w>']``: one symbol per character, the last marked."""
    return [*token[:-1], token[-1] + END]


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Merge every occurrence of ``pair``, left to right, without overlaps."""
    first, second = pair
    merged, i = [], 0
    while i < len(symbols):
        if symbols[i] == first and i + 1 < len(symbols) and symbols[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def pair_ranks(symbols: list[str], ranks: Ranks) -> list[float]:
    """Rank of each adjacent pair, ``inf`` for pairs that never merge: [len(symbols) - 1]."""
    return [ranks.get(pair, math.inf) for pair in zip(symbols, symbols[1:])]


def bpe(token: str, ranks: Ranks) -> list[str]:
    """The token's symbols after repeatedly merging the adjacent pair of lowest rank."""
    symbols = initial_symbols(token)
    pair_rank = pair_ranks(symbols, ranks)
    while pair_rank and (best := min(pair_rank)) < math.inf:
        i = pair_rank.index(best)
        if pair_rank.count(best) > 1:  # ranks are unique, so the pair occurs more than once
            symbols = merge_pair(symbols, (symbols[i], symbols[i + 1]))
            pair_rank = pair_ranks(symbols, ranks)
            continue
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]  # only the pairs beside it change
        del pair_rank[i]
        if i > 0:
            pair_rank[i - 1] = ranks.get((symbols[i - 1], symbols[i]), math.inf)
        if i < len(pair_rank):
            pair_rank[i] = ranks.get((symbols[i], symbols[i + 1]), math.inf)
    return symbols


def token_pieces(token: str, ranks: Ranks) -> list[str]:
    """The vocabulary pieces a (lower-cased, non-empty) token encodes to.

    As in the original, the symbols are joined with spaces and split on spaces again, so a
    symbol holding a space yields extra (unknown) pieces, and the newline token ``"\\n "``,
    whose symbols join to ``"\\n  </w>"``, is read as the single piece ``"\\n</w>"``.
    """
    joined = " ".join(bpe(token, ranks))
    if joined == NEWLINE_PIECES:
        return ["\n" + END]
    return joined.split(" ")

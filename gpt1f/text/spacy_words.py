"""spaCy's English tokenizer, applied once per distinct word instead of once per text.

A normalised text is words separated by single spaces (see ``normalize``). spaCy splits text on
whitespace and tokenizes each word on its own (prefixes, suffixes, infixes, special cases), so a
text's tokens are its words' tokens, with one exception. After that pass spaCy looks for its
special-case strings once more, as token sequences (the "pattern" of ``"(:"`` is ``["(", ":"]``),
anywhere in the text, and keeps the longest non-overlapping matches. A match across a space is
never applied, but it can win over an overlapping match inside a word: in ``"this'll' ''S."``
the pattern ``["'", "'"]`` of ``"''"``, matched across the space, hides the ``"''"`` that starts
``"''S."``, so spaCy gives ``[..., "'", "'", "'", "S."]`` where the word alone gives
``["''", "S."]``.

Such a match needs the last token of one word and the first of the next to stand side by side in
a pattern. ``CrossWordCheck`` knows every such neighbouring pair and tells, from the two words'
strings alone (a token ending a word is one of its suffixes, one starting a word one of its
prefixes), whether it might happen; the encoder then tokenizes that text whole with spaCy.
"""
from __future__ import annotations

NEWLINE_WORD = "\n"  # normalisation turns every newline into the word "\n"
NEWLINE_TOKEN = "\n "  # ... which spaCy, reading " \n ", makes a token of with the space after it
SEPARATOR = " \n "  # between words tokenized together; no pattern holds its token "\n "


def blank_english():
    """spaCy's English tokenizer, rules only: ``spacy.blank('en').tokenizer`` (no model download).

    Its vocabulary computes no lexical attributes (shape, like_num, ...) for new words: tokenizing
    never reads them, and computing them is much of spaCy's time on words it has not seen.
    """
    import spacy

    tokenizer = spacy.blank("en").tokenizer
    tokenizer.vocab.lex_attr_getters = {}
    return tokenizer


def pattern_neighbours(tokenizer) -> frozenset[tuple[str, str]] | None:
    """Neighbouring tokens in the patterns of all special cases: each special-case string split
    by prefixes, suffixes and infixes only, as spaCy builds its matcher. A string without affixes
    is one token and adds nothing. None if a special case mixes whitespace with other characters
    (not so in spaCy's English rules): that could match across a space by itself."""
    from spacy.tokenizer import Tokenizer

    if any(len(s) > 1 and any(c.isspace() for c in s) for s in tokenizer.rules):
        return None
    affixes_only = Tokenizer(tokenizer.vocab, rules={}, prefix_search=tokenizer.prefix_search,
                             suffix_search=tokenizer.suffix_search,
                             infix_finditer=tokenizer.infix_finditer,
                             token_match=tokenizer.token_match, url_match=tokenizer.url_match)
    pairs = set()
    for string in tokenizer.rules:
        tokens = [token.text for token in affixes_only(string)]
        pairs.update(zip(tokens, tokens[1:]))
    return frozenset(pairs)


class CrossWordCheck:
    """Could a special-case match run across the space between two words? (see module docstring)

    A word ``a`` followed by ``b`` is at risk when ``follow(a)`` and ``starts(b)`` share a token.
    """

    def __init__(self, tokenizer):
        pairs = pattern_neighbours(tokenizer)
        self.always = pairs is None  # then every text of two or more words is at risk
        self.followers: dict[str, frozenset[str]] = {}  # pattern token -> tokens after it
        for left, right in pairs or ():
            self.followers[left] = self.followers.get(left, frozenset()) | {right}
        self.rights = frozenset().union(*self.followers.values())
        self.longest = max(map(len, [*self.followers, *self.rights]), default=0)

    def follow(self, word: str) -> frozenset[str] | tuple[()]:
        """Tokens that would complete a pattern pair after some suffix of ``word``."""
        found = ()
        for k in range(1, min(len(word), self.longest) + 1):
            tokens = self.followers.get(word[-k:])
            if tokens:
                found = found | tokens if found else tokens
        return found

    def starts(self, word: str) -> tuple[str, ...]:
        """Prefixes of ``word`` that end a pattern pair."""
        return tuple([word[:k] for k in range(1, min(len(word), self.longest) + 1)
                      if word[:k] in self.rights])


def tokenize_words(tokenizer, words: list[str]) -> list[list[str]]:
    """The token texts of each word (non-empty, no whitespace), from a single spaCy call."""
    doc = tokenizer(SEPARATOR.join(words))
    tokens_of, current = [], []
    for token in doc:
        if token.text == NEWLINE_TOKEN:
            tokens_of.append(current)
            current = []
        else:
            current.append(token.text)
    tokens_of.append(current)
    if len(tokens_of) != len(words) or not all(tokens_of):
        raise AssertionError(f"spaCy split {len(words)} words into {len(tokens_of)} groups")
    return tokens_of

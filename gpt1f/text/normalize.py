"""Text clean-up before tokenization: ftfy's repairs, then the original's standardisation."""
from __future__ import annotations

import re

# Characters the standardisation rewrites before anything else, in the original's order.
REPLACEMENTS = (("\u2014", "-"), ("\u2013", "-"), ("\u2015", "-"), ("\u2026", "..."),
                ("\u00b4", "'"))

# A run of one of these characters ("---", "!!") becomes its own space-separated unit. Written as
# one character class and a back-reference: the same runs as the original's 18-way alternation,
# matched several times faster. The original writes that alternation in a plain (not raw) string
# literal, where the source text `\\+` is the two characters `\+`: that alternative matches a
# single "+" (already taken by the `\++` before it), so backslashes are never padded and are
# missing here. Checked in the original's other literals: its `\?`, `\+`, `\)`, `\(`, `\/`,
# `\*`, `\[`, `\]`, `\|`, `\s` and `\S` are unknown string escapes, kept as written, so the regex
# sees them as intended; its `\n` in '\s*\n\s*', ' \n ' and '[^\S\n]+' is a real newline, which the
# regex matches as itself; the replacement r' \1 ' is raw. The BPE's '\n  </w>' is a newline and
# two spaces (gpt1f.text.bpe.NEWLINE_PIECES).
PUNCTUATION_RUN = re.compile(r"""([-~!";?+,)(/*\[\]}{|_])\1*""")
NEWLINE_WITH_SPACE = re.compile(r"\s*\n\s*")
OTHER_WHITESPACE = re.compile(r"[^\S\n]+")

# Text made only of these characters is a fixed point of ftfy.fix_text (default settings):
# printable ASCII except '&' (HTML entities), plus tab and newline. Every ftfy fixer looks for
# '&', '\r', ESC, other control characters, or non-ASCII characters.
FTFY_FIXED_POINT = re.compile(r"[\t\n\x20-\x25\x27-\x7e]*")


def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)``, skipping ftfy for plain ASCII text it would return unchanged."""
    if FTFY_FIXED_POINT.fullmatch(text):
        return text
    import ftfy

    return ftfy.fix_text(text)


def pad(match: re.Match) -> str:
    return f" {match.group()} "


def standardize(text: str) -> str:
    """The original release's standardisation: unify dashes, ellipses and accents; space out
    punctuation runs; ``' \\n '`` around every newline; single spaces elsewhere; strip."""
    if not text.isascii():
        for old, new in REPLACEMENTS:
            text = text.replace(old, new)
    text = PUNCTUATION_RUN.sub(pad, text)
    if "\n" not in text:  # str.split() splits on the characters regex \s matches
        return " ".join(text.split())
    text = NEWLINE_WITH_SPACE.sub(" \n ", text)
    return OTHER_WHITESPACE.sub(" ", text).strip()


def normalize(text: str) -> str:
    """What spaCy is given: ``standardize(ftfy.fix_text(text))``.

    The result is words separated by single spaces, a newline being the word ``"\\n"``.
    """
    return standardize(fix_text(text))

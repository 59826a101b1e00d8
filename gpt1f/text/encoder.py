"""TextEncoder: text -> GPT-1 token ids, exactly as the original release encodes it, fast.

The original encodes each text on its own: ``ftfy.fix_text``, ``standardize``, spaCy, then BPE of
every lower-cased token. This class gives the same ids and spends its time on distinct words
rather than on texts: each text is normalised and split into words; words not seen before are
tokenized by spaCy together in one call per batch and BPE'd once; a text's ids are then its words'
cached ids (see ``spacy_words`` for why that equals spaCy on the whole text, and when it falls
back to exactly that).

Large inputs are split over forked worker processes. With ``workers=None`` that happens from
``2 * MIN_TEXTS_PER_WORKER`` = 40,000 texts on, one process per 20,000 texts, up to the CPUs that
are idle (usable CPUs less the one-minute load average); below that, or on a busy machine, or
without ``fork``, encoding stays in this process. Why so late: a process costs its start-up, the
transfer of its results, and its own pass over the common words; on a 2-CPU machine already
running other jobs, two processes beat one by little or not at all (``benchmarks/bench_text.py``
times a ROCStories-sized input both ways; results in ``benchmarks/results/``).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import multiprocessing
import operator
import os
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple, Sequence

from .bpe import END, token_pieces
from .normalize import normalize
from .spacy_words import NEWLINE_TOKEN, NEWLINE_WORD, CrossWordCheck, blank_english, tokenize_words
from .vocab import load_vocabulary

ROCSTORIES_SPECIAL = ("_start_", "_delimiter_", "_classify_")
MIN_TEXTS_PER_WORKER = 20_000  # texts a worker process must have to pay for itself
BATCH_TEXTS = 4096  # texts normalised and tokenized per spaCy call
MAX_CACHED = 1 << 20  # cache entries (words, tokens) kept before a cache is emptied


def special_token_ids(n_vocab: int, names: Sequence[str]) -> dict[str, int]:
    """Task tokens numbered after the vocabulary: ``{names[0]: n_vocab, names[1]: n_vocab + 1}``."""
    names = list(names)
    if not all(isinstance(name, str) and name for name in names) or len(set(names)) != len(names):
        raise ValueError(f"special tokens must be distinct non-empty strings, got {names!r}")
    return {name: n_vocab + i for i, name in enumerate(names)}


def check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("encode takes a list of strings, not one string: use encode_one(text)")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
    return texts


@contextlib.contextmanager
def gc_paused():
    """No cyclic garbage collection inside: encoding makes many small long-lived objects (cache
    entries), which would set off full collections over every object in the process (torch's
    included) for no garbage; reference counting still frees everything else as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def idle_cpus() -> int:
    """Usable CPUs less the one-minute load average, at least 1."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, round(available_cpus() - load))


class Word(NamedTuple):
    ids: tuple[int, ...]
    follow: frozenset[str] | tuple[()]  # see CrossWordCheck
    starts: tuple[str, ...]


class Memo:
    """What encoding builds as it goes: the spaCy tokenizer (made on first use) and caches of
    word -> Word and token -> ids. Shared by the copies ``with_special_tokens`` makes."""

    def __init__(self):
        self.tokenizer = None
        self.cross_word = None  # CrossWordCheck(tokenizer)
        self.words: dict[str, Word] = {}
        self.tokens: dict[str, tuple[int, ...]] = {}

    def load_tokenizer(self):
        if self.tokenizer is None:
            tokenizer = blank_english()
            self.cross_word = CrossWordCheck(tokenizer)
            self.tokenizer = tokenizer
        return self.tokenizer


class TextEncoder:
    """GPT-1's tokenizer: ``encode(texts) -> ids``, ``decode(ids) -> text``.

    ``encoder_path`` / ``bpe_path`` default to the release's ``encoder_bpe_40000.json`` /
    ``vocab_40000.bpe`` shipped in the package (no network needed); given ``weights_dir``, to the
    files in that folder, downloaded and SHA-1-verified there if missing (unless
    ``download=False``). Explicit paths win over both. Ids ``0 .. n_vocab - 1``
    are BPE pieces (0 also stands for any unknown piece); ``special`` maps task tokens to the ids
    after them, by default ``_start_``, ``_delimiter_``, ``_classify_`` (ROCStories).
    """

    def __init__(self, encoder_path=None, bpe_path=None, *, weights_dir=None,
                 special_tokens: Sequence[str] = ROCSTORIES_SPECIAL, download: bool = True):
        vocabulary = load_vocabulary(encoder_path, bpe_path, weights_dir=weights_dir,
                                     download=download)
        self.encoder = vocabulary.encoder  # piece -> id
        self.ranks = vocabulary.ranks  # merge pair -> rank
        self.decoder = sorted(self.encoder, key=self.encoder.get)  # id -> piece
        self.n_vocab = len(self.encoder)
        self.special = special_token_ids(self.n_vocab, special_tokens)
        self._memo = Memo()

    def __repr__(self):
        return f"TextEncoder(n_vocab={self.n_vocab}, special={self.special})"

    def __getstate__(self):  # pickles without spaCy or caches; they are rebuilt on use
        return {**self.__dict__, "_memo": Memo()}

    @property
    def n_special(self) -> int:
        return len(self.special)

    def with_special_tokens(self, names: Sequence[str]) -> TextEncoder:
        """This encoder with other task tokens (ids from ``n_vocab`` on), e.g. for entailment
        ``['_start_', '_delimiter_', '_classify_']`` or any other layout."""
        other = copy.copy(self)
        other.special = special_token_ids(self.n_vocab, names)
        return other

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], *, workers: int | None = None) -> list[list[int]]:
        """Token ids of each text. ``workers``: processes to use (None: chosen by input size,
        see the module docstring; 1: this process only)."""
        texts = check_texts(texts)
        workers = self.worker_count(len(texts)) if workers is None else workers
        if workers > 1 and len(texts) > 1 and "fork" in multiprocessing.get_all_start_methods():
            return self.encode_in_workers(texts, min(workers, len(texts)))
        ids = []
        with gc_paused():
            for start in range(0, len(texts), BATCH_TEXTS):
                ids.extend(self.encode_batch(texts[start:start + BATCH_TEXTS]))
        return ids

    def encode_one(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text is a {type(text).__name__}, not a str")
        return self.encode([text], workers=1)[0]

    def worker_count(self, n_texts: int) -> int:
        """Processes ``encode(workers=None)`` uses for ``n_texts`` texts."""
        return max(1, min(idle_cpus(), n_texts // MIN_TEXTS_PER_WORKER))

    def token_ids(self, token: str) -> tuple[int, ...]:
        """Ids of one spaCy token: lower-cased, BPE'd, unknown pieces 0."""
        ids = self._memo.tokens.get(token)
        if ids is None:
            pieces = token_pieces(token.lower(), self.ranks)
            ids = tuple(self.encoder.get(piece, 0) for piece in pieces)
            self._memo.tokens[token] = ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        memo = self._memo
        tokenizer = memo.load_tokenizer()
        for cache in (memo.words, memo.tokens):
            if len(cache) > MAX_CACHED:
                cache.clear()
        normalized = [normalize(text) for text in texts]
        words_of = [text.split(" ") if text else [] for text in normalized]
        self.learn_words(tokenizer, dict.fromkeys(w for words in words_of for w in words
                                                  if w not in memo.words))
        return [self.join_words(words, text) for words, text in zip(words_of, normalized)]

    def learn_words(self, tokenizer, words: dict[str, None]) -> None:
        """Tokenize and BPE words not yet cached."""
        memo = self._memo
        if NEWLINE_WORD in words:  # in a text, spaCy's token for it is "\n "
            del words[NEWLINE_WORD]
            memo.words[NEWLINE_WORD] = Word(self.token_ids(NEWLINE_TOKEN),
                                            memo.cross_word.follow(NEWLINE_TOKEN),
                                            memo.cross_word.starts(NEWLINE_TOKEN))
        if not words:
            return
        for word, tokens in zip(words, tokenize_words(tokenizer, list(words))):
            ids = tuple(i for token in tokens for i in self.token_ids(token))
            memo.words[word] = Word(ids, memo.cross_word.follow(word), memo.cross_word.starts(word))

    def join_words(self, words: list[str], text: str) -> list[int]:
        """A normalised text's ids from its words' ids, or from spaCy on the whole text when a
        special case might match across two of its words."""
        memo = self._memo
        if memo.cross_word.always and len(words) > 1:
            return self.encode_whole(text)
        known, ids, follow = memo.words, [], ()
        for word in words:
            cached = known[word]
            if follow and cached.starts and not follow.isdisjoint(cached.starts):
                return self.encode_whole(text)
            ids += cached.ids
            follow = cached.follow
        return ids

    def encode_whole(self, text: str) -> list[int]:
        """A normalised text's ids from spaCy on the whole text, as the original does."""
        return [i for token in self._memo.tokenizer(text) for i in self.token_ids(token.text)]

    def encode_in_workers(self, texts: list[str], workers: int) -> list[list[int]]:
        """Contiguous slices of ``texts`` encoded in forked processes that inherit this encoder."""
        self._memo.load_tokenizer()  # once, before forking
        n = len(texts)
        bounds = [(n * k // workers, n * (k + 1) // workers) for k in range(workers)]
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=adopt,
                                 initargs=(self, texts)) as pool:
            return [ids for part in pool.map(encode_slice, bounds) for ids in part]

    # -- decoding ------------------------------------------------------------------------------

    def decode(self, ids) -> str:
        """Text of token ids (a list or a 1-D tensor, e.g. ``generate``'s output): pieces joined,
        each ``</w>`` read as a space (the last one dropped), task tokens as their names.

        What encoding loses, decoding cannot restore; ``decode(encode_one(s))`` is exactly the
        spaCy tokens of the normalised ``s``, lower-cased and joined by single spaces, except that
        a piece missing from the vocabulary (id 0) reads ``<unk>`` and loses its end of word:
        - case: ``"HELLO World"`` -> ``"hello world"``;
        - normalisation (ftfy, the original ``standardize``): dashes, quotes, ellipses and
          whitespace are rewritten, runs of newlines become one newline token, read ``"\n"``;
        - spaCy's splits: punctuation and clitics become words of their own, ``"it's fine."``
          -> ``"it 's fine ."``, and the original spacing is gone;
        - unknown characters: ``"I love 🍕!"`` -> ``"i love <unk>!"``.
        Decoded text need not re-encode to the same ids (``"'ve"`` and ``"dr."`` re-split).
        A generated sequence may end inside a word; its last piece is then kept as it is.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        names = {i: name for name, i in self.special.items()}
        pieces = []
        for position, i in enumerate(ids):
            i = operator.index(i)
            if 0 <= i < self.n_vocab:
                pieces.append(self.decoder[i])
            elif i in names:
                pieces.append(names[i] + END)
            else:
                raise ValueError(f"ids[{position}] = {i} is outside the vocabulary (0 .. "
                                 f"{self.n_vocab - 1}) and is no special token {self.special}")
        return "".join(pieces).replace(END, " ").removesuffix(" ")


_worker_state: tuple[TextEncoder, list[str]] | None = None  # set in worker processes only


def adopt(encoder: TextEncoder, texts: list[str]) -> None:
    global _worker_state
    _worker_state = (encoder, texts)


def encode_slice(bounds: tuple[int, int]) -> list[list[int]]:
    encoder, texts = _worker_state
    return encoder.encode(texts[bounds[0]:bounds[1]], workers=1)

"""Texts per second of ``gpt1f.TextEncoder`` against a straightforward per-text implementation.

The corpus is 2,000 synthetic five-sentence stories (200 with ``--quick``) from a seeded generator:
template sentences with names, numbers, prices, quotes, contractions, punctuation runs, a little
typography (curly apostrophes, em dashes), and nouns drawn from 20,000 made-up words with a Zipf
law, so that the share of words seen before grows as in real text. Each round times, cold, the
baseline (its own fresh ``spacy.blank('en')``), a fresh TextEncoder (empty caches, its own spaCy
tokenizer) in this process, and another with two worker processes; loading is not timed. The
rounds alternate, so load from other processes falls on all alike; each speed-up is the median of
the per-round ratios, by wall-clock time and (in one process) by this process's CPU time, which a
busy shared machine disturbs less. Every round asserts that all three produced the same ids.

The baseline, ``Baseline`` below, is the algorithm as the original writes it: per text
``ftfy.fix_text``, the standardisation with the original regular expressions, one ``nlp(text)``
call, and uncached BPE of every lower-cased token. Also timed: a ROCStories-sized input
(3,742 stories x 3 fields: a four-sentence story and two one-sentence endings), in one process
and in two.

The vocabulary is the release's, as shipped in the package (``gpt1f.release_data``).

    python -m benchmarks.bench_text [--quick] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import cpu_model, package_version
from gpt1f import release_data

ENCODER_NAME, MERGES_NAME = "encoder_bpe_40000.json", "vocab_40000.bpe"
ROCSTORIES_STORIES = 3742

# ---------------------------------------------------------------------------------------------
# The synthetic corpus

NAMES = ("Tom Anna Jake Sarah Mike Lisa Kevin Amy John Kelly Dan Emily Bob Jen Tim Gina Sam Kate "
         "Joe Mary Fred Nina Carl Ella Luis Maya Raj Chloe Omar Zoe").split()
PLACES = "store park beach mall school office lake zoo library gym market farm museum".split()
ADJECTIVES = "big old new red tiny shiny broken strange cheap expensive quiet noisy lovely".split()
VERBS = "buy fix find paint cook clean sell build read write bake watch".split()
PAST = "bought fixed found painted cooked cleaned sold built read wrote baked watched".split()
FEELINGS = "happy sad excited nervous proud tired angry relieved surprised".split()
SYLLABLES = ("ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re "
             "ri ro ru sa se si so su ta te ti to tu str pl gr tr ch sh th ent ion ing er").split()


def made_up_words(rng: random.Random, n: int) -> list[str]:
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    words = sorted(words)
    rng.shuffle(words)
    return words


def zipf_choice(rng: random.Random, pool: list[str]) -> str:
    """An element of ``pool`` with probability about proportional to 1 / (its index + 1)."""
    return pool[int(math.exp(rng.random() * math.log(len(pool)))) - 1]


def sentence(rng: random.Random, pool: list[str]) -> str:
    name, noun, noun2 = rng.choice(NAMES), zipf_choice(rng, pool), zipf_choice(rng, pool)
    he = rng.choice(["He", "She", "They"])
    templates = [
        f"{name} wanted to {rng.choice(VERBS)} a {rng.choice(ADJECTIVES)} {noun}.",
        f"{he} went to the {rng.choice(PLACES)} with {rng.choice(NAMES)} to get some {noun}.",
        f"It cost ${rng.randint(2, 999)}.{rng.randint(10, 99)}, so {he.lower()} didn't buy the "
        f"{noun}!",
        f'"I can\'t believe the {noun} is {rng.choice(ADJECTIVES)}," said {name}.',
        f"After {rng.randint(2, 12)} hours, {he.lower()} finally {rng.choice(PAST)} the {noun2}.",
        f"{name} felt {rng.choice(FEELINGS)} -- the {noun} was {rng.choice(ADJECTIVES)}; what a "
        f"day?!",
        f"{he} found {rng.randint(1, 5000):,} {noun}s in the {rng.choice(PLACES)}'s {noun2} "
        f"(really).",
    ]
    text = rng.choice(templates)
    if rng.random() < 0.03:  # a little typography, as in text from the web
        text = text.replace("'", "\u2019").replace(" -- ", " \u2014 ")
    return text


def synthetic_stories(n: int, *, seed: int = 0, sentences: int = 5) -> list[str]:
    rng = random.Random(seed)
    pool = made_up_words(rng, 20_000)
    return [" ".join(sentence(rng, pool) for _ in range(sentences)) for _ in range(n)]


def rocstories_sized(*, seed: int = 1) -> list[str]:
    """3,742 x (four-sentence story, ending, ending): the shape of the ROCStories test set."""
    rng = random.Random(seed)
    pool = made_up_words(rng, 20_000)
    texts = []
    for _ in range(ROCSTORIES_STORIES):
        texts.append(" ".join(sentence(rng, pool) for _ in range(4)))
        texts.extend(sentence(rng, pool) for _ in range(2))
    return texts


# ---------------------------------------------------------------------------------------------
# The baseline: the algorithm written plainly, one text at a time


class Baseline:
    """ftfy, the original standardisation, one ``nlp(text)`` per text, BPE without a cache."""

    # The original's alternation as its plain string literal means it: its `\\+` is the regex `\+`.
    PUNCTUATION = re.compile(
        r"""(-+|~+|!+|"+|;+|\?+|\++|,+|\)+|\(+|\+|\/+|\*+|\[+|\]+|}+|{+|\|+|_+)""")

    def __init__(self, encoder_path, bpe_path):
        import spacy

        self.encoder = json.loads(Path(encoder_path).read_text(encoding="utf-8"))
        lines = Path(bpe_path).read_text(encoding="utf-8").split("\n")[1:-1]
        self.ranks = {tuple(line.split(" ")): rank for rank, line in enumerate(lines)}
        self.nlp = spacy.blank("en")

    def standardize(self, text: str) -> str:
        for old, new in (("\u2014", "-"), ("\u2013", "-"), ("\u2015", "-"), ("\u2026", "..."),
                         ("\u00b4", "'")):
            text = text.replace(old, new)
        text = self.PUNCTUATION.sub(r" \1 ", text)
        text = re.sub(r"\s*\n\s*", " \n ", text)
        text = re.sub(r"[^\S\n]+", " ", text)
        return text.strip()

    def bpe(self, token: str) -> str:
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda pair: self.ranks.get(pair, math.inf))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        joined = " ".join(word)
        return "\n</w>" if joined == "\n  </w>" else joined

    def encode(self, texts: list[str]) -> list[list[int]]:
        import ftfy

        out = []
        for text in texts:
            doc = self.nlp(self.standardize(ftfy.fix_text(text)))
            out.append([self.encoder.get(piece, 0) for token in doc
                        for piece in self.bpe(token.text.lower()).split(" ")])
        return out


# ---------------------------------------------------------------------------------------------
# A vocabulary when the release's is not at hand


# ---------------------------------------------------------------------------------------------
# Timing


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, this process's CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def cold_encoder(paths):
    """A fresh TextEncoder whose spaCy tokenizer is loaded but whose caches are empty."""
    from gpt1f.text import TextEncoder

    encoder = TextEncoder(*paths)
    encoder.encode_one("")  # loads spaCy; an empty text adds nothing to the caches
    return encoder


def compare(texts: list[str], paths, rounds: int) -> dict:
    """Alternating cold rounds: baseline, TextEncoder in one process, TextEncoder in two."""
    wall = {"baseline": [], "ours": [], "ours_2_workers": []}
    cpu = {"baseline": [], "ours": []}
    for _ in range(rounds):
        baseline = Baseline(*paths)
        w, c, expected = timed(lambda: baseline.encode(texts))
        wall["baseline"].append(w)
        cpu["baseline"].append(c)
        encoder = cold_encoder(paths)
        w, c, got = timed(lambda: encoder.encode(texts, workers=1))
        wall["ours"].append(w)
        cpu["ours"].append(c)
        assert got == expected, "TextEncoder and the baseline disagree"
        encoder = cold_encoder(paths)
        w, _, got = timed(lambda: encoder.encode(texts, workers=2))
        wall["ours_2_workers"].append(w)
        assert got == expected, "TextEncoder in two processes and the baseline disagree"
    n = len(texts)

    def speedup(times: dict, name: str) -> float:  # median of the per-round ratios
        return statistics.median(b / o for b, o in zip(times["baseline"], times[name]))

    return {
        "texts": n, "rounds": rounds, "identical_ids": True,
        "texts_per_s": {name: n / statistics.median(t) for name, t in wall.items()},
        "speedup": speedup(wall, "ours"),
        "speedup_2_workers": speedup(wall, "ours_2_workers"),
        "speedup_cpu_time": speedup(cpu, "ours"),
        "wall_s": wall, "cpu_s": cpu,
    }


def rocstories_timing(paths, rounds: int) -> dict:
    texts = rocstories_sized()
    one, two = [], []
    for _ in range(rounds):
        encoder = cold_encoder(paths)
        one.append(timed(lambda: encoder.encode(texts, workers=1))[0])
        encoder = cold_encoder(paths)
        two.append(timed(lambda: encoder.encode(texts, workers=2))[0])
    return {"texts": len(texts), "seconds_1_process": statistics.median(one),
            "seconds_2_processes": statistics.median(two), "runs_1": one, "runs_2": two}


def load_average():
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def environment() -> dict:
    from gpt1f.text.encoder import available_cpus

    return {"python": sys.version.split()[0], "spacy": package_version("spacy"),
            "ftfy": package_version("ftfy"), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "usable_cpus": available_cpus(), "load_average_at_start": load_average(),
            "date": time.strftime("%Y-%m-%d")}


def run(quick: bool = False) -> dict:
    """The benchmark's results as a JSON-able dict (see the module docstring)."""
    stories = synthetic_stories(200 if quick else 2000, seed=0)
    rounds = 2 if quick else 3
    result = {"benchmark": "text", "quick": quick, "environment": environment(),
              "corpus": {"stories": len(stories), "sentences": 5, "seed": 0,
                         "characters": sum(map(len, stories))}}
    paths = release_data.path(ENCODER_NAME), release_data.path(MERGES_NAME)
    result["vocabulary"] = "release (packaged)"
    result["stories"] = compare(stories, paths, rounds)
    result["rocstories_sized"] = rocstories_timing(paths, 1 if quick else 3)
    result["environment"]["load_average_at_end"] = load_average()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 stories, fewer rounds")
    parser.add_argument("--out", type=Path, help="also write the JSON results to this file")
    args = parser.parse_args(argv)
    result = run(args.quick)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

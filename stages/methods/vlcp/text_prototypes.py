"""VLCP's text prototype: the member caption that best represents a cluster (docs/methods/vlcp.md#prototypes
step 5), with the reference's fragility fixed.

1. Tokens: regex [A-Za-z]+, lower-cased (the reference: NLTK word_tokenize, which downloads at import).
2. Class-common words: not a stopword and in >= threshold x N of the class's N inlier captions (document
   frequency).
3. A cluster's words: every token of its members' captions, multiplicity kept, minus stopwords, class-name words
   and class-common words. Class-name words are the *tokens* of the class prompt and class name, matched as whole
   tokens (the reference dropped every token that is a substring of the class name, e.g. "a", "in", "ca").
4. Top words: the tpk most frequent, ties by word.
5. Score of a member caption: the summed counts of the top words among its tokens, each word once (the reference
   matched raw substrings case-sensitively, so "Red" missed "red" and "red" hit "bored").
6. Prototype: the highest-scoring member caption, ties to the first member. With no top words every score is 0;
   the reference then returned "", here it falls back to the member nearest the centroid (flagged).
The stopwords are NLTK's English list, pinned in stopwords_en.txt so results never move with a library upgrade.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from stages.pipeline.errors import DataError

TOKEN = re.compile(r"[A-Za-z]+")
STOPWORDS_FILE = Path(__file__).with_name("stopwords_en.txt")


@dataclass
class TextPrototype:
    caption: str
    path: str
    top_words: list[tuple[str, int]]
    fallback: bool  # True: no top words, so the member nearest the centroid was taken


def tokens(text: str) -> list[str]:
    return [t.lower() for t in TOKEN.findall(text)]


@cache
def stopwords() -> frozenset[str]:
    lines = STOPWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def name_words(*names: str) -> frozenset[str]:
    """The tokens of a class's prompt and name ("handwritten digit 3", "3")."""
    return frozenset(t for name in names for t in tokens(name))


def class_common_words(token_lists: list[list[str]], threshold: float) -> list[str]:
    """Words (not stopwords) in at least threshold x N of the N captions, sorted."""
    df = Counter(word for toks in token_lists for word in set(toks))
    cut = threshold * len(token_lists)
    return sorted(w for w, n in df.items() if n >= cut and w not in stopwords())


def top_words(token_lists: list[list[str]], excluded: frozenset[str] | set[str], tpk: int) -> list[tuple[str, int]]:
    counts = Counter(t for toks in token_lists for t in toks if t not in excluded)
    return sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:tpk]


def pick_caption(paths: list[str], captions: list[str], excluded: frozenset[str] | set[str], tpk: int,
                 nearest: int) -> TextPrototype:
    """The cluster's prototype among its members (paths/captions in member order; nearest indexes them)."""
    token_lists = [tokens(c) for c in captions]
    top = top_words(token_lists, excluded, tpk)
    weight = dict(top)
    scores = [sum(weight.get(w, 0) for w in set(toks)) for toks in token_lists]
    best = max(range(len(scores)), key=scores.__getitem__)  # max keeps the first of equal scores
    fallback = scores[best] == 0  # only when there are no top words: each top word occurs in some member
    if fallback:
        best = nearest
    return TextPrototype(captions[best], paths[best], top, fallback)


def class_text_prototypes(name: str, paths: list[str], captions: list[str], assignment: np.ndarray,
                          nearest: np.ndarray, class_words: frozenset[str], threshold: float,
                          tpk: int) -> tuple[list[str], list[TextPrototype]]:
    """(class-common words, one prototype per cluster) for one class.

    paths/captions: every row of the class; assignment: cluster per row (-1 = outlier, ignored);
    nearest: the row nearest each centroid.
    """
    inliers = np.flatnonzero(assignment >= 0)
    common = class_common_words([tokens(captions[i]) for i in inliers], threshold)
    excluded = stopwords() | class_words | set(common)
    prototypes = []
    for j in range(len(nearest)):
        rows = np.flatnonzero(assignment == j).tolist()
        if not rows:
            raise DataError(f"class {name!r}: cluster {j} has no members, so no caption to pick")
        prototypes.append(pick_caption([paths[i] for i in rows], [captions[i] for i in rows], excluded, tpk,
                                       rows.index(int(nearest[j]))))
    return common, prototypes

"""Exact deduplication on normalised text and n-gram decontamination against evaluation sets.

Normalisation (NFKC, case-folded, whitespace collapsed) makes copies that differ only in layout or
case one problem. Decontamination compares word n-grams of the normalised text, so punctuation and
LaTeX markup around the words do not hide a copied evaluation problem.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from srpo_megatron.preprocess.schemas import Problem

_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_ID_HASH_CHARS = 8


def normalise_text(text: str) -> str:
    """The form two problems are compared in: NFKC, case-folded, single spaces, stripped."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of the normalised text; a text shorter than n words is one (shorter) gram."""
    words = _WORD.findall(normalise_text(text))
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class DecontaminationConfig:
    """When a training problem counts as a copy of an evaluation problem."""

    ngram: int = 8
    """Words per n-gram. Smaller catches paraphrases but flags shared boilerplate ("find the
    remainder when ... is divided by 1000"); 8 suits problem-length texts."""
    threshold: float = 0.5
    """Fraction of a problem's n-grams that occur in any evaluation set at which it is dropped, in (0, 1]."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"decontamination ngram must be >= 1 word (got {self.ngram})")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(
                "decontamination threshold must be in (0, 1], the fraction of overlapping n-grams "
                f"(got {self.threshold})"
            )


class Decontaminator:
    """Holds the evaluation sets' n-grams; answers how much of a text overlaps them."""

    def __init__(self, eval_texts: Iterable[str], config: DecontaminationConfig) -> None:
        self.config = config
        self._grams: set[tuple[str, ...]] = set()
        for text in eval_texts:
            self._grams |= word_ngrams(text, config.ngram)

    def overlap(self, text: str) -> float:
        """Fraction of the text's n-grams found in the evaluation sets (0 for a text without words)."""
        grams = word_ngrams(text, self.config.ngram)
        return len(grams & self._grams) / len(grams) if grams else 0.0

    def is_contaminated(self, text: str) -> bool:
        return bool(self._grams) and self.overlap(text) >= self.config.threshold


def split_duplicates(problems: Iterable[Problem]) -> tuple[list[Problem], list[tuple[Problem, Problem]]]:
    """(first occurrences, [(duplicate, the problem it duplicates)]), input order kept."""
    seen: dict[str, Problem] = {}
    kept: list[Problem] = []
    duplicates: list[tuple[Problem, Problem]] = []
    for problem in problems:
        key = normalise_text(problem.prompt)
        if key in seen:
            duplicates.append((problem, seen[key]))
        else:
            seen[key] = problem
            kept.append(problem)
    return kept, duplicates


def make_ids_unique(problems: Iterable[Problem]) -> None:
    """Give later problems that reuse an id (two sources numbering from 0) a distinct, stable one.

    The first keeps its id; a later one becomes `source/id`, or `id-<prompt hash>` if that is taken too.
    """
    taken: set[str] = set()
    for problem in problems:
        if problem.id in taken:
            candidate = f"{problem.source}/{problem.id}"
            if candidate in taken:
                digest = hashlib.sha256(normalise_text(problem.prompt).encode()).hexdigest()[:_ID_HASH_CHARS]
                candidate = f"{problem.id}-{digest}"
            problem.id = candidate
        taken.add(problem.id)

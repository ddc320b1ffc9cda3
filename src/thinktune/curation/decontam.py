"""Decontamination: find training rows that share a word n-gram with an evaluation item.

Phi-4-reasoning scrubbed its training data of evaluation problems (docs/recipe.md §1.1; its method is not
published). We use the common word n-gram test (13 words by default, as GPT-3 did): a training row is
contaminated when any ``n`` consecutive words of it, after normalisation, also occur consecutively in an
evaluation item. An item of fewer than ``n`` words has no n-gram, so it is checked whole instead: a row is
contaminated when its normalised words contain all of the item's normalised words, consecutively and in order
(a verbatim copy, whatever its case, punctuation or surrounding text).

Normalisation (``words``): lowercase; every character that is not a letter or a digit (punctuation,
symbols, underscores, LaTeX backslashes and braces) becomes a space; whitespace runs collapse; then split
on spaces. So "Find x, given: x+1=2!" and "find X given x 1 2" are the same words. Letters and digits are
Unicode-aware (``\\w``), so accented and non-Latin words survive.

What is and isn't covered: items shorter than ``n`` words are counted (``NgramIndex.short``) so that a report
can say how many were checked whole; the shorter such an item, the likelier an unrelated row contains it (a
three-word item matches every row holding those three words in a row), so read their matches in the report.
An item with no words at all can never match. Paraphrases, translated or renumbered problems are not found
(no fuzzy or embedding match).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_NOT_WORD = re.compile(r"[\W_]+")


def words(text: str) -> list[str]:
    """The normalised words of ``text`` (see the module docstring)."""
    return _NOT_WORD.sub(" ", text.lower()).split()


def ngrams(tokens: list[str], n: int) -> Iterator[str]:
    """Every run of ``n`` consecutive words, joined by single spaces (none when there are fewer)."""
    for i in range(len(tokens) - n + 1):
        yield " ".join(tokens[i:i + n])


@dataclass(frozen=True)
class EvalItem:
    source: str  # the evaluation set's name
    id: str
    text: str


@dataclass(frozen=True)
class Match:
    source: str  # evaluation set
    eval_id: str
    ngram: str  # the first shared n-gram, normalised; for an item shorter than n, its whole normalised text


class NgramIndex:
    """Every n-gram of the evaluation items, each mapped to the items it comes from; items shorter than n are
    kept whole, indexed by their first word so a long training text is scanned once."""

    def __init__(self, items: Iterable[EvalItem], n: int = 13) -> None:
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        self.n = n
        self.items = 0
        self.short: list[EvalItem] = []  # fewer than n words: checked whole (an empty one never matches)
        self.owners: dict[str, list[EvalItem]] = {}
        self.short_by_first: dict[str, list[tuple[tuple[str, ...], EvalItem]]] = {}
        for item in items:
            self.items += 1
            tokens = words(item.text)
            if len(tokens) < n:
                self.short.append(item)
                if tokens:
                    self.short_by_first.setdefault(tokens[0], []).append((tuple(tokens), item))
            for g in set(ngrams(tokens, n)):
                self.owners.setdefault(g, []).append(item)

    def matches(self, text: str) -> list[Match]:
        """The evaluation items sharing an n-gram with ``text``, or wholly inside it when shorter than n: one
        ``Match`` per item, in the order their first shared run starts in the text."""
        tokens = words(text)
        found: dict[tuple[str, str], Match] = {}
        for i, first in enumerate(tokens):
            if i + self.n <= len(tokens):
                g = " ".join(tokens[i:i + self.n])
                for item in self.owners.get(g, ()):
                    found.setdefault((item.source, item.id), Match(item.source, item.id, g))
            for seq, item in self.short_by_first.get(first, ()):
                if tuple(tokens[i:i + len(seq)]) == seq:
                    found.setdefault((item.source, item.id), Match(item.source, item.id, " ".join(seq)))
        return list(found.values())


def row_text(row: dict) -> str | None:
    """All the text of a prompt row (``prompt``: text or messages) or an SFT row (``messages``); None if
    the row has neither field."""
    parts = []
    for name in ("prompt", "messages"):
        value = row.get(name)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts += [m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return "\n".join(parts) if parts else None

"""Passages of a reference document, and the ones a claim is most about (BM25, via bm25s).

FactScore checks each atomic fact against the few passages of its knowledge source that
BM25 ranks highest for it (k=5 passages of up to 256 words). Here the knowledge source is
the question's own `document`: it is cut into paragraphs (blank lines), and a paragraph
longer than the word budget into runs of whole sentences within it, so a passage never
ends mid-sentence (a single sentence over the budget stays whole). Ranking is bm25s's
Okapi BM25 over lower-cased word tokens, each CJK character a token of its own (Chinese
has no spaces); ties keep document order, so the same inputs always give the same passages.
"""

from __future__ import annotations

import re

import bm25s

from maskdpo_cli.segmentation import split_sentences

PASSAGE_WORDS = 256  # FactScore's passage length
TOP_K = 5            # passages per fact, as FactScore retrieves
_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def split_passages(document: str, max_words: int = PASSAGE_WORDS, language: str | None = None) -> list[str]:
    """The document's paragraphs, long ones cut between sentences into passages of <= max_words tokens."""
    passages: list[str] = []
    for paragraph in re.split(r"\n\s*\n", document):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(tokens(paragraph)) <= max_words:
            passages.append(paragraph)
            continue
        current: list[str] = []
        size = 0
        for sentence in split_sentences(paragraph, language):
            n = len(tokens(sentence.text))
            if current and size + n > max_words:
                passages.append(" ".join(current))
                current, size = [], 0
            current.append(sentence.text)
            size += n
        if current:
            passages.append(" ".join(current))
    return passages


class PassageIndex:
    """BM25 over one document's passages; built once per question, queried once per fact."""

    def __init__(self, passages: list[str]) -> None:
        self.passages = passages
        self._bm25 = bm25s.BM25()
        # An empty token list would leave bm25s nothing to index: such a passage never ranks.
        self._bm25.index([tokens(p) or [""] for p in passages], show_progress=False)

    @classmethod
    def of_document(cls, document: str, max_words: int = PASSAGE_WORDS, language: str | None = None) -> PassageIndex:
        return cls(split_passages(document, max_words, language))

    def top(self, claim: str, k: int = TOP_K) -> list[str]:
        """The k passages that BM25 scores highest for the claim, best first."""
        query = tokens(claim)
        scores = self._bm25.get_scores(query) if query else [0.0] * len(self.passages)
        order = sorted(range(len(self.passages)), key=lambda i: (-float(scores[i]), i))
        return [self.passages[i] for i in order[:k]]


__all__ = ["PassageIndex", "split_passages", "tokens", "PASSAGE_WORDS", "TOP_K"]

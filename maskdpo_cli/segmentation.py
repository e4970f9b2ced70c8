"""Sentence segmentation with exact character offsets, for English and Chinese.

blingfire proposes sentence ends; a few rules add the boundaries it misses (newlines
between list items, Chinese after half-width punctuation, English sentences glued without
a space: "It is red.It is big.") and undo the ones it gets wrong (a closing quote left at
the start of the next sentence; abbreviations, initials and list markers split off as
"sentences" of their own, which are merged into the sentence that follows them).

Sentences are built from cut positions only: the text between two consecutive cuts,
stripped of surrounding whitespace. So whatever the boundaries, `text[start:end] ==
sentence.text` holds and every non-whitespace character lies in exactly one sentence.
blingfire's offsets are character offsets (its Python wrapper maps the UTF-8 byte
offsets of the C library back to code points; checked on accented, CJK and astral
characters), and they are only ever used as cut positions.

`segmenter="anah-v2"` instead splits exactly where the ANAH-v2 evaluation script does
(`sentence_tokenize` in open-compass/ANAH `eval/anah_v2/utils.py`, with the arguments its
eval.py passes: keep_end=False, keep_colon=False), so scores are comparable with the
paper's Table 1. That script edits the text before splitting (it deletes the spaces after
initials, list numbers, some abbreviations and colons so that the split regex misses
them) and splits the edited text; here each edit is replayed on a copy that remembers
where every character came from, so its boundaries map back to exact offsets in the
original text. Its quirks are kept on purpose: "Jan. 1950. He died" and "the U.S. He
left" stay one sentence, a line ending in a colon joins the next line, ";" ends a sentence,
and Chinese splits only on 。！？； and newlines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import blingfire

from maskdpo_cli.errors import MaskDPOError

__all__ = ["SEGMENTERS", "Sentence", "split_sentences", "detect_language"]

SEGMENTERS = ("default", "anah-v2")


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    text: str


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK_RE = re.compile(f"[{_CJK}]")
_LATIN_RE = re.compile(r"[A-Za-z]")
# Closing quotes and brackets belong to the sentence they close.
_CLOSERS = "\"'”’」』）)]】》"
# Ends of sentences blingfire may miss: full-width terminal punctuation anywhere, and
# half-width punctuation glued to a following CJK character (no space in Chinese text).
_ZH_END_RE = re.compile(f"[。！？]+[{re.escape(_CLOSERS)}]*|[.!?]+(?=[{_CJK}])")
_ALWAYS_END_RE = re.compile(f"[。！？]+[{re.escape(_CLOSERS)}]*")
# English sentences glued without a space ("It is red.It is big."): a word of two or more
# lower-case letters or digits, its full stop, then a capitalised word. Acronyms ("U.S.He")
# and "e.g." never match (a capital or a dot before the stop); nor does "www.Google.com".
_GLUED_END_RE = re.compile(r"(?<=[a-z\d]{2}[.!?])(?=[A-Z][a-z]*(?:[\s,;:!?]|\.?$|\.\s))")

# A fragment made only of these never stands as a sentence: it is merged into the next one.
_ABBREVIATIONS = (
    r"Mr|Mrs|Ms|Mx|Dr|Prof|Rev|Fr|Sr|Jr|St|Mt|Gen|Col|Capt|Lt|Sgt|Gov|Sen|Rep|Pres|Hon"
    r"|e\.g|i\.e|vs|cf|viz|al|approx|ca|Fig|Figs|Vol|Ch|Sec|pp|Inc|Ltd|Co|Corp"
)
_ROMAN = r"(?:i{1,3}|iv|vi{0,3}|ix|xi{0,3})"
_MARKER_TOKEN = (
    rf"(?:(?:{_ABBREVIATIONS})\."            # titles and Latin abbreviations: "Dr.", "e.g."
    r"|(?:[A-Za-z]\.)+"                       # initials and dotted acronyms: "J.", "U.S."
    rf"|\(?(?:\d{{1,3}}|[A-Za-z]|{_ROMAN}|{_ROMAN.upper()})[.):]"  # list markers: "1.", "a)", "(iv)"
    r"|[（(](?:\d+|[一二三四五六七八九十百]+)[）)]"     # "（1）", "(一)"
    r"|(?:\d+|[一二三四五六七八九十百]+)、"            # "1、", "一、"
    r"|(?:\*\*|__)[^*_\n]+:(?:\*\*|__)"       # "**Term:**"
    r"|(?:\*\*|__)[^*_\n]+(?:\*\*|__):"       # "**Term**:"
    r"|[^\w\s]+"                              # bullets, "#", "---", stray quotes and symbols
    r")"
)
_MARKERS_ONLY_RE = re.compile(rf"(?:{_MARKER_TOKEN}\s*)+")


def detect_language(text: str) -> str:
    """'zh' when CJK characters outnumber Latin letters, else 'en'."""
    return "zh" if len(_CJK_RE.findall(text)) > len(_LATIN_RE.findall(text)) else "en"


def split_sentences(text: str, language: str | None = None,
                    segmenter: str = "default") -> list[Sentence]:
    """Sentences of `text` with character offsets; `language` is 'en', 'zh' or None (detect).

    `segmenter` is one of SEGMENTERS: "default" (blingfire plus rules) or "anah-v2" (the
    ANAH-v2 evaluation script's boundaries).
    """
    if segmenter not in SEGMENTERS:
        raise MaskDPOError(f"unknown --segmenter {segmenter!r}: choose one of {', '.join(SEGMENTERS)}")
    if not text.strip():
        return []
    language = language or detect_language(text)
    if segmenter == "anah-v2":
        return [Sentence(start, end, text[start:end]) for start, end in _anah_v2_spans(text, language)]
    cuts = sorted(_blingfire_cuts(text) | _rule_cuts(text, language))
    spans = _spans(text, cuts)
    spans = _merge_markers(text, spans)
    return [Sentence(start, end, text[start:end]) for start, end in spans]


def _blingfire_cuts(text: str) -> set[int]:
    # blingfire reads a NUL as the end of the string and cannot encode lone surrogates;
    # a same-length stand-in keeps the character offsets unchanged.
    safe = "".join(" " if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)
    try:
        _, offsets = blingfire.text_to_sentences_and_offsets(safe)
    except (AssertionError, UnicodeError, ValueError):
        return set()  # the rules alone still give a valid segmentation
    return {_past_closers(text, end) for _, end in offsets if 0 < end < len(text)}


def _rule_cuts(text: str, language: str) -> set[int]:
    end_re = _ZH_END_RE if language == "zh" else _ALWAYS_END_RE
    cuts = {m.end() for m in end_re.finditer(text)}
    if language != "zh":
        cuts |= {m.start() for m in _GLUED_END_RE.finditer(text)}
    for m in re.finditer(r"\n", text):
        if language == "zh" or not _is_hard_wrap(text, m.start()):
            cuts.add(m.start())
    return cuts


def _is_hard_wrap(text: str, newline: int) -> bool:
    """A single newline inside running prose ("...on the\\nmat.") continues the sentence."""
    before = text[:newline].rstrip(" \t")
    after = text[newline + 1:].lstrip(" \t")
    return bool(before) and bool(after) and (before[-1].isalpha() or before[-1] == ",") \
        and after[0].islower()


def _past_closers(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _CLOSERS:
        pos += 1
    return pos


def _spans(text: str, cuts: list[int]) -> list[tuple[int, int]]:
    """Whitespace-stripped, non-empty pieces of text between consecutive cuts."""
    spans = []
    for start, end in zip([0, *cuts], [*cuts, len(text)]):
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + lead + len(stripped)))
    return spans


def _merge_markers(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge marker-only fragments into the next sentence (the previous one when last)."""
    merged: list[tuple[int, int]] = []
    pending: int | None = None  # start of marker fragments waiting for their sentence
    for start, end in spans:
        if _MARKERS_ONLY_RE.fullmatch(text[start:end]):
            pending = start if pending is None else pending
            continue
        merged.append((start if pending is None else pending, end))
        pending = None
    if pending is not None:
        if merged:
            merged[-1] = (merged[-1][0], spans[-1][1])
        else:
            merged.append((pending, spans[-1][1]))
    return merged


# --- the ANAH-v2 segmenter -------------------------------------------------------------
# Each edit of the script's English pre-pass, in its order: a pattern and a template that
# rebuilds the match from its groups (int) or from a literal standing where a group was
# ((literal, group)). Whatever the template leaves out is deleted; all of it is whitespace
# except the character that "O.S.B.M." replaces with a full stop.
_Template = tuple[int | tuple[str, int], ...]
_MONTHS = r"Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sept|Oct|Nov|Dec|No|Op|D|Dr|St"
_ANAH_EN_EDITS: tuple[tuple[re.Pattern[str], _Template], ...] = tuple(
    (re.compile(pattern), template) for pattern, template in (
        (r"(O\.S\.B\.M)(.) ", (1, (".", 2))),
        (r"(\W|^)([A-Z]\.) ?([A-Z]\.) ?([A-Za-z])", (1, 2, 3, 4)),    # "J. K. Rowling"
        (r"(\W|^)([A-Z]\.) ?([A-Za-z])", (1, 2, 3)),                   # "J. Campbell", "U.S. He"
        (r"((\n\s*)|(\. ))(\d+\.)\s+", (1, 4)),                        # "1. item", ". 1950. He"
        (r"^(\d+\.)\s+", (1,)),                                          # "1. item" at the start
        (rf"(\W|^)((?:{_MONTHS})\.)\s+", (1, 2)),                        # "Jan. 1950"
        (r"(\W|^)(et al\.)\s+([a-z])", (1, 2, 3)),
        (r"(Alexander v\.) (Holmes)", (1, 2)),
        (r"(Brown v\.) (Board)", (1, 2)),
        (r"([:：])(\s+)", (1, (" ", 2))),                                # colon: whitespace -> one space
    ))
_ANAH_ZH_EDITS = ((re.compile(r"([:：])(\s+)"), (1,)),)             # colon: whitespace deleted
_ANAH_SPLIT = {"en": re.compile(r"(?:[.!?;]\s+)|(?:\n+)"), "zh": re.compile(r"。|！|？|；|\n+")}


def _anah_v2_spans(text: str, language: str) -> list[tuple[int, int]]:
    """Boundaries of ANAH-v2's `sentence_tokenize`, as offsets into the original text."""
    chars, origin = text, list(range(len(text)))
    for pattern, template in _ANAH_EN_EDITS if language == "en" else _ANAH_ZH_EDITS:
        chars, origin = _tracked_sub(pattern, template, chars, origin)
    spans = []
    start = 0
    # A sentence is the text up to and including its delimiter, stripped.
    for delimiter in [*_ANAH_SPLIT["en" if language == "en" else "zh"].finditer(chars), None]:
        end = delimiter.end() if delimiter else len(chars)
        piece = chars[start:end]
        if piece.strip():
            first = start + len(piece) - len(piece.lstrip())
            last = start + len(piece.rstrip())
            # Deleted whitespace inside a sentence comes back with the original slice; a
            # replaced character at either end may have been whitespace, hence the strip.
            lo, hi = origin[first], origin[last - 1] + 1
            stripped = text[lo:hi].strip()
            if stripped:
                lo += len(text[lo:hi]) - len(text[lo:hi].lstrip())
                spans.append((lo, lo + len(stripped)))
        start = end
    return spans


def _tracked_sub(pattern: re.Pattern[str], template: _Template, chars: str,
                 origin: list[int]) -> tuple[str, list[int]]:
    """`pattern.sub` with the template, carrying each character's original position along."""
    out: list[str] = []
    out_origin: list[int] = []
    done = 0
    for m in pattern.finditer(chars):
        out.append(chars[done:m.start()])
        out_origin.extend(origin[done:m.start()])
        for item in template:
            if isinstance(item, int):
                out.append(m.group(item) or "")
                out_origin.extend(origin[m.start(item):m.end(item)] if m.group(item) else [])
            else:
                literal, group = item
                out.append(literal)
                out_origin.extend([origin[m.start(group)]] * len(literal))
        done = m.end()
    out.append(chars[done:])
    out_origin.extend(origin[done:])
    return "".join(out), out_origin

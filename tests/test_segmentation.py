"""Sentence segmentation: exact offsets, English and Chinese, lists, abbreviations, markdown."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.segmentation import SEGMENTERS, Sentence, detect_language, split_sentences


def texts(text: str, language: str | None = None, segmenter: str = "default") -> list[str]:
    return [s.text for s in split_sentences(text, language, segmenter)]


def assert_invariants(text: str, sentences: list[Sentence]) -> None:
    covered = [0] * len(text)
    previous_end = 0
    for s in sentences:
        assert text[s.start:s.end] == s.text
        assert s.text and s.text == s.text.strip()
        assert previous_end <= s.start < s.end <= len(text)
        previous_end = s.end
        for i in range(s.start, s.end):
            covered[i] += 1
    for i, ch in enumerate(text):
        assert covered[i] == 1 or ch.isspace(), f"character {i} {ch!r} is in no sentence"


@pytest.mark.parametrize("text, expected", [
    ("Paris is the capital of France. It lies on the Seine.",
     ["Paris is the capital of France.", "It lies on the Seine."]),
    ("Dr. Smith met Mr. Jones in the U.S. capital. They talked, e.g. about taxes, i.e. money.",
     ["Dr. Smith met Mr. Jones in the U.S. capital.", "They talked, e.g. about taxes, i.e. money."]),
    ("J. R. R. Tolkien wrote The Hobbit. It appeared in 1937.",
     ["J. R. R. Tolkien wrote The Hobbit.", "It appeared in 1937."]),
    ("He said \"Go home.\" Then he left.", ["He said \"Go home.\"", "Then he left."]),
    ("It costs $3.5 million. See Fig. 3 for details.", ["It costs $3.5 million.", "See Fig. 3 for details."]),
])
def test_english(text, expected):
    assert texts(text) == expected
    assert_invariants(text, split_sentences(text))


def test_chinese_with_quotes_and_mixed_english():
    text = "巴黎是法国的首都。它位于塞纳河畔！你去过吗？“他说：‘好。’然后走了。”The end.我也是。"
    assert texts(text) == ["巴黎是法国的首都。", "它位于塞纳河畔！", "你去过吗？", "“他说：‘好。’",
                           "然后走了。”", "The end.", "我也是。"]
    assert_invariants(text, split_sentences(text))


def test_chinese_half_width_punctuation_and_list_markers():
    assert texts("他来了!她走了?好的.再见。", "zh") == ["他来了!", "她走了?", "好的.", "再见。"]
    assert texts("1、北京是首都。2、上海很大。") == ["1、北京是首都。", "2、上海很大。"]


def test_markdown_lists_each_item_a_sentence_with_markers_attached():
    text = ("# Facts about Paris\n\n1. Paris is the capital.\n2. It has 2 million people.\n"
            "- The Seine flows through it\n- It hosts the Louvre\n"
            "**Founded:** in the 3rd century BC.\n**Key facts:**\n* Paris is big.\na) one option.\n---\nDone")
    assert texts(text) == [
        "# Facts about Paris", "1. Paris is the capital.", "2. It has 2 million people.",
        "- The Seine flows through it", "- It hosts the Louvre", "**Founded:** in the 3rd century BC.",
        "**Key facts:**\n* Paris is big.", "a) one option.", "---\nDone"]
    assert_invariants(text, split_sentences(text))


def test_marker_alone_at_the_end_joins_the_previous_sentence():
    assert texts("Hello there. 1.") == ["Hello there. 1."]
    assert texts("1.") == ["1."]  # nothing to join: it stays, rather than losing characters


def test_sentences_glued_without_a_space_are_split_but_acronyms_stay_whole():
    assert texts("It is red.It is big.") == ["It is red.", "It is big."]
    assert texts("He left in 1990.Then he came back.") == ["He left in 1990.", "Then he came back."]
    text = "He lived in the U.S. and in D.C. for years, e.g. in 1990. Visit www.Google.com today."
    assert texts(text) == ["He lived in the U.S. and in D.C. for years, e.g. in 1990.",
                           "Visit www.Google.com today."]


def test_hard_wrapped_prose_is_one_sentence():
    assert texts("The cat sat on\nthe mat. It was happy.") == ["The cat sat on\nthe mat.", "It was happy."]


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_empty_and_whitespace_only(text):
    assert split_sentences(text) == []


def test_surrounding_whitespace_is_not_in_sentences():
    text = "  \n Paris is big.   Berlin is too.\n\n  "
    sentences = split_sentences(text)
    assert [s.text for s in sentences] == ["Paris is big.", "Berlin is too."]
    assert (sentences[0].start, sentences[-1].end) == (4, len(text.rstrip()))


def test_offsets_are_characters_not_bytes():
    text = "Café naïve résumé 😀 is here. Ünïcode 𝔘 works. 北京很大。"
    sentences = split_sentences(text)
    assert [s.text for s in sentences] == ["Café naïve résumé 😀 is here.", "Ünïcode 𝔘 works.", "北京很大。"]
    assert_invariants(text, sentences)


def test_characters_blingfire_cannot_take():
    text = "Bonjour\x00le monde. Next \ud800 one."  # NUL ends blingfire's C string; a lone surrogate
    assert texts(text) == ["Bonjour\x00le monde.", "Next \ud800 one."]


def test_detect_language():
    assert detect_language("巴黎是法国的首都。") == "zh"
    assert detect_language("Paris is 巴黎.") == "en"


# --- the anah-v2 segmenter: ANAH-v2's eval/anah_v2/utils.py sentence_tokenize boundaries ---

def anah(text: str, language: str = "en") -> list[str]:
    sentences = split_sentences(text, language, segmenter="anah-v2")
    assert_invariants(text, sentences)
    return [s.text for s in sentences]


def test_anah_v2_english_splits_on_stop_then_whitespace_and_on_newlines():
    assert anah("Paris is big. Berlin is too! Is Rome? Yes; it is.\nLondon\n\nMadrid") == [
        "Paris is big.", "Berlin is too!", "Is Rome?", "Yes;", "it is.", "London", "Madrid"]
    # no whitespace after the stop, no split (unlike the default segmenter)
    assert anah("It is red.It is big.") == ["It is red.It is big."]


def test_anah_v2_english_quirks():
    # a month abbreviation and a number after ". " glue the next sentence on
    assert anah("He was born in Jan. 1950. He died in 2001.") == ["He was born in Jan. 1950. He died in 2001."]
    # a capital initial before a space glues the next word: "U.S. He" is one sentence
    assert anah("J. K. Rowling lives in the U.S. He left. Smith et al. found it. Then A. Next.") == [
        "J. K. Rowling lives in the U.S. He left.", "Smith et al. found it.", "Then A. Next."]
    # a line ending in a colon joins the next line; numbered items keep their number
    assert anah("Facts:\n1. Paris is big.\n2. Rome is old. 3. Oslo is cold.") == [
        "Facts:\n1. Paris is big.", "2. Rome is old.", "3. Oslo is cold."]
    assert anah("1. First.  Brown v. Board was decided. Dr. Smith agreed.") == [
        "1. First.", "Brown v. Board was decided.", "Dr. Smith agreed."]


def test_anah_v2_chinese():
    text = "巴黎是法国的首都。它位于塞纳河畔！你去过吗？好；坏.The end. 列表：\n  一、北京\n\n二、上海"
    assert anah(text, "zh") == ["巴黎是法国的首都。", "它位于塞纳河畔！", "你去过吗？", "好；",
                                "坏.The end. 列表：\n  一、北京", "二、上海"]


def test_anah_v2_offsets_are_exact_with_surrounding_and_inner_whitespace():
    text = "  Note:\t\n  J. K. Rowling wrote it.   It sold well.\n"
    sentences = split_sentences(text, "en", segmenter="anah-v2")
    assert [(s.start, s.end) for s in sentences] == [(2, 34), (37, 50)]
    assert sentences[0].text == "Note:\t\n  J. K. Rowling wrote it."
    # two spaces after an initial are more than its rule allows: there it splits
    assert anah("J.  K. Rowling wrote it.") == ["J.", "K. Rowling wrote it."]


def test_unknown_segmenter_names_the_flag_and_the_choices():
    assert SEGMENTERS == ("default", "anah-v2")
    with pytest.raises(MaskDPOError, match=r"--segmenter.*default, anah-v2"):
        split_sentences("Hello.", segmenter="nltk")


_PIECES = st.sampled_from(["Paris is big.", "Dr.", "e.g.", "U.S.", "J.", "1.", "a)", "- ", "* ", "**Term:**",
                           "# ", "\n", "\n\n", " ", "  ", "。", "！", "巴黎很大", "？", "”", "\"", "...", "!", "?",
                           "Mr. Smith", "3.5", "(1)", "一、", "\t", "😀", "é"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120), st.lists(_PIECES, max_size=25).map("".join)),
       st.sampled_from([None, "en", "zh"]))
def test_invariants_hold_for_any_text(text, language):
    assert_invariants(text, split_sentences(text, language))


_ANAH_PIECES = st.sampled_from(["Paris is big.", "Jan.", "1950.", "J.", "K.", "U.S.", "et al.", "found", "1.",
                                ":", "：", ";", "!", "?", ".", " ", "\n", "\n\n", "\t", "O.S.B.M.", "Brown v.",
                                "Board", "。", "！", "；", "巴黎", "\u3000", "A.", "x"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120), st.lists(_ANAH_PIECES, max_size=25).map("".join)),
       st.sampled_from(["en", "zh"]))
def test_anah_v2_invariants_hold_for_any_text(text, language):
    assert_invariants(text, split_sentences(text, language, segmenter="anah-v2"))

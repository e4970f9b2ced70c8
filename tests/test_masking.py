"""Token masks of Mask-DPO, checked against an independent computation with the real SmolLM2 tokenizer.

The reference in this file locates the content by the generation prompt (not by the
library's sentinel), and decides overlap with character sets (not with interval
arithmetic), so the two implementations share nothing but the tokenizer.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskdpo_cli.errors import InputError
from maskdpo_cli.masking import MASKED_TYPE, run_masks, sentence_spans, tokenize_pair, turn_length

MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]
EOT, PAD = 2, 0
H, OK = "hallucination", "no_hallucination"


@pytest.fixture(scope="session")
def tok():
    from maskdpo_cli.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2-135m-instruct"))


# ------------------------------------------------------------------ helpers

def locate(content: str, sents: list[str]) -> list[list[int]]:
    spans, pos = [], 0
    for sent in sents:
        start = content.index(sent, pos)
        spans.append([start, start + len(sent)])
        pos = start + len(sent)
    return spans


def make_pair(content: str, sents: list[str], chosen_types: list[str], rejected_types: list[str] | None = None,
              *, spans: bool = True, prompt: list[dict] | None = None, pid: str = "p1") -> dict:
    """Chosen and rejected share the content; their labels differ, so each side masks different sentences."""
    rejected_types = rejected_types or chosen_types
    pair = {"id": pid, "prompt": prompt or [{"role": "user", "content": "Tell me about Paris."}],
            "chosen": [{"role": "assistant", "content": content}],
            "rejected": [{"role": "assistant", "content": content}],
            "chosen_item": {"sents": sents, "type": chosen_types},
            "rejected_item": {"sents": sents, "type": rejected_types}}
    if spans:
        for side in ("chosen", "rejected"):
            pair[f"{side}_item"]["spans"] = locate(content, sents)
    return pair


def reference(tok, pair: dict, side: str, use_mask: bool = True):
    """(ids, expected mask, offsets, content start, content end), computed independently."""
    content = pair[side][-1]["content"]
    item = pair[f"{side}_item"]
    masked = ([(s, e) for (s, e), kind in zip(locate(content, item["sents"]), item["type"])
               if kind == MASKED_TYPE[side]] if use_mask else [])
    prefix = tok.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    text = tok.apply_chat_template(pair["prompt"] + pair[side], tokenize=False)
    assert text.startswith(prefix) and text[len(prefix):].startswith(content + "<|im_end|>")
    cs, ce = len(prefix), len(prefix) + len(content)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    expected, eot_seen = [], False
    for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        chars = set(range(a, b))
        if chars & set(range(cs, ce)):
            expected.append(not any(chars & set(range(cs + s, cs + e)) for s, e in masked))
        elif a >= ce and not eot_seen:
            assert tid == EOT
            eot_seen = True
            expected.append(True)
        else:
            expected.append(False)
    assert eot_seen
    return enc["input_ids"], expected, enc["offset_mapping"], cs, ce, text


def check_side(tok, pair: dict, side: str, use_mask: bool = True) -> None:
    resp = getattr(tokenize_pair(tok, pair, use_mask=use_mask), side)
    ids, expected, offsets, cs, ce, text = reference(tok, pair, side, use_mask)
    assert resp.input_ids == ids
    assert resp.loss_mask == expected
    assert not resp.truncated
    content = pair[side][-1]["content"]
    n_turn = turn_length(resp, content)
    eot = resp.response_start + n_turn - 1
    # Nothing before the response, nothing after the end-of-turn token is ever in the loss.
    assert not any(resp.loss_mask[:resp.response_start]) and not any(resp.loss_mask[eot + 1:])
    assert all(b <= cs for a, b in offsets[:resp.response_start])
    assert resp.input_ids[eot] == EOT and resp.loss_mask[eot]
    assert len(resp.token_spans) == len(ids) - resp.response_start
    # The response tokens decode to the content (plus any template character merged into the first one).
    first = offsets[resp.response_start][0] if n_turn > 1 else cs
    decoded = tok.decode(resp.input_ids[resp.response_start:eot], clean_up_tokenization_spaces=False)
    assert decoded == text[first:ce] and text[cs:ce] == content
    for k in range(n_turn - 1):
        a, b = offsets[resp.response_start + k]
        s, e = resp.token_spans[k]
        assert content[s:e] == text[max(a, cs):min(b, ce)] != ""
    assert resp.token_spans[n_turn - 1:] == [(len(content), len(content))] * (len(resp.token_spans) - n_turn + 1)


# ------------------------------------------------------------------ hostile text

HOSTILE = {
    "glued": ("Paris is big.It has 2M people.It is old.", ["Paris is big.", "It has 2M people.", "It is old."]),
    "emoji": ("I love Paris 🎉🇫🇷. It is great 😀! The 👩‍👩‍👧 family lives there.",
              ["I love Paris 🎉🇫🇷.", "It is great 😀!", "The 👩‍👩‍👧 family lives there."]),
    "chinese": ("巴黎是法国的首都。它有两百万人口。埃菲尔铁塔很高！", ["巴黎是法国的首都。", "它有两百万人口。", "埃菲尔铁塔很高！"]),
    "markdown": ("Facts:\n\n1. **Paris** is the capital.\n2. It has 2M people.\n- The Seine flows.\n",
                 ["Facts:", "1. **Paris** is the capital.", "2. It has 2M people.", "- The Seine flows."]),
    "repeated": ("It is big. It is big. It is big. It is big.", ["It is big."] * 4),
    "leading_newlines": ("\n\n  Paris is big. It is old.", ["Paris is big.", "It is old."]),
    "straddle_quote": ('He said "hi." Then he left.', ['He said "hi.', '" Then he left.']),
    "straddle_paren": ("See (a).Then go.", ["See (a", ").Then go."]),
    "wide_gaps": ("Paris is big.   \n\n   It is old.\t\tIt is far.", ["Paris is big.", "It is old.", "It is far."]),
    "fake_eot": ("Stop<|im_end|> here. Go on.", ["Stop<|im_end|> here.", "Go on."]),
    "endoftext_literal": ("Token <|endoftext|> is id 0. It is real.", ["Token <|endoftext|> is id 0.", "It is real."]),
}


def labels(n: int, first_masked: bool) -> list[str]:
    return [H if (i % 2 == 0) == first_masked else OK for i in range(n)]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_text_masks_match_reference(tok, name):
    content, sents = HOSTILE[name]
    for first_masked in (True, False):
        pair = make_pair(content, sents, labels(len(sents), first_masked), labels(len(sents), not first_masked))
        for side in ("chosen", "rejected"):
            check_side(tok, pair, side)
        # The authors' format (no spans) locates the same sentences, so gives the same masks.
        no_spans = make_pair(content, sents, labels(len(sents), first_masked), labels(len(sents), not first_masked),
                             spans=False)
        assert tokenize_pair(tok, no_spans) == tokenize_pair(tok, pair)


def test_token_straddling_a_sentence_boundary_is_out_if_it_touches_a_masked_sentence(tok):
    content, sents = HOSTILE["straddle_quote"]
    pair = make_pair(content, sents, [OK, H])
    resp = tokenize_pair(tok, pair).chosen
    spans = resp.token_spans
    k = next(k for k, (s, e) in enumerate(spans) if content[s:e] == '."')
    assert spans[k][0] < 12 < spans[k][1]  # mostly in the kept sentence, one character in the masked one
    assert resp.loss_mask[resp.response_start + k] is False
    assert resp.loss_mask[resp.response_start + k - 1] is True  # 'hi' is kept


def test_whitespace_between_sentences_and_eot_stay_in_the_loss(tok):
    content, sents = HOSTILE["wide_gaps"]
    resp = tokenize_pair(tok, make_pair(content, sents, [H, H, H])).chosen
    kept = [content[s:e] for (s, e), m in zip(resp.token_spans, resp.loss_mask[resp.response_start:]) if m]
    assert kept and all(not piece.strip() for piece in kept)  # only gaps (and the end-of-turn's empty span)
    assert resp.loss_mask[resp.response_start + turn_length(resp, content) - 1]


def test_token_id_zero_is_an_ordinary_response_token(tok):
    content, sents = HOSTILE["endoftext_literal"]
    resp = tokenize_pair(tok, make_pair(content, sents, [OK, H])).chosen
    i = resp.input_ids.index(PAD, resp.response_start)
    assert resp.loss_mask[i] is True


def test_leading_newline_merges_with_the_template_and_counts_as_response(tok):
    content = "\n  Paris is big."
    pair = make_pair(content, ["Paris is big."], [OK])
    resp = tokenize_pair(tok, pair).chosen
    assert tok.decode([resp.input_ids[resp.response_start]]) == "\n\n "  # the template's newline + the content's
    assert resp.token_spans[0] == (0, 2) and resp.loss_mask[resp.response_start]
    check_side(tok, pair, "chosen")


def test_system_message_and_multi_turn_prompt_are_never_in_the_loss(tok):
    prompt = [{"role": "system", "content": "Be brief. Paris is big."},
              {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Paris is big."},
              {"role": "user", "content": "More?"}]
    pair = make_pair("Paris is big. It is old.", ["Paris is big.", "It is old."], [H, OK], prompt=prompt)
    for side in ("chosen", "rejected"):
        check_side(tok, pair, side)
    resp = tokenize_pair(tok, pair).chosen
    assert "You are a helpful" not in tok.decode(resp.input_ids)  # the given system prompt replaces the default
    assert sum(resp.loss_mask) < len(resp.input_ids) - resp.response_start


def test_empty_content_trains_only_the_end_of_turn(tok):
    pair = make_pair("", [], [])
    resp = tokenize_pair(tok, pair).chosen
    assert [resp.input_ids[i] for i, m in enumerate(resp.loss_mask) if m] == [EOT]
    assert turn_length(resp, "") == 1 and resp.token_spans[0] == (0, 0)


def test_no_item_means_nothing_masked(tok):
    pair = make_pair("Paris is big.", ["Paris is big."], [H])
    del pair["chosen_item"], pair["rejected_item"]
    check = tokenize_pair(tok, pair, use_mask=False)
    assert tokenize_pair(tok, pair) == check


def test_use_mask_false_puts_every_response_token_in(tok):
    content, sents = HOSTILE["markdown"]
    pair = make_pair(content, sents, [H] * len(sents), [OK] * len(sents))
    masked, vanilla = tokenize_pair(tok, pair), tokenize_pair(tok, pair, use_mask=False)
    for side in ("chosen", "rejected"):
        check_side(tok, pair, side, use_mask=False)
        resp = getattr(vanilla, side)
        n = turn_length(resp, content)
        assert all(resp.loss_mask[resp.response_start:resp.response_start + n])
        assert getattr(masked, side).input_ids == resp.input_ids
        # Everything masked but the newlines between the list items and the end-of-turn token.
        kept = [i for i, m in enumerate(getattr(masked, side).loss_mask) if m]
        assert resp.input_ids[kept[-1]] == EOT and {tok.decode([resp.input_ids[i]]) for i in kept[:-1]} == {"\n"}


# ------------------------------------------------------------------ errors

def test_sentence_not_found_names_the_pair_and_sentence():
    with pytest.raises(InputError, match=r"pair 'q-42'.*sentence 1 'Mars is red\.' not found") as err:
        sentence_spans("Paris is big. It is old.", {"sents": ["Paris is big.", "Mars is red."], "type": [OK, H]},
                       "q-42", "chosen")
    assert err.value.field == "chosen_item.sents[1]"


def test_sentences_found_in_order_only(tok):
    # Present in the content, but before the previous sentence: order matters, no silent reordering.
    pair = make_pair("A is b. C is d.", ["C is d.", "A is b."], [OK, H], spans=False, pid="swap")
    with pytest.raises(InputError, match="pair 'swap'"):
        tokenize_pair(tok, pair)
    # Even with use_mask=False: the DPO baseline trains on exactly the pairs Mask-DPO accepts.
    with pytest.raises(InputError, match="pair 'swap'"):
        tokenize_pair(tok, pair, use_mask=False)


def test_repeated_sentences_land_on_successive_occurrences():
    content = "It is big. It is big. It is big."
    out = sentence_spans(content, {"sents": ["It is big."] * 3, "type": [OK, H, OK]}, "p", "chosen")
    assert out == [(0, 10, False), (11, 21, True), (22, 32, False)]
    out = sentence_spans(content, {"sents": ["It is big."] * 3, "type": [OK, H, OK]}, "p", "rejected")
    assert [m for _, _, m in out] == [True, False, True]


def test_wrong_span_is_refused():
    item = {"sents": ["Paris is big."], "type": [H], "spans": [[1, 14]]}
    with pytest.raises(InputError, match="pair 'p'"):
        sentence_spans("Paris is big.", item, "p", "chosen")


# ------------------------------------------------------------------ truncation

def test_truncation_keeps_the_masks_of_remaining_tokens(tok):
    content, sents = HOSTILE["glued"]
    pair = make_pair(content, sents, [OK, H, OK], [H, OK, H])
    full = tokenize_pair(tok, pair)
    for side in ("chosen", "rejected"):
        whole = getattr(full, side)
        n = len(whole.input_ids)
        for max_length in range(whole.response_start + 1, n + 2):
            cut = getattr(tokenize_pair(tok, pair, max_length=max_length), side)
            keep = min(max_length, n)
            assert cut.input_ids == whole.input_ids[:keep]
            assert cut.loss_mask == whole.loss_mask[:keep]
            assert cut.token_spans == whole.token_spans[:keep - whole.response_start]
            assert cut.response_start == whole.response_start
            # Truncated means the turn lost tokens; dropping the template's trailing newline is not.
            assert cut.truncated == (max_length < n - 1)


def test_prompt_longer_than_max_length_is_an_error_naming_the_pair(tok):
    pair = make_pair("Paris is big.", ["Paris is big."], [OK], pid="long-prompt")
    start = tokenize_pair(tok, pair).chosen.response_start
    with pytest.raises(InputError, match="pair 'long-prompt'.*no room"):
        tokenize_pair(tok, pair, max_length=start)


# ------------------------------------------------------------------ property test

ALPHABET = st.sampled_from(list("abcXYZ019 .,!?;:'\"()-*#\n\t") + ["  ", "\n\n", "é", "ß", "😀", "🇫🇷", "巴", "黎", "。", "！", "\u200b"])


@st.composite
def split_texts(draw):
    text = "".join(draw(st.lists(ALPHABET, max_size=40)))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=8))))
    bounds = [0, *cuts, len(text)]
    spans = [(a, b) for a, b in zip(bounds, bounds[1:])]
    keep = draw(st.lists(st.booleans(), min_size=len(spans), max_size=len(spans)))
    spans = [span for span, k in zip(spans, keep) if k]  # dropped spans leave text outside any sentence
    chosen = draw(st.lists(st.sampled_from([H, OK]), min_size=len(spans), max_size=len(spans)))
    rejected = draw(st.lists(st.sampled_from([H, OK]), min_size=len(spans), max_size=len(spans)))
    return text, spans, chosen, rejected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split_texts())
def test_masked_tokens_are_exactly_those_overlapping_masked_sentences(tok, case):
    text, spans, chosen, rejected = case
    sents = [text[a:b] for a, b in spans]
    pair = make_pair(text, sents, chosen, rejected)
    for side in ("chosen", "rejected"):
        pair[f"{side}_item"]["spans"] = [list(s) for s in spans]  # exact, even for empty or repeated sentences
    result = tokenize_pair(tok, pair)
    for side, types in (("chosen", chosen), ("rejected", rejected)):
        resp = getattr(result, side)
        masked = [set(range(a, b)) for (a, b), kind in zip(spans, types) if kind == MASKED_TYPE[side]]
        n = turn_length(resp, text)
        prefix = tok.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
        enc = tok(prefix, add_special_tokens=False)
        assert not any(resp.loss_mask[:resp.response_start])
        assert resp.response_start >= len(enc["input_ids"]) - 1  # at most the template's last newline merges
        assert not any(resp.loss_mask[resp.response_start + n:])
        assert resp.input_ids[resp.response_start + n - 1] == EOT and resp.loss_mask[resp.response_start + n - 1]
        for k in range(n - 1):
            s, e = resp.token_spans[k]
            assert e > s
            touches = any(set(range(s, e)) & m for m in masked)
            assert resp.loss_mask[resp.response_start + k] == (not touches)


# ------------------------------------------------------------------ `maskdpo masks`

@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    records = [make_pair(*HOSTILE["glued"], [OK, H, OK], [H, OK, H], pid="a"),
               make_pair(*HOSTILE["emoji"], [H, OK, OK], [OK, H, H], spans=False, pid="b")]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path, records


def test_masks_json_cli_gives_per_token_records(tok, pairs_file):
    path, records = pairs_file
    proc = subprocess.run([*MASKDPO, "masks", str(path), "--model", "smollm2-135m-instruct", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["id"] for line in lines] == ["a", "b"]
    for line, pair in zip(lines, records):
        expected = tokenize_pair(tok, pair)
        for side in ("chosen", "rejected"):
            content, tokens = pair[side][-1]["content"], line[side]["tokens"]
            resp = getattr(expected, side)
            assert [t["in_loss"] for t in tokens] == resp.loss_mask[resp.response_start:resp.response_start + len(tokens)]
            assert set(tokens[0]) == {"id", "text", "start", "end", "in_loss"}
            assert tokens[-1]["id"] == EOT and tokens[-1]["in_loss"] and tokens[-1]["start"] == len(content)
            covered = "".join(content[max(t["start"], prev["end"] if prev else 0):t["end"]]
                              for prev, t in zip([None, *tokens], tokens))
            assert covered == content  # the offsets slice the content, in order, without gaps
            assert all(t["text"] == content[t["start"]:t["end"]] for t in tokens[:-1] if "\ufffd" not in t["text"])


def test_masks_colored_view_and_bad_pair(tok, pairs_file, capsys, tmp_path):
    path, _ = pairs_file
    run_masks(str(path), "smollm2-135m-instruct", as_json=False)
    out = capsys.readouterr()
    assert "It has 2M people." in out.out and "chosen" in out.out and "tokens in the loss" in out.err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(make_pair("A is b.", ["Z."], [H], spans=False, pid="zz")) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:1.*pair 'zz'"):
        run_masks(str(bad), "smollm2-135m-instruct", as_json=True)


# ------------------------------------------------------------------ other chat templates

def with_template(tok, template: str):
    import copy

    other = copy.deepcopy(tok)
    other.chat_template = template
    return other


TRIMMING = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
            "{% endfor %}")


def test_template_that_trims_the_content_keeps_offsets_into_the_original(tok):
    trimming = with_template(tok, TRIMMING)
    content = "  \nParis is big. It is old.\n\n"
    resp = tokenize_pair(trimming, make_pair(content, ["Paris is big.", "It is old."], [H, OK])).chosen
    n = turn_length(resp, content)
    pieces = [content[s:e] for s, e in resp.token_spans[:n - 1]]
    assert "".join(pieces) == content.strip()
    assert resp.token_spans[0][0] == 3 and resp.token_spans[n - 1] == (len(content), len(content))
    kept = "".join(p for p, m in zip(pieces, resp.loss_mask[resp.response_start:]) if m)
    assert kept == " It is old."
    assert resp.input_ids[resp.response_start + n - 1] == EOT and resp.loss_mask[resp.response_start + n - 1]


def test_template_that_rewrites_the_content_is_refused_naming_the_pair(tok):
    upper = with_template(tok, TRIMMING.replace("m['content'] | trim", "m['content'] | upper"))
    with pytest.raises(InputError, match="pair 'up'.*verbatim"):
        tokenize_pair(upper, make_pair("Paris is big.", ["Paris is big."], [OK], pid="up"))


def test_template_without_end_of_turn_is_refused(tok):
    from maskdpo_cli.errors import MaskDPOError

    bare = with_template(tok, "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    with pytest.raises(MaskDPOError, match="end-of-turn"):
        tokenize_pair(bare, make_pair("Paris is big.", ["Paris is big."], [OK]))


# ------------------------------------------------------------------ `pair --unit span`, `--nofact neutral`

def annotated_response(index: int, sentences: list[tuple[str, str, list[tuple[str, str]]]], sep: str = " ") -> dict:
    """A response from (sentence, label, [(value, span label), ...]); each value is found in order in its sentence."""
    text, out = "", []
    for sentence, label, values in sentences:
        if text:
            text += sep
        start = len(text)
        text += sentence
        sent = {"start": start, "end": len(text), "text": sentence, "label": label}
        pos, spans = start, []
        for value, span_label in values:
            at = text.index(value, pos)
            spans.append({"start": at, "end": at + len(value), "label": span_label})
            pos = at + len(value)
        if spans:
            sent["spans"] = spans
        out.append(sent)
    return {"index": index, "text": text, "sentences": out}


# Several spans per sentence; a wrong value at a sentence's start ("1815") and at its very end ("Rome",
# which ends the response); a long value split across tokens ("Quellingtonshire"); adjacent spans with
# different labels ("1815", "-12", "-10" and "一位", "画家"); sentences without spans; Chinese without
# spaces between sentences; filler.
SPAN_RESPONSES = {
    "en": (
        annotated_response(0, [
            ("1815 was the year Ada was born.", "contradictory", [("1815", "contradictory"), ("Ada", "ok")]),
            ("She lived in Quellingtonshire.", "ok", [("Quellingtonshire", "ok")]),
            ("Her birthday is 1815-12-10.", "contradictory", [("1815", "ok"), ("-12", "contradictory"), ("-10", "ok")]),
            ("I hope this helps.", "nofact", []),
        ]),
        annotated_response(1, [
            ("Ada was born in Paris.", "ok", []),
            ("She painted in Quellingtonshire.", "unverifiable", [("Quellingtonshire", "unverifiable")]),
            ("Many admire her.", "nofact", []),
            ("Her home: Rome", "contradictory", [("Rome", "contradictory")]),
        ]),
    ),
    "zh": (
        annotated_response(0, [
            ("阿达出生于伦敦，她是一位数学家。", "ok", [("伦敦", "ok"), ("数学家", "ok")]),
            ("她住在巴黎。", "contradictory", [("巴黎", "contradictory")]),
        ], sep=""),
        annotated_response(1, [
            ("阿达出生于罗马，她是一位画家。", "contradictory",
             [("罗马", "contradictory"), ("一位", "ok"), ("画家", "contradictory")]),
            ("我希望这有帮助。", "nofact", []),
        ], sep=""),
    ),
}


def expected_in_loss(resp: dict, side: str, nofact: str, start: int, end: int) -> bool:
    """The brief's span rule, from the annotated sentences and character sets (not from the pair's pieces)."""
    if start == end == len(resp["text"]):
        return True  # the end-of-turn token
    chars = set(range(start, max(end, start + 1)))
    wrong, right, filler = set(), set(), set()
    for sent in resp["sentences"]:
        whole = set(range(sent["start"], sent["end"]))
        if sent["label"] == "nofact":
            (filler if nofact == "neutral" else right).update(whole)
        elif "spans" in sent:
            bad = {c for s in sent["spans"] if s["label"] != "ok" for c in range(s["start"], s["end"])}
            wrong |= bad
            right |= whole - bad
        else:
            (right if sent["label"] == "ok" else wrong).update(whole)
    if chars & filler:
        return False
    if side == "chosen":
        return not chars & wrong
    return bool(chars & wrong) or not chars & right


@pytest.fixture(scope="module")
def corpus_tokenizer_dir(tmp_path_factory):
    """A second real tokenizer: the world policy's byte-level BPE, trained here on text that shares the values."""
    from maskdpo_cli.world.pretraining import build_tokenizer

    # Not the test's own texts: their long values must stay split across tokens.
    texts = ["Ada Lovelace was born in London in 1815. She lived in Paris. Her home is in Rome.",
             "I hope this helps. Many people admire her. She painted in the year 1816.",
             "她是一位数学家，住在伦敦。我希望这有帮助。"] * 20
    out = tmp_path_factory.mktemp("corpus_tokenizer")
    build_tokenizer(texts, vocab_size=400).save_pretrained(out)
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return out


def span_pairs_file(tmp_path, nofact: str = "correct"):
    src = tmp_path / "annotated.jsonl"
    src.write_text("".join(json.dumps({"id": lang, "question": "Who is Ada?", "responses": list(resps)},
                                      ensure_ascii=False) + "\n" for lang, resps in SPAN_RESPONSES.items()),
                   encoding="utf-8")
    pairs = tmp_path / f"pairs_{nofact}.jsonl"
    proc = subprocess.run([*MASKDPO, "pair", str(src), "--unit", "span", "--nofact", nofact, "-o", str(pairs)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return pairs


def masks_json(pairs, model: str) -> list[dict]:
    proc = subprocess.run([*MASKDPO, "masks", str(pairs), "--model", model, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def value_tokens(tokens: list[dict], content: str, value: str, occurrence: int = 0) -> list[dict]:
    at = -1
    for _ in range(occurrence + 1):
        at = content.index(value, at + 1)
    return [t for t in tokens if t["start"] < at + len(value) and at < t["end"]]


@pytest.mark.parametrize("nofact", ["correct", "neutral"])
@pytest.mark.parametrize("model", ["smollm2", "corpus_bpe"])
def test_span_masks_token_by_token_on_two_tokenizers(tmp_path, corpus_tokenizer_dir, model, nofact):
    model_arg = "smollm2-135m-instruct" if model == "smollm2" else str(corpus_tokenizer_dir)
    lines = masks_json(span_pairs_file(tmp_path, nofact), model_arg)
    assert [line["id"] for line in lines] == ["en", "zh"]
    for line in lines:
        chosen, rejected = SPAN_RESPONSES[line["id"]]
        for side, resp in (("chosen", chosen), ("rejected", rejected)):
            tokens = line[side]["tokens"]
            got = [t["in_loss"] for t in tokens]
            assert got == [expected_in_loss(resp, side, nofact, t["start"], t["end"]) for t in tokens], side
            assert got[-1] is True and tokens[-1]["start"] == len(resp["text"])
    en_chosen, en_rejected = lines[0]["chosen"]["tokens"], lines[0]["rejected"]["tokens"]
    text_c, text_r = SPAN_RESPONSES["en"][0]["text"], SPAN_RESPONSES["en"][1]["text"]
    # A wrong value at the start: out of the chosen loss; the rest of its sentence ("Ada" included) stays in.
    assert not any(t["in_loss"] for t in value_tokens(en_chosen, text_c, "1815"))
    assert all(t["in_loss"] for t in value_tokens(en_chosen, text_c, " was the year Ada was born."))
    # Adjacent spans: only the tokens touching "-12" are out of the chosen loss.
    out = [t for t in value_tokens(en_chosen, text_c, "1815-12-10", 0) if not t["in_loss"]]
    assert out == value_tokens(en_chosen, text_c, "-12")
    # A value split across tokens: every piece of it, and nothing else of its sentence, is in the rejected loss.
    split = value_tokens(en_rejected, text_r, "Quellingtonshire")
    assert len(split) >= 2 and all(t["in_loss"] for t in split)
    sentence = value_tokens(en_rejected, text_r, "She painted in Quellingtonshire.")
    assert [t for t in sentence if t["in_loss"]] == split
    # A wrong value at the very end: in the rejected loss, then the end-of-turn token.
    assert all(t["in_loss"] for t in value_tokens(en_rejected, text_r, "Rome")) and en_rejected[-1]["in_loss"]
    assert not any(t["in_loss"] for t in value_tokens(en_rejected, text_r, "Her home:"))
    # The sentence without spans keeps the sentence rule; filler follows --nofact.
    assert not any(t["in_loss"] for t in value_tokens(en_rejected, text_r, "Ada was born in Paris."))
    filler_in = [t["in_loss"] for t in value_tokens(en_chosen, text_c, "I hope this helps.")]
    assert set(filler_in) == ({True} if nofact == "correct" else {False})
    # Chinese: the wrong values of the rejected side are its only content tokens in the loss.
    zh_rejected, text_z = lines[1]["rejected"]["tokens"], SPAN_RESPONSES["zh"][1]["text"]
    kept = [t for t in zh_rejected[:-1] if t["in_loss"]]
    assert kept == value_tokens(zh_rejected, text_z, "罗马") + value_tokens(zh_rejected, text_z, "画家")


def test_span_pair_without_the_pairing_field_keeps_the_sentence_rule(tok, tmp_path):
    pair = json.loads(span_pairs_file(tmp_path).read_text().splitlines()[0])
    with_field = tokenize_pair(tok, pair)
    del pair["pairing"]
    plain = tokenize_pair(tok, pair)
    assert plain.chosen == with_field.chosen  # the chosen side is the same either way
    # On the rejected side a token touching a wrong span and the text before it (" Rome") is the span's
    # only in a span pair; the sentence rule masks it.
    assert plain.rejected.loss_mask != with_field.rejected.loss_mask


def test_masks_colored_view_names_the_pairing(tmp_path, capsys):
    run_masks(str(span_pairs_file(tmp_path, "neutral")), "smollm2-135m-instruct", as_json=False)
    out = capsys.readouterr().out
    assert "by span, no-fact neutral" in out and "Her home: Rome" in out

"""Which tokens of a preference pair enter the DPO log-ratio sums (docs/design.md, "Masking semantics").

One rule, applied over the exact text that is trained on:

1. Render the whole conversation (prompt + assistant turn) with the model's chat template,
   find the assistant content in it, and check by string equality that it is there verbatim.
2. Tokenize that text once, with the fast tokenizer's offset mapping.
3. A token is a *response token* iff its character span overlaps the content. A response
   token is out of the loss iff its span overlaps a masked sentence (the hallucinated
   sentences of chosen, the hallucination-free ones of rejected; "no_fact" pieces, from
   `pair --nofact neutral`, on both sides). The first token after
   the content (the end-of-turn token) is in the loss. Everything else (system prompt,
   user turns, template markup, whatever the template appends after the end-of-turn
   token) never is.

Decisions:

- A token that straddles the content start (BPE merging the template's newline with a
  content that begins with whitespace) overlaps the content, so it is a response token;
  its span in the content is clipped to start at 0.
- Templates that trim the content (Llama 3 does `content | trim`) are handled: the trimmed
  content is located, and offsets still point into the original, untrimmed content.
- Truncation to `max_length` cuts from the right and keeps the whole prompt: the template
  tail first, then the end-of-turn token, then response tokens. The mask of every kept
  token is unchanged (it was computed on the full text). A prompt that leaves no room for
  a single response token is an InputError naming the pair: cutting the prompt would
  train on a context the model never sees and silently change the pair.
- The sentences are located and checked even with `use_mask=False`, so a DPO baseline
  trains on exactly the pairs that Mask-DPO accepts.
- The mask is a list of booleans; no label value encodes it (token id 0 is a real token).
- Pairs made with `pair --unit span` (`"pairing": {"unit": "span"}`) list finer pieces in
  the same item lists: wrong fact spans as "hallucination" pieces, the rest of their
  sentence as "no_hallucination" (pairing.py). The same rule applies, with one addition:
  a token that touches a wrong piece belongs to it. On the chosen side that changes
  nothing (it is masked either way); on the rejected side such a token stays in the loss
  even where it also touches the sentence around the span (" Paris" with its leading
  space), which is what "only the tokens of wrong spans enter the loss" means. Pairs
  without that field keep the sentence rule exactly.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from maskdpo_cli.errors import InputError, MaskDPOError

# Which item type is masked out of the loss on each side (paper Eq. 5-6).
MASKED_TYPE = {"chosen": "hallucination", "rejected": "no_hallucination"}
# All masked types per side: "no_fact" pieces (`pair --nofact neutral`) are out on both.
MASKED_TYPES = {side: frozenset({kind, "no_fact"}) for side, kind in MASKED_TYPE.items()}
# Private-use characters: no chat template touches them, no content is likely to hold them.
_SENTINEL = "\ue000\ue001\ue002\ue003"


@dataclass
class TokenizedResponse:
    input_ids: list[int]  # the whole templated conversation, tokenized once
    loss_mask: list[bool]  # True where the token's log-prob enters the DPO log-ratio sum
    response_start: int  # first token overlapping the assistant content
    # For every token from response_start on: (start, end) into the content; (len, len) from the end-of-turn on.
    token_spans: list[tuple[int, int]]
    truncated: bool  # max_length cut into the assistant turn (its end-of-turn token at least)


@dataclass
class TokenizedPair:
    id: str
    chosen: TokenizedResponse
    rejected: TokenizedResponse


# --------------------------------------------------------------------------- sentences

def sentence_spans(content: str, item: dict | None, pair_id: str, side: str) -> list[tuple[int, int, bool]]:
    """(start, end, masked?) per sentence (or piece) of one side, as character offsets into `content`."""
    return [(start, end, kind in MASKED_TYPES[side]) for start, end, kind in piece_spans(content, item, pair_id, side)]


def piece_spans(content: str, item: dict | None, pair_id: str, side: str) -> list[tuple[int, int, str]]:
    """(start, end, type) per sentence (or piece) of one side, as character offsets into `content`.

    Uses item["spans"] when present (checked against the sentences); otherwise locates each
    sentence in order, searching from the end of the previous one (the authors' format), so
    repeated identical sentences land on successive occurrences.
    """
    if item is None:
        return []
    sents, types = item.get("sents") or [], item.get("type") or []
    if len(sents) != len(types):
        raise _pair_error(pair_id, f"{side}_item", f"has {len(sents)} sents but {len(types)} types")
    spans = item.get("spans")
    if spans is not None and len(spans) != len(sents):
        raise _pair_error(pair_id, f"{side}_item.spans", f"has {len(spans)} spans for {len(sents)} sents")
    out: list[tuple[int, int, str]] = []
    previous_end = 0
    for j, (sent, kind) in enumerate(zip(sents, types)):
        if spans is not None:
            start, end = spans[j]
            if not 0 <= start <= end <= len(content) or content[start:end] != sent:
                raise _pair_error(pair_id, f"{side}_item.spans[{j}]",
                                  f"span [{start}, {end}) does not hold sentence {j} in the {side} content")
        else:
            start = content.find(sent, previous_end)
            if start < 0:
                raise _pair_error(pair_id, f"{side}_item.sents[{j}]",
                                  f"sentence {j} {_short(sent)} not found in the {side} content "
                                  f"after character {previous_end}")
            end = start + len(sent)
        out.append((start, end, kind))
        previous_end = end
    return out


def _pair_error(pair_id: str, field: str, message: str) -> InputError:
    return InputError(f"pair {pair_id!r}: {message}", field=field)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def overlaps(a: int, b: int, start: int, end: int) -> bool:
    """Whether the token span [a, b) shares at least one character with [start, end)."""
    # A zero-width token (never seen in content, but possible) counts as covering its position.
    return max(a, start) < min(max(b, a + 1), end)


# --------------------------------------------------------------------------- alignment

def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise MaskDPOError("the model's tokenizer has no chat template; use an instruct/chat model")
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _locate_content(tokenizer: Any, history: list[dict[str, str]], content: str,
                    pair_id: str, side: str) -> tuple[str, int, int, int]:
    """(templated text, content start and end in it, how many leading characters the template trimmed)."""
    text = _render(tokenizer, history + [{"role": "assistant", "content": content}])
    probe = _render(tokenizer, history + [{"role": "assistant", "content": _SENTINEL}])
    if probe.count(_SENTINEL) != 1:
        raise MaskDPOError("cannot find where the chat template puts the assistant content")
    before, after = probe.split(_SENTINEL)
    stripped = content.strip()
    for rendered, lead in ((content, 0), (stripped, len(content) - len(content.lstrip()))):
        if text == before + rendered + after:
            return text, len(before), len(before) + len(rendered), lead
    raise InputError(f"pair {pair_id!r}: the chat template does not render the {side} content verbatim; "
                     "cannot align its tokens", field=side)


def _is_special(tokenizer: Any, token_id: int) -> bool:
    added = tokenizer.added_tokens_decoder.get(token_id)
    return token_id in tokenizer.all_special_ids or (added is not None and added.special)


def tokenize_response(tokenizer: Any, history: list[dict[str, str]], content: str,
                      masked: list[tuple[int, int]], pair_id: str, side: str,
                      max_length: int | None = None, kept: list[tuple[int, int]] = ()) -> TokenizedResponse:
    """Tokenize history + the assistant `content` once; mask the tokens overlapping `masked` spans.

    A token that overlaps a `kept` span stays in the loss even when it also overlaps a masked one.
    """
    text, cs, ce, lead = _locate_content(tokenizer, history, content, pair_id, side)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]

    # First token that reaches into the content (or, for empty content, begins at it).
    start = next((i for i, (a, b) in enumerate(offsets) if b > cs or a >= cs), len(ids))
    n_content = sum(1 for a, b in offsets[start:] if a < ce and overlaps(a, b, cs, ce))
    eot = start + n_content
    if eot >= len(ids) or not _is_special(tokenizer, ids[eot]):
        raise MaskDPOError("the chat template puts no end-of-turn token right after the assistant content; "
                           "cannot tell where the response ends")

    length = len(content)
    spans: list[tuple[int, int]] = []
    mask: list[bool] = [False] * len(ids)
    for i in range(start, len(ids)):
        if i < eot:
            a, b = offsets[i]
            # Offsets into the original content; clip a straddling token to the content.
            span = (max(a, cs) - cs + lead, min(b, ce) - cs + lead)
            mask[i] = (not any(overlaps(*span, s, e) for s, e in masked)
                       or any(overlaps(*span, s, e) for s, e in kept))
        else:
            span = (length, length)
            mask[i] = i == eot
        spans.append(span)

    truncated = False
    if max_length is not None and len(ids) > max_length:
        if start >= max_length:
            raise InputError(f"pair {pair_id!r}: the prompt is {start} tokens, max_length {max_length} "
                             f"leaves no room for the {side} response", field="prompt")
        truncated = eot >= max_length
        ids, mask, spans = ids[:max_length], mask[:max_length], spans[:max_length - start]
    return TokenizedResponse(ids, mask, start, spans, truncated)


def tokenize_pair(tokenizer: Any, pair: dict, *, max_length: int | None = None,
                  use_mask: bool = True) -> TokenizedPair:
    """Both sides of a pair record, tokenized with their loss masks (use_mask=False: vanilla DPO)."""
    pair_id = str(pair.get("id"))
    sides = {}
    for side in ("chosen", "rejected"):
        messages = pair[side]
        content = messages[-1]["content"]
        pieces = piece_spans(content, pair.get(f"{side}_item"), pair_id, side)
        masked = [(s, e) for s, e, kind in pieces if kind in MASKED_TYPES[side]] if use_mask else []
        # Span pairs: a token touching a wrong span is the span's (module docstring); only the
        # rejected side needs saying so, the chosen side masks it anyway.
        kept = ([(s, e) for s, e, kind in pieces if kind == "hallucination"]
                if use_mask and side == "rejected" and split_by_spans(pair) else [])
        history = list(pair["prompt"]) + list(messages[:-1])
        sides[side] = tokenize_response(tokenizer, history, content, masked, pair_id, side, max_length, kept)
    return TokenizedPair(pair_id, sides["chosen"], sides["rejected"])


def split_by_spans(pair: dict) -> bool:
    """Whether the pair's items list fact spans (made by `pair --unit span`)."""
    pairing = pair.get("pairing")
    return isinstance(pairing, dict) and pairing.get("unit") == "span"


def turn_length(resp: TokenizedResponse, content: str) -> int:
    """How many tokens from response_start belong to the assistant turn: content tokens + end-of-turn."""
    n_content = sum(1 for a, _ in resp.token_spans if a < len(content))
    return min(n_content + 1, len(resp.token_spans))


# --------------------------------------------------------------------------- `maskdpo masks`

def token_records(tokenizer: Any, resp: TokenizedResponse, content: str) -> list[dict[str, Any]]:
    """The brief's per-token records for every token of the assistant turn (content + end-of-turn)."""
    out = []
    for k in range(turn_length(resp, content)):
        i = resp.response_start + k
        start, end = resp.token_spans[k]
        text = tokenizer.decode([resp.input_ids[i]], clean_up_tokenization_spaces=False)
        out.append({"id": resp.input_ids[i], "text": text, "start": start, "end": end,
                    "in_loss": resp.loss_mask[i]})
    return out


def _render_side(tokens: list[dict[str, Any]], content: str) -> Any:
    from rich.text import Text

    view = Text()
    shown = 0  # byte-level pieces of one character share its span: show each character once
    for k, tok in enumerate(tokens):
        # Alternating shades make token boundaries visible without changing the text.
        shade = "" if k % 2 == 0 else "dark_"
        style = f"{shade}green" if tok["in_loss"] else f"strike {shade}red"
        if tok["start"] == tok["end"] == len(content):
            view.append(tok["text"], style=style)
            continue
        piece = content[max(tok["start"], shown):tok["end"]]
        shown = max(shown, tok["end"])
        view.append(piece, style=style)
    return view


def _counts(tokens: list[dict[str, Any]]) -> tuple[int, int]:
    return sum(t["in_loss"] for t in tokens), len(tokens)


def run_masks(pairs: str, model: str, *, as_json: bool, use_mask: bool = True,
              max_length: int | None = None) -> None:
    """`maskdpo masks`: print which response tokens enter the loss, as colored text or per-token JSON."""
    from rich.console import Console

    from maskdpo_cli.jsonl import display_name, dumps
    from maskdpo_cli.models import load_tokenizer, resolve_model
    from maskdpo_cli.progress import stderr
    from maskdpo_cli.records import iter_records

    # Every pair is read and aligned before anything is printed: bad input prints nothing.
    records = list(iter_records(pairs, "pairs"))
    tokenizer = load_tokenizer(resolve_model(model))
    tokenized = []
    for line, pair in records:
        try:
            tokenized.append(tokenize_pair(tokenizer, pair, max_length=max_length, use_mask=use_mask))
        except InputError as err:
            raise InputError(err.message, display_name(pairs), line, err.field) from None
    console = Console(highlight=False, soft_wrap=True)
    totals = {"chosen": [0, 0], "rejected": [0, 0]}
    n_pairs = n_truncated = 0
    for (_, pair), tp in zip(records, tokenized):
        record: dict[str, Any] = {"id": tp.id}
        for side in ("chosen", "rejected"):
            resp, content = getattr(tp, side), pair[side][-1]["content"]
            record[side] = {"tokens": token_records(tokenizer, resp, content)}
            kept, total = _counts(record[side]["tokens"])
            totals[side][0] += kept
            totals[side][1] += total
        n_pairs += 1
        n_truncated += tp.chosen.truncated or tp.rejected.truncated
        if as_json:
            sys.stdout.write(dumps(record) + "\n")
            sys.stdout.flush()
        else:
            _print_pair(console, record, pair)
    summary = ", ".join(f"{side} {kept}/{total} tokens in the loss" for side, (kept, total) in totals.items())
    stderr.print(f"{n_pairs} pair{'s' if n_pairs != 1 else ''}: {summary}" + (f"; {n_truncated} truncated" if n_truncated else ""))


def _print_pair(console: Any, record: dict[str, Any], pair: dict[str, Any]) -> None:
    from rich.markup import escape

    # The id is the input's text: escaped, so "[/]" in it is shown, not read as markup.
    pairing = pair.get("pairing")
    # Which rule made the masks: the paper's (sentences, no-fact correct) unless the pair says otherwise.
    how = (f", by {escape(str(pairing.get('unit')))}, no-fact {escape(str(pairing.get('nofact')))}"
           if isinstance(pairing, dict) else "")
    console.print(f"[bold]{escape(record['id'])}[/]  ([green]in the loss[/], [strike red]masked[/]{how})", emoji=False)
    for side in ("chosen", "rejected"):
        kept, total = _counts(record[side]["tokens"])
        console.print(f"[bold cyan]{side}[/] {kept}/{total} tokens in the loss")
        console.print(_render_side(record[side]["tokens"], pair[side][-1]["content"]))
    console.print()

"""How often the authors' sentence-to-token mapping goes wrong, against maskdpo's offset alignment.

The authors' release maps sentences to tokens by encoding each sentence on its own and
adding the lengths; when the sum differs from the number of response tokens it trains
the pair unmasked (vanilla DPO). maskdpo aligns with the offset mapping of the exact
templated text instead. This script measures both against the ground truth "a token is
masked iff it overlaps a masked sentence", on the same answers and random labels:

    .venv/bin/python benchmarks/anchor_alignment.py                 # hand-made answers (seconds)
    .venv/bin/python benchmarks/anchor_alignment.py --generate 13 --save-answers answers.jsonl
                                                                    # + 13 questions x 4 SmolLM2 answers
    .venv/bin/python benchmarks/anchor_alignment.py --answers answers.jsonl   # reuse them

Sentences come from blingfire (as an annotator would split them); each draw labels every
sentence hallucinated with probability 1/2 and masks those (the chosen side's rule).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskdpo_cli.masking import tokenize_pair, turn_length  # noqa: E402
from maskdpo_cli.models import load_tokenizer, resolve_model  # noqa: E402

HAND_MADE = [
    "Paris is the capital of France. It has about 2.1 million inhabitants. The Eiffel Tower was built in 1889.",
    "Paris is big.It has 2M people.It is on the Seine.",
    "Marie Curie was born in Warsaw in 1867. She won two Nobel Prizes. Her husband was Pierre Curie.",
    "Ada Lovelace (1815-1852) was an English mathematician. Dr. Babbage designed the Analytical Engine. "
    "She wrote the first published algorithm.",
    "Here are some facts:\n\n1. The Nile is about 6,650 km long.\n2. It flows through eleven countries.\n"
    "3. Its delta is in Egypt.",
    "Key points:\n- Mount Everest is 8,849 m tall.\n- It lies on the border of Nepal and China.\n"
    "- It was first climbed in 1953.",
    "Albert Einstein developed the theory of relativity. He received the Nobel Prize in 1921 \"for his "
    "services to theoretical physics.\" He died in Princeton.",
    "The Great Wall of China is over 21,000 km long! Was it visible from space? No, not with the naked eye.",
    "巴黎是法国的首都。它有大约两百万人口。埃菲尔铁塔建于1889年。",
    "Tokyo is Japan's capital 🗼. Its metro area has ~37M people 😮. It hosted the 1964 Olympics.",
    "Shakespeare wrote 39 plays. Hamlet is one of them. Hamlet is one of them. He died in 1616.",
    "**Isaac Newton** was born in 1643.\n\nHe formulated the laws of motion.\n\nHe was president of the "
    "Royal Society.",
    "The speed of light is 299,792 km/s. Sound travels at ~343 m/s (in air). Light is faster.",
    "Leonardo da Vinci painted the Mona Lisa; it hangs in the Louvre. He was also an engineer...He lived in Milan.",
]

# Sentence lengths applied in order (boundary drift); the same plus the release's fallback to
# no mask at all when the lengths do not add up; maskdpo's offset alignment.
METHODS = ("anchor: per-sentence lengths", "anchor as released (unmasked on mismatch)", "maskdpo")

QUESTIONS = [
    "Who was Ada Lovelace?", "Tell me about the city of Lyon.", "Who was Nikola Tesla?",
    "What is the Amazon River known for?", "Who was Marie Curie?", "Tell me about Mount Kilimanjaro.",
    "Who was Johann Sebastian Bach?", "What is the history of the Great Wall of China?",
    "Who was Alan Turing?", "Tell me about the Sahara desert.", "Who was Frida Kahlo?",
    "Tell me about the city of Kyoto.", "Who was Charles Darwin?",
]


def blingfire_sentences(text: str) -> list[tuple[int, int]]:
    import blingfire

    _, offsets = blingfire.text_to_sentences_and_offsets(text)
    return [(s, e) for s, e in offsets if text[s:e].strip()]


def generate_answers(model_path: Path, tokenizer, n_questions: int, per_question: int, seed: int) -> list[str]:
    import torch

    from maskdpo_cli.models import chat_prompt_text, load_causal_lm

    torch.manual_seed(seed)
    model = load_causal_lm(model_path)
    answers = []
    for question in QUESTIONS[:n_questions]:
        prompt = chat_prompt_text(tokenizer, [{"role": "user", "content": question}])
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=0.8, top_k=40, max_new_tokens=160,
                                 num_return_sequences=per_question, pad_token_id=tokenizer.pad_token_id)
        for seq in out:
            text = tokenizer.decode(seq[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            if text:
                answers.append(text)
        print(f"  generated for {question!r}", file=sys.stderr)
    return answers


def anchor_mask(tokenizer, answer: str, sentences: list[tuple[int, int]], masked: list[bool]) -> tuple[list[bool], bool]:
    """The authors' mapping over the answer's own tokens, applied whatever the sum:
    (in-loss per token, whether the per-sentence lengths add up to the answer's token count)."""
    n_answer = len(tokenizer.encode(answer, add_special_tokens=False))
    lengths = [len(tokenizer.encode(answer[s:e], add_special_tokens=False)) for s, e in sentences]
    mask: list[bool] = []
    for length, is_masked in zip(lengths, masked):
        mask += [not is_masked] * length
    mask = (mask + [True] * n_answer)[:n_answer]  # tokens past the sum stay in, as nothing masks them
    return mask, sum(lengths) == n_answer


def true_mask(tokenizer, answer: str, sentences: list[tuple[int, int]], masked: list[bool]) -> list[bool]:
    """Ground truth over the answer's own tokens: out iff the token overlaps a masked sentence."""
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    out_chars = set()
    for (s, e), is_masked in zip(sentences, masked):
        if is_masked:
            out_chars.update(range(s, e))
    return [not (set(range(a, b)) & out_chars) for a, b in enc["offset_mapping"]]


def ours_mask(tokenizer, answer: str, sentences: list[tuple[int, int]], masked: list[bool]) -> tuple[list[bool], list[bool]]:
    """maskdpo's mask over the templated conversation, and the truth over the same tokens."""
    types = ["hallucination" if m else "no_hallucination" for m in masked]
    pair = {"id": "bench", "prompt": [{"role": "user", "content": "Q?"}],
            "chosen": [{"role": "assistant", "content": answer}], "rejected": [{"role": "assistant", "content": answer}],
            "chosen_item": {"sents": [answer[s:e] for s, e in sentences], "type": types}}
    resp = tokenize_pair(tokenizer, pair).chosen
    n = turn_length(resp, answer) - 1  # content tokens, without the end-of-turn
    got = resp.loss_mask[resp.response_start:resp.response_start + n]
    out_chars = {c for (s, e), m in zip(sentences, masked) if m for c in range(s, e)}
    want = [not (set(range(a, b)) & out_chars) for a, b in resp.token_spans[:n]]
    return got, want


def measure(tokenizer, answers: list[str], draws: int, seed: int) -> dict[str, dict[str, float]]:
    rng = random.Random(seed)
    rows = {name: {"answers": 0, "differs": 0, "draws": 0, "bad_draws": 0, "tokens": 0, "wrong": 0}
            for name in METHODS}
    for answer in answers:
        sentences = blingfire_sentences(answer)
        if not sentences:
            continue
        matched = True
        for _ in range(draws):
            masked = [rng.random() < 0.5 for _ in sentences]
            anchor, matched = anchor_mask(tokenizer, answer, sentences, masked)
            released = anchor if matched else [True] * len(anchor)  # the release's silent fallback
            truth = true_mask(tokenizer, answer, sentences, masked)
            got, want = ours_mask(tokenizer, answer, sentences, masked)
            compared = {METHODS[0]: (anchor, truth), METHODS[1]: (released, truth), METHODS[2]: (got, want)}
            for name, (a, b) in compared.items():
                wrong = sum(x != y for x, y in zip(a, b))
                row = rows[name]
                row["draws"] += 1
                row["bad_draws"] += wrong > 0
                row["tokens"] += len(b)
                row["wrong"] += wrong
        for row in rows.values():
            row["answers"] += 1
            row["differs"] += not matched
    return rows


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print("| method | answers | token sum differs | draws with >=1 wrongly masked token | wrongly masked tokens |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        differs = f"{r['differs']} / {r['answers']}" if name != "maskdpo" else "n/a (no sum)"
        print(f"| {name} | {r['answers']} | {differs} | {r['bad_draws']} / {r['draws']} "
              f"({100 * r['bad_draws'] / max(r['draws'], 1):.0f}%) | {r['wrong']} / {r['tokens']} "
              f"({100 * r['wrong'] / max(r['tokens'], 1):.1f}%) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--generate", type=int, default=0, metavar="Q",
                        help=f"also sample answers from the model for Q questions (at most {len(QUESTIONS)})")
    parser.add_argument("--per-question", type=int, default=4)
    parser.add_argument("--save-answers", metavar="JSONL", help="write the sampled answers here")
    parser.add_argument("--answers", metavar="JSONL", help='measure these answers ({"text": ...} per line)')
    parser.add_argument("--draws", type=int, default=5, help="random labelings per answer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    path = resolve_model(args.model)
    tokenizer = load_tokenizer(path)
    print_table(f"{len(HAND_MADE)} hand-made answers ({args.model} tokenizer, {args.draws} draws each)",
                measure(tokenizer, HAND_MADE, args.draws, args.seed))
    answers = []
    if args.answers:
        answers = [json.loads(line)["text"] for line in Path(args.answers).read_text().splitlines() if line.strip()]
    elif args.generate:
        answers = generate_answers(path, tokenizer, args.generate, args.per_question, args.seed)
        if args.save_answers:
            Path(args.save_answers).write_text("".join(json.dumps({"text": a}, ensure_ascii=False) + "\n"
                                                       for a in answers))
    if answers:
        print_table(f"{len(answers)} answers from {args.model} (T=0.8, top-k 40, {args.draws} draws each)",
                    measure(tokenizer, answers, args.draws, args.seed))
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()

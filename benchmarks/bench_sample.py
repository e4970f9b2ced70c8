"""Generated tokens/s of `maskdpo sample`'s backend against a naive `generate` loop.

Both sides sample K responses per question from the same model with the paper's settings
(top-k 40, temperature 0.8), the same chat-templated prompts and the same max_new_tokens.
The naive loop calls HF `model.generate(..., num_return_sequences=K)` once per question.
Only real generated tokens count, for both: each sequence up to and including its eos.
Model loading is not timed. Runs alternate (naive, ours, naive, ours, ...) so a noisy
machine hurts both alike; the table reports medians.

    .venv/bin/python benchmarks/bench_sample.py --questions 4 -n 16 --max-new-tokens 128 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from maskdpo_cli.backends import GenerationParams, TransformersOptions
from maskdpo_cli.backends.transformers_backend import TransformersBackend
from maskdpo_cli.models import load_causal_lm, resolve_model
from maskdpo_cli.sampling import question_seed

QUESTIONS = [
    "Who was Ada Lovelace?", "Tell me about the city of Kyoto.", "Who was Marie Curie?",
    "What is the history of the Eiffel Tower?", "Who was Alan Turing?", "Tell me about the Amazon river.",
    "Who was Nikola Tesla?", "What is the Great Barrier Reef?", "Who was Leonardo da Vinci?",
    "Tell me about the Byzantine Empire.", "Who was Srinivasa Ramanujan?", "What is the Sahara desert?",
]


def naive(model, backend: TransformersBackend, questions: list[str], params: GenerationParams) -> int:
    """One `generate` call per question; returns the real generated tokens."""
    tokens = 0
    for q in questions:
        ids = torch.tensor([backend.encode([{"role": "user", "content": q}])])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=params.top_k,
                                 temperature=params.temperature, num_return_sequences=params.n,
                                 max_new_tokens=params.max_new_tokens, eos_token_id=sorted(backend.eos_ids),
                                 pad_token_id=backend.tokenizer.pad_token_id)
        for row in out[:, ids.shape[1]:].tolist():
            ends = [k for k, t in enumerate(row) if t in backend.eos_ids]
            tokens += ends[0] + 1 if ends else len(row)
    return tokens


def ours(backend: TransformersBackend, questions: list[str], params: GenerationParams) -> int:
    """What `run_sample` does per wave: one generate() over the questions; real tokens generated."""
    before = backend.generated_tokens
    seeds = [question_seed(params.seed, q) for q in questions]
    backend.generate([[{"role": "user", "content": q}] for q in questions], params, seeds)
    return backend.generated_tokens - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("-n", type=int, default=16, help="responses per question (K)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None, help="ours: rows decoded together")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    path = resolve_model(args.model)
    backend = TransformersBackend(path, TransformersOptions(device="cpu", batch_size=args.batch_size))
    if args.threads:
        torch.set_num_threads(args.threads)
    stock = load_causal_lm(path)  # transformers' own attention and cache, for the naive loop
    questions = QUESTIONS[: args.questions]
    params = GenerationParams(n=args.n, temperature=0.8, top_k=40, max_new_tokens=args.max_new_tokens)

    runs: dict[str, list[tuple[int, float]]] = {"naive generate loop": [], "maskdpo sample": []}
    for repeat in range(args.repeats):
        for name, fn in (("naive generate loop", lambda: naive(stock, backend, questions, params)),
                         ("maskdpo sample", lambda: ours(backend, questions, params))):
            torch.manual_seed(repeat)
            start = time.perf_counter()
            tokens = fn()
            runs[name].append((tokens, time.perf_counter() - start))
            print(f"  repeat {repeat + 1} {name}: {tokens} tokens in {runs[name][-1][1]:.1f} s", flush=True)

    print(f"\nmodel {args.model}, {len(questions)} questions x K={args.n}, max_new_tokens {args.max_new_tokens}, "
          f"top-k 40, temperature 0.8, {torch.get_num_threads()} threads, batch size {backend.batch_size}")
    print(f"{'method':<22}{'tokens (median)':>16}{'seconds (median)':>18}{'tokens/s (median)':>19}")
    rates = {}
    for name, results in runs.items():
        rates[name] = statistics.median(t / s for t, s in results)
        print(f"{name:<22}{statistics.median(t for t, _ in results):>16.0f}"
              f"{statistics.median(s for _, s in results):>18.1f}{rates[name]:>19.1f}")
    print(f"speed-up: {rates['maskdpo sample'] / rates['naive generate loop']:.2f}x")


if __name__ == "__main__":
    main()

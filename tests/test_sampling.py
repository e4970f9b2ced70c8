"""`sample` and the transformers backend: seeded, batch-independent, exact, resumable, strict."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import kill_after_lines, run_cli
from maskdpo_cli.backends import GenerationParams, TransformersOptions
from maskdpo_cli.backends.transformers_backend import TransformersBackend
from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.models import load_causal_lm
from maskdpo_cli.sampling import run_sample

QUESTIONS = ["Who is Ada Lovelace?", "What is the capital of France?",
             "Tell me about the history of the Roman empire in detail."]
SAMPLED = GenerationParams(n=3, temperature=0.8, top_k=40, max_new_tokens=10, seed=7)
GREEDY = GenerationParams(n=1, temperature=0.0, max_new_tokens=10)


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def tiny(tiny_llama_path: Path) -> TransformersBackend:
    return TransformersBackend(tiny_llama_path, TransformersOptions(device="cpu"))


def write_questions(path: Path, count: int) -> Path:
    lines = [json.dumps({"id": f"q{i}", "question": f"Question number {i}: who was person {i}?", "topic": "t"})
             for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the decode loop -------------------------------------------------------------------------

def test_seeded_sampling_is_reproducible(tiny):
    prompts = [chat(q) for q in QUESTIONS]
    first = tiny.generate(prompts, SAMPLED, [1, 2, 3])
    assert first == tiny.generate(prompts, SAMPLED, [1, 2, 3])
    assert first != tiny.generate(prompts, SAMPLED, [4, 5, 6])
    assert all(len(set(texts)) == SAMPLED.n for texts in first)  # K distinct samples per prompt


@pytest.mark.parametrize("params", [SAMPLED, GREEDY], ids=["sampled", "greedy"])
def test_a_row_does_not_depend_on_its_batch(tiny, params):
    prompts = [chat(q) for q in QUESTIONS]
    together = tiny.generate(prompts, params, [1, 2, 3])  # 3 prompts of different lengths, padded
    alone = [tiny.generate([p], params, [seed])[0] for p, seed in zip(prompts, [1, 2, 3])]
    assert together == alone
    tiny.batch_size = 1  # every sequence decoded on its own
    try:
        assert tiny.generate(prompts[2:], params, [3]) == together[2:]
    finally:
        tiny.batch_size = 64


def test_greedy_equals_hf_generate(tiny, tiny_llama_path):
    stock = load_causal_lm(tiny_llama_path)  # transformers' own attention and cache
    prompt_ids = [tiny.encode(chat(q)) for q in QUESTIONS]
    ours = tiny.generate_ids(prompt_ids, GREEDY, [0] * len(QUESTIONS))
    for ids, [mine] in zip(prompt_ids, ours):
        x = torch.tensor([ids])
        with torch.inference_mode():
            hf = stock.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                max_new_tokens=GREEDY.max_new_tokens, pad_token_id=0)
        assert mine == hf[0, len(ids):].tolist()
        assert len(set(mine)) > 3  # a real continuation, not one token repeated


def test_top_k_1_and_tiny_top_p_are_greedy(tiny):
    prompts = [chat(q) for q in QUESTIONS]
    greedy = tiny.generate(prompts, GREEDY, [0, 0, 0])
    for params in (GenerationParams(n=1, temperature=0.8, top_k=1, max_new_tokens=10, seed=3),
                   GenerationParams(n=1, temperature=0.8, top_k=0, top_p=1e-6, max_new_tokens=10, seed=3)):
        assert tiny.generate(prompts, params, [5, 6, 7]) == greedy


def test_stops_at_eos(tiny, tiny_llama_path, tmp_path):
    [[free_run]] = tiny.generate_ids([tiny.encode(chat(QUESTIONS[0]))], GREEDY, [0])
    stop_at = next(k for k in range(2, len(free_run)) if free_run[k] not in free_run[:k])
    # Same weights; the generation config now names that token as an end of sequence.
    model_dir = tmp_path / "eos-model"
    shutil.copytree(tiny_llama_path, model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = [2, free_run[stop_at]]
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    stopping = TransformersBackend(model_dir, TransformersOptions(device="cpu"))
    [[tokens]] = stopping.generate_ids([stopping.encode(chat(QUESTIONS[0]))], GREEDY, [0])
    assert tokens == free_run[: stop_at + 1]  # up to and including the eos, nothing after
    [[text]] = stopping.generate([chat(QUESTIONS[0])], GREEDY, [0])
    assert text == stopping.tokenizer.decode(free_run[:stop_at], skip_special_tokens=True)
    assert len(free_run) <= GREEDY.max_new_tokens


# -- run_sample: records, resume, bad input ---------------------------------------------------

def test_records_follow_the_contract(tiny_llama_path, tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", 3)
    out = tmp_path / "s.jsonl"
    summary = run_sample(str(questions), str(out), model=str(tiny_llama_path), backend=TransformersOptions(),
                         params=SAMPLED)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1", "q2"]
    for rec in records:
        assert rec["topic"] == "t" and rec["prompt"] == chat(rec["question"])
        assert [r["index"] for r in rec["responses"]] == [0, 1, 2]
        assert all(isinstance(r["text"], str) and r["text"] for r in rec["responses"])
        assert rec["generation"] == {"model": str(tiny_llama_path), "backend": "transformers", "n": 3,
                                     "temperature": 0.8, "top_k": 40, "top_p": 1.0, "max_new_tokens": 10,
                                     "seed": 7}
    assert summary.startswith("3 questions (0 resumed), 9 responses, ") and "tokens/s" in summary
    # A question's responses depend on its id and the seed, not on the rest of the file.
    alone = tmp_path / "alone.jsonl"
    alone_q = tmp_path / "alone-q.jsonl"
    alone_q.write_text(questions.read_text().splitlines()[1] + "\n")
    run_sample(str(alone_q), str(alone), model=str(tiny_llama_path), backend=TransformersOptions(),
               params=SAMPLED)
    assert json.loads(alone.read_text()) == records[1]


def test_torn_last_line_is_dropped_and_resume_matches(tiny_llama_path, tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", 5)
    args = dict(model=str(tiny_llama_path), backend=TransformersOptions(batch_size=6), params=SAMPLED)
    full = tmp_path / "full.jsonl"
    run_sample(str(questions), str(full), **args)
    lines = full.read_bytes().splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_bytes(b"".join(lines[:3]) + lines[3][:40])  # q0..q2 whole, q3 torn mid-write
    summary = run_sample(str(questions), str(partial), **args)
    assert summary.startswith("5 questions (3 resumed), 6 responses")
    assert partial.read_bytes() == full.read_bytes()


@pytest.mark.slow  # kill -9 of a `maskdpo sample` process, then two more model-loading runs
def test_resume_after_kill_9(tiny_llama_path, tmp_path):
    total = 12
    questions = write_questions(tmp_path / "q.jsonl", total)
    cli = [sys.executable, "-m", "maskdpo_cli.cli", "sample", str(questions), "--model", str(tiny_llama_path),
           "-n", "2", "--max-new-tokens", "8", "--seed", "3", "--batch-size", "2"]
    out = tmp_path / "out.jsonl"
    # Same thread count as this process (conftest): the reference run below must do the same arithmetic.
    env = dict(os.environ)
    written = kill_after_lines([*cli, "-o", str(out)], out, 2, env)
    assert 2 <= written < total, "the run should have been killed mid-way"
    assert Path(str(out) + ".lock").exists()  # left behind by the killed process, taken over below
    subprocess.run([*cli, "-o", str(out)], env=env, check=True, stderr=subprocess.DEVNULL)
    reference = tmp_path / "reference.jsonl"
    run_sample(str(questions), str(reference), model=str(tiny_llama_path), backend=TransformersOptions(batch_size=2),
               params=GenerationParams(n=2, max_new_tokens=8, seed=3))
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in resumed] == [f"q{i}" for i in range(total)]  # each exactly once, in order
    assert out.read_text() == reference.read_text()


@pytest.mark.parametrize("content, needle", [
    (b'{"question": "a"}\n{"question": "b"\n', "q.jsonl:2: not valid JSON"),
    (b'{"question": "a"}\n{"id": "x", "topic": "t"}\n', "q.jsonl:2: field 'question': missing"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, content, needle):
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(content)
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(["sample", questions, "--model", "/nonexistent", "-o", out], capsys)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [questions]


def test_a_finished_output_is_not_sampled_again_and_the_model_not_loaded(tiny_llama_path, tmp_path, monkeypatch):
    import maskdpo_cli.sampling as sampling

    questions = write_questions(tmp_path / "q.jsonl", 3)
    out = tmp_path / "out.jsonl"
    params = GenerationParams(n=2, max_new_tokens=4, seed=1)
    run_sample(str(questions), str(out), model=str(tiny_llama_path), backend=TransformersOptions(), params=params)
    before = out.read_bytes()
    loads = []
    real = sampling.make_backend
    monkeypatch.setattr(sampling, "make_backend", lambda *a, **k: loads.append(a) or real(*a, **k))
    summary = run_sample(str(questions), str(out), model=str(tiny_llama_path), backend=TransformersOptions(),
                         params=params)
    assert "nothing left to sample" in summary and loads == [] and out.read_bytes() == before
    # One more question: the model loads, and only the new question is sampled.
    questions.write_text(questions.read_text() + json.dumps({"id": "q9", "question": "Who is nine?"}) + "\n")
    summary = run_sample(str(questions), str(out), model=str(tiny_llama_path), backend=TransformersOptions(),
                         params=params)
    assert len(loads) == 1 and "(3 resumed)" in summary
    assert out.read_bytes().startswith(before) and out.read_text().count("\n") == 4


def test_resume_with_other_settings_exits_2(tiny_llama_path, tmp_path, capsys):
    questions = write_questions(tmp_path / "q.jsonl", 2)
    out = tmp_path / "out.jsonl"
    base = ["sample", questions, "--model", tiny_llama_path, "-n", "2", "--max-new-tokens", "4", "-o", out]
    assert run_cli(base, capsys)[0] == 0
    before = out.read_bytes()
    code, _, err = run_cli([*base, "--temperature", "0.5"], capsys)
    assert code == 2 and "temperature 0.8 -> 0.5" in err and "another -o" in err
    assert out.read_bytes() == before


# -- the embedded model, end to end --------------------------------------------------------------

@pytest.mark.slow  # loads the real 135M SmolLM2 and decodes with it: the slowest sampling test
def test_smollm2_end_to_end(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What is the capital of France?"}\n{"question": "Who was Ada Lovelace?"}\n')
    out = tmp_path / "s.jsonl"
    params = GenerationParams(n=2, max_new_tokens=16, seed=1)
    run_sample(str(questions), str(out), model="smollm2-135m-instruct", backend=TransformersOptions(),
               params=params)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(len(r["responses"]) == 2 for r in records)
    texts = [resp["text"] for r in records for resp in r["responses"]]
    assert all(t.strip() and "<|im_end|>" not in t and "<|im_start|>" not in t for t in texts)
    assert any("Paris" in resp["text"] for resp in records[0]["responses"])


def test_each_backend_gets_its_own_settings_and_a_flag_for_another_is_refused():
    from maskdpo_cli.backends import LMDeployOptions, OpenAIOptions, backend_options

    assert backend_options("openai", urls=["http://h:1/v1"], api_key="k") == OpenAIOptions(urls=("http://h:1/v1",),
                                                                                         api_key="k")
    assert backend_options("lmdeploy", batch_size=8) == LMDeployOptions(batch_size=8)
    # --api-key may come from the environment: an in-process backend ignores it.
    assert backend_options("transformers", api_key="k") == TransformersOptions()
    for backend, flags, needle in [("transformers", {"urls": ["http://h:1/v1"]}, "--url is for served engines"),
                                   ("openai", {"batch_size": 4}, "--batch-size is for in-process backends"),
                                   ("vllm", {}, "--backend vllm: expected one of transformers, lmdeploy, openai")]:
        with pytest.raises(MaskDPOError, match=needle):
            backend_options(backend, **flags)

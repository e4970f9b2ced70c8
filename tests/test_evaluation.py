"""`maskdpo eval`: the score arithmetic by hand, replications and resume on the embedded model, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.evaluation import folder_name, parse_models, parse_sizes, summarize, tally

MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]


def resp(index: int, labels: list[str]) -> dict:
    """A response whose sentences carry these labels (the text is irrelevant to the arithmetic)."""
    return {"index": index, "text": " ".join("S." for _ in labels),
            "sentences": [{"start": 3 * i, "end": 3 * i + 2, "text": "S.", "label": label}
                          for i, label in enumerate(labels)]}


def rec(qid: str, *responses: dict, topic: str | None = None) -> dict:
    return {"id": qid, "question": f"{qid}?", **({"topic": topic} if topic else {}), "responses": list(responses)}


# ---------------------------------------------------------------- arithmetic, by hand


def test_nofact_counts_as_correct_and_empty_responses_are_reported_not_divided_by():
    t = tally([resp(0, ["nofact", "ok", "contradictory"]), resp(0, []), resp(0, ["unverifiable", "ok"])])
    # correct: nofact + ok + ok = 3; incorrect: contradictory + unverifiable = 2; one empty response.
    assert t == {"responses": 3, "correct": 3, "incorrect": 2, "empty": 1, "score": 60.0,
                 "labels": {"nofact": 1, "ok": 2, "contradictory": 1, "unverifiable": 1}}
    assert tally([resp(0, [])])["score"] is None  # nothing to score: no score, not 0 and not a crash


def test_summary_means_over_replications_and_sd_of_the_replication_scores():
    # replication 0: q1 3 ok + 1 contradictory, q2 2 unverifiable -> 3 correct, 3 incorrect, 50%.
    # replication 1: q1 4 ok, q2 1 nofact + 1 unverifiable -> 5 correct, 1 incorrect, 83.33%.
    rep0 = [rec("q1", resp(0, ["ok", "ok", "ok", "contradictory"]), topic="A"),
            rec("q2", resp(0, ["unverifiable", "unverifiable"]), topic="B")]
    rep1 = [rec("q1", resp(0, ["ok"] * 4), topic="A"), rec("q2", resp(0, ["nofact", "unverifiable"]), topic="B")]
    s = summarize([rep0, rep1], name="m", model="path/m")
    assert (s["questions"], s["replications"]) == (2, 2)
    assert (s["correct"], s["incorrect"], s["empty"]) == (4.0, 2.0, 0.0)
    assert s["score"] == pytest.approx(100 * 4 / 6)  # from the mean counts
    assert [r["score"] for r in s["per_replication"]] == pytest.approx([50.0, 500 / 6])
    # sample standard deviation of two values: |a - b| / sqrt(2)
    assert s["score_sd"] == pytest.approx(abs(50.0 - 500 / 6) / 2 ** 0.5)
    # Labels: means over replications; fact precision scores the checkable sentences only:
    # ok 3.5 against contradictory 0.5 + unverifiable 1.5 (the nofact sentence is left out).
    assert s["labels"] == {"nofact": 0.5, "ok": 3.5, "contradictory": 0.5, "unverifiable": 1.5}
    assert s["fact_precision"] == pytest.approx(100 * 3.5 / 5.5)
    topic_a = {k: v for k, v in s["per_topic"]["A"].items() if k not in ("labels", "fact_precision")}
    assert topic_a == pytest.approx({"questions": 1, "correct": 3.5, "incorrect": 0.5, "empty": 0.0,
                                     "score": 87.5, "score_sd": abs(75.0 - 100.0) / 2 ** 0.5})
    assert s["per_topic"]["B"]["score"] == pytest.approx(25.0)
    assert set(s) >= {"model", "questions", "replications", "correct", "incorrect", "score", "score_sd",
                      "per_replication", "per_topic"}


def test_one_replication_has_sd_zero_and_an_all_empty_replication_has_no_score():
    s = summarize([[rec("q1", resp(0, []))], [rec("q1", resp(0, ["ok", "contradictory"]))]], name="m", model="m")
    assert s["per_replication"][0]["score"] is None and s["per_replication"][0]["empty"] == 1
    assert s["empty"] == 0.5 and s["score"] == 50.0 and s["score_sd"] == 0.0
    assert summarize([[rec("q1", resp(0, ["ok"]))]], name="m", model="m")["score_sd"] == 0.0


def test_best_of_n_keeps_the_most_factual_of_the_first_n():
    # scores by index: 0 -> 1/2, 1 -> 0/1, 2 -> 2/2 (best), 3 -> 1/1 (ties with 2, comes later)
    q1 = rec("q1", resp(1, ["contradictory"]), resp(0, ["ok", "unverifiable"]), resp(3, ["ok"]),
             resp(2, ["ok", "nofact"]))
    q2 = rec("q2", resp(0, []), resp(1, ["contradictory", "contradictory", "ok"]), resp(2, ["ok"]), resp(3, []))
    s = summarize([[q1, q2]], name="m", model="m", best_of=[4, 1, 2])
    # N=1: q1 idx0 (1 ok, 1 bad), q2 idx0 empty -> 1/2. N=2: q1 idx0, q2 idx1 (1/3 beats empty) -> 2/5.
    # N=4: q1 idx2 (2/2), q2 idx2 (1/1) -> 3/3.
    assert s["best_of"] == pytest.approx({"1": 50.0, "2": 40.0, "4": 100.0})
    assert s["score"] == 50.0  # the plain score is the first response's, as best-of-1


def test_model_folders_are_safe_unique_and_nameable():
    specs = parse_models(["smollm2-135m-instruct", "runs/maskdpo/hf", "other/maskdpo/hf", "base=x/y z/hf"])
    assert [s.name for s in specs] == ["smollm2-135m-instruct", "maskdpo-hf", "maskdpo-hf-2", "base"]
    assert specs[3].model == "x/y z/hf"
    assert folder_name("/abs/path/with spaces/../Llama 3") == "with_spaces-Llama_3"


@pytest.mark.parametrize("text", ["", "a,b", "1,,2"])
def test_best_of_sizes_must_parse(text):
    with pytest.raises(MaskDPOError, match="--best-of"):
        parse_sizes(text)
    assert parse_sizes("1,16, 64") == [1, 16, 64]


@pytest.mark.parametrize("kwargs", [{"best_of": [0, 4]}, {"best_of": []}, {"replications": 0}, {"models": []}])
def test_bad_requests_fail_before_anything_is_read(tmp_path, kwargs):
    from maskdpo_cli.annotation import JudgeConfig
    from maskdpo_cli.evaluation import run_eval

    args = {"models": ["m"], **kwargs}
    with pytest.raises(MaskDPOError) as err:
        run_eval(str(tmp_path / "absent.jsonl"), args.pop("models"), str(tmp_path / "out"), annotator="anah-v2",
                 judge=JudgeConfig(), **args)
    assert err.value.exit_code == 2 and "absent" not in str(err.value)


# ---------------------------------------------------------------- bad input, through the command


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MASKDPO, *args], capture_output=True, text=True, timeout=120)


def _questions(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_missing_model_empty_test_set_and_missing_document_exit_2(tmp_path):
    good = _questions(tmp_path / "q.jsonl", [{"id": "q1", "question": "Who was Ada Lovelace?", "document": "Ada."}])
    proc = _cli("eval", good, "--model", str(tmp_path / "no-such-model"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr and "pass" in proc.stderr
    empty = _questions(tmp_path / "empty.jsonl", [])
    proc = _cli("eval", empty, "--model", "smollm2-135m-instruct", "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no records" in proc.stderr
    bare = _questions(tmp_path / "bare.jsonl", [{"id": "q1", "question": "Who was Ada Lovelace?"}])
    proc = _cli("eval", bare, "--model", "smollm2-135m-instruct", "--annotator", "anah-v2", "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "document" in proc.stderr and "bare.jsonl:1" in proc.stderr
    proc = _cli("eval", good, "--model", "smollm2-135m-instruct", "--best-of", "0", "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "--best-of" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing started


# ---------------------------------------------------------------- the real pipeline, small


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama with the embedded SmolLM2's tokenizer and chat template: the real
    backend and pipeline at a fraction of the cost (its text is noise, which is all these tests need)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from maskdpo_cli.models import load_tokenizer, resolve_model

    source = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(source)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("models") / "tiny"
    LlamaForCausalLM(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, path / name)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from maskdpo_cli.world.generator import make_world

    out = tmp_path_factory.mktemp("world")
    make_world(3, str(out), n_topics=4, entities_per_topic=2, bios_per_entity=1)
    return out


def _eval(world: Path, model: Path, out: Path, **kwargs):
    from maskdpo_cli.annotation import JudgeConfig
    from maskdpo_cli.evaluation import eval_params, run_eval

    best_of = kwargs.pop("best_of", None)
    params = eval_params(best_of, max_new_tokens=12)
    return run_eval(str(world / "test_questions.jsonl"), [f"tiny={model}"], str(out),
                    annotator=f"world:{world}", judge=JudgeConfig(), best_of=best_of, params=params, **kwargs)


def _texts(path: Path) -> list[list[str]]:
    return [[r["text"] for r in json.loads(line)["responses"]] for line in path.read_text().splitlines()]


def test_greedy_replications_agree_and_a_rerun_resumes(world, tiny_model, tmp_path):
    [summary] = _eval(world, tiny_model, tmp_path / "eval", replications=2)
    folder = tmp_path / "eval" / "tiny"
    assert _texts(folder / "samples.r0.jsonl") == _texts(folder / "samples.r1.jsonl")
    assert all(texts[0].strip() for texts in _texts(folder / "samples.r0.jsonl"))  # something was generated
    assert summary["score_sd"] == 0.0 and summary["replications"] == 2 and summary["questions"] == 2
    on_disk = json.loads((folder / "summary.json").read_text())
    assert on_disk == summary and on_disk["model"] == str(tiny_model)
    assert on_disk["per_replication"][0] == {**on_disk["per_replication"][1], "replication": 0}
    assert on_disk["correct"] + on_disk["incorrect"] + on_disk["empty"] > 0
    assert (tmp_path / "eval" / "results.md").read_text().startswith("| model |")
    before = {p.name: p.read_bytes() for p in folder.glob("*.r0.jsonl")}
    [again] = _eval(world, tiny_model, tmp_path / "eval", replications=1)  # r0 is done: nothing regenerated
    assert {p.name: p.read_bytes() for p in folder.glob("*.r0.jsonl")} == before
    assert again["per_replication"] == on_disk["per_replication"][:1]


def test_sampled_replications_are_reproducible_with_fixed_seeds(world, tiny_model, tmp_path):
    [a] = _eval(world, tiny_model, tmp_path / "a", best_of=[1, 3], replications=2, seed=7)  # seeds 7, 8
    [b] = _eval(world, tiny_model, tmp_path / "b", best_of=[1, 3], seed=8)  # seed 8 alone, in another run
    first, second = tmp_path / "a" / "tiny", tmp_path / "b" / "tiny"
    assert _texts(first / "samples.r1.jsonl") == _texts(second / "samples.r0.jsonl")
    assert _texts(first / "samples.r0.jsonl") != _texts(first / "samples.r1.jsonl")
    assert a["per_replication"][1] == {**b["per_replication"][0], "replication": 1}
    assert set(a["best_of"]) == {"1", "3"} and b["replications"] == 1
    assert all(len(texts) == 3 for texts in _texts(first / "samples.r0.jsonl"))


def test_per_answer_counts_and_atomic_precision_cannot_be_raised_by_filler():
    def facts(index: int, labels: list[str], good: int, bad: int) -> dict:
        r = resp(index, labels)
        r.update(facts=[], n_facts_supported=good, n_facts_unsupported=bad)
        return r

    # Two questions, two replications; the second replication pads every answer with filler.
    rep0 = [rec("q1", facts(0, ["ok", "contradictory"], 2, 1)), rec("q2", facts(0, ["ok"], 1, 0))]
    rep1 = [rec("q1", facts(0, ["nofact", "nofact", "ok", "contradictory"], 2, 1)),
            rec("q2", facts(0, ["nofact", "ok"], 1, 0))]
    s = summarize([rep0, rep1], name="m", model="m")
    # means: nofact 1.5, ok 2, wrong 1, facts 3 correct / 1 incorrect, over 2 answers
    assert s["per_answer"] == pytest.approx({"nofact": 0.75, "ok": 1.0, "wrong": 0.5,
                                             "facts_correct": 1.5, "facts_incorrect": 0.5})
    assert s["atomic_fact_precision"] == pytest.approx(75.0)
    per_rep = [r["per_answer"] for r in s["per_replication"]]
    assert [p["nofact"] for p in per_rep] == [0.0, 1.5]  # the filler shows...
    assert per_rep[0]["facts_correct"] == per_rep[1]["facts_correct"] == 1.5  # ...and adds no fact
    assert s["per_replication"][1]["score"] > s["per_replication"][0]["score"]  # while the score rises
    # A sentence-level annotator: per-answer sentence counts, no fact figures.
    plain = summarize([[rec("q1", resp(0, ["ok", "nofact"]))]], name="m", model="m")
    assert plain["per_answer"] == {"nofact": 1.0, "ok": 1.0, "wrong": 0.0} and "atomic_fact_precision" not in plain

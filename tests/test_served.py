"""`sample --backend openai` and `eval --backend openai`: against `transformers serve` (a real
server nobody here wrote, one for the whole session: tests/served.py) and against scripted
servers for what a real one will not do on demand (record every request, fail mid-run, die).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from helpers import kill_after_lines, run_cli, write_jsonl
from served import served_models
from maskdpo_cli.backends.base import derive_seed
from maskdpo_cli.sampling import question_seed

REPO = Path(__file__).resolve().parent.parent
MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def questions(path: Path, count: int) -> Path:
    return write_jsonl(path, [{"id": f"q{i}", "question": f"Who was person {i}?", "topic": "t"} for i in range(count)])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- a scripted server

class ScriptedServer:
    """A chat server whose reply is a function of the question and the seed (so a seed's text is
    known), with knobs: `refuse` request fields (HTTP 422 as transformers serve words it),
    `delay` per request, `die_after` requests (then every request fails: connection closed)."""

    def __init__(self, model: str = "scripted-policy", delay: float = 0.0) -> None:
        self.model, self.delay = model, delay
        self.refuse: set[str] = set()
        self.die_after: int | None = None
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @staticmethod
    def reply(body: dict[str, Any]) -> str:
        return f"{body['messages'][-1]['content']} Answer {body.get('seed', 0) % 10007}."

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def chats(self) -> list[dict[str, Any]]:
        """The sampling requests (the probe, max_tokens 1, left out)."""
        return [b for b in self.bodies if b["max_tokens"] != 1]


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with server._lock:
                server.bodies.append(body)
                dead = server.die_after is not None and len(server.bodies) > server.die_after
            if dead:  # a server gone mid-run: the connection drops without an answer
                self.close_connection = True
                self.connection.shutdown(2)
                return
            refused = server.refuse & body.keys()
            if refused:
                self._send(422, {"detail": f"Unexpected fields in the request: {refused}"})
                return
            time.sleep(server.delay)
            self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": server.reply(body)}}],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})

    return Handler


# --------------------------------------------------------------------------- scripted: the requests

def test_one_seeded_request_per_response_with_every_setting(tmp_path, capsys):
    q = questions(tmp_path / "q.jsonl", 3)
    out = tmp_path / "s.jsonl"
    with ScriptedServer() as server:
        code, _, err = run_cli(["sample", q, "--backend", "openai", "--url", server.url, "-n", "3", "--seed", "5",
                                "--temperature", "0.7", "--top-k", "20", "--top-p", "0.9", "--max-new-tokens", "33",
                                "-o", out], capsys)
    assert code == 0, err
    assert server.bodies[0]["max_tokens"] == 1  # the probe comes first, with every setting
    assert server.bodies[0]["top_k"] == 20
    chats = server.chats()
    assert len(chats) == 9
    records = read(out)
    for rec in records:
        assert rec["prompt"] == [{"role": "user", "content": rec["question"]}] and rec["topic"] == "t"
        assert rec["generation"] == {"model": "scripted-policy", "backend": "openai", "n": 3, "temperature": 0.7,
                                     "top_k": 20, "top_p": 0.9, "max_new_tokens": 33, "seed": 5,
                                     "url": server.url}
        for j, response in enumerate(rec["responses"]):
            seed = derive_seed(question_seed(5, rec["id"]), j)
            [body] = [b for b in chats if b["seed"] == seed]
            # The messages (the server applies the chat template), the settings, no `n`, no stop.
            assert body == {"model": "scripted-policy", "messages": rec["prompt"], "max_tokens": 33,
                            "temperature": 0.7, "seed": seed, "top_p": 0.9, "top_k": 20}
            assert response == {"index": j, "text": ScriptedServer.reply(body)}
    assert [r["id"] for r in records] == ["q0", "q1", "q2"]
    assert "27 tokens" in err  # usage.completion_tokens: 9 responses x 3


def test_top_k_0_and_greedy_send_no_top_k(tmp_path, capsys):
    q = questions(tmp_path / "q.jsonl", 1)
    with ScriptedServer() as server:
        server.refuse = {"top_k"}
        assert run_cli(["sample", q, "--backend", "openai", "--url", server.url, "-n", "1", "--top-k", "0",
                        "-o", tmp_path / "a.jsonl"], capsys)[0] == 0
        assert run_cli(["sample", q, "--backend", "openai", "--url", server.url, "-n", "1", "--temperature", "0",
                        "-o", tmp_path / "b.jsonl"], capsys)[0] == 0
    sampled, greedy = server.chats()
    assert "top_k" not in sampled and sampled["top_p"] == 1.0
    # At temperature 0 the answer is the greedy one whatever top-k/top-p say: neither is sent.
    assert greedy["temperature"] == 0.0 and "top_k" not in greedy and "top_p" not in greedy


def test_a_refused_setting_is_an_error_before_any_record(tmp_path, capsys):
    q = questions(tmp_path / "q.jsonl", 2)
    out = tmp_path / "s.jsonl"
    with ScriptedServer() as server:
        server.refuse = {"top_p"}
        code, _, err = run_cli(["sample", q, "--backend", "openai", "--url", server.url, "--top-p", "0.9",
                                "-o", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"the server at {server.url} refuses top_p 0.9" in err and "--top-p" in err
    assert not out.exists() and len(server.bodies) == 1  # the probe only


def test_spread_over_two_urls_and_one_dying_mid_run(tmp_path, capsys):
    q = questions(tmp_path / "q.jsonl", 12)
    reference, spread = tmp_path / "reference.jsonl", tmp_path / "spread.jsonl"
    args = ["sample", q, "--backend", "openai", "-n", "4", "--max-new-tokens", "8", "--seed", "2"]
    with ScriptedServer(delay=0.01) as one:
        assert run_cli([*args, "--url", one.url, "-o", reference], capsys)[0] == 0
    with ScriptedServer(delay=0.01) as a, ScriptedServer(delay=0.01) as b:
        b.die_after = 10  # gone after its tenth request: its share goes to the other
        code, _, err = run_cli([*args, "--url", a.url, "--url", b.url, "-o", spread], capsys)
    assert code == 0, err
    assert len(a.chats()) >= 24 and len(b.bodies) > 10  # both took requests before b died
    ours, theirs = read(spread), read(reference)
    assert [r["responses"] for r in ours] == [r["responses"] for r in theirs]
    assert ours[0]["generation"]["urls"] == [a.url, b.url]
    # A resume may use other servers: where responses came from is not a setting.
    with ScriptedServer() as c:
        code, _, err = run_cli([*args, "--url", c.url, "-o", spread], capsys)
    assert code == 0 and "nothing left to sample" in err, err


def test_sample_survives_kill_9(tmp_path):
    total = 16
    q = questions(tmp_path / "q.jsonl", total)
    with ScriptedServer(delay=0.05) as server:
        cmd = [*MASKDPO, "sample", str(q), "--backend", "openai", "--url", server.url, "-n", "2", "--seed", "9"]
        reference, out = tmp_path / "reference.jsonl", tmp_path / "out.jsonl"
        subprocess.run([*cmd, "-o", str(reference)], env=ENV, check=True, capture_output=True, timeout=120)
        server.delay = 0.3  # slow enough to kill mid-way
        written = kill_after_lines([*cmd, "-o", str(out)], out, 2, ENV)
        server.delay = 0.0
        subprocess.run([*cmd, "-o", str(out)], env=ENV, check=True, capture_output=True, timeout=120)
    assert 2 <= written < total, "the run should have been killed mid-way"
    assert out.read_bytes() == reference.read_bytes()


def test_url_without_openai_backend_exits_2(tmp_path, capsys):
    q = questions(tmp_path / "q.jsonl", 1)
    code, _, err = run_cli(["sample", q, "--url", "http://127.0.0.1:9/v1", "-o", tmp_path / "s.jsonl"], capsys)
    assert code == 2 and "--backend openai" in err


# --------------------------------------------------------------------------- transformers serve

@pytest.mark.slow  # starts `transformers serve` (a real server, loading a model)
def test_sample_through_transformers_serve(served_smollm2, tmp_path, capsys):
    q = write_jsonl(tmp_path / "q.jsonl", [{"id": "fr", "question": "What is the capital of France?"}])
    args = ["sample", q, "--backend", "openai", "--url", served_smollm2, "-n", "2", "--top-k", "0",
            "--max-new-tokens", "8", "--seed", "1"]
    out = tmp_path / "s.jsonl"
    code, _, err = run_cli([*args, "-o", out], capsys)
    assert code == 0, err
    records = read(out)
    [served_id] = served_models(served_smollm2)
    assert [r["id"] for r in records] == ["fr"]
    for rec in records:
        assert rec["generation"] == {"model": served_id, "backend": "openai", "n": 2, "temperature": 0.8, "top_k": 0,
                                     "top_p": 1.0, "max_new_tokens": 8, "seed": 1, "url": served_smollm2}
        texts = [r["text"] for r in rec["responses"]]
        assert [r["index"] for r in rec["responses"]] == [0, 1]
        # The server applied SmolLM2's chat template and its stop token: a plain answer.
        assert all(t.strip() and "<|im" not in t for t in texts)
        # It samples only when the model's generation_config says do_sample, and the embedded
        # SmolLM2's does not: both seeds give the greedy answer. That is the server's choice.
        assert texts[0] == texts[1]
    assert "Paris" in records[0]["responses"][0]["text"]
    # usage was read: the summary counts the served tokens ("14.0 tokens/s" also holds "0 tokens")
    counted = re.search(r"responses, (\d+) tokens", err)
    assert counted and int(counted.group(1)) > 0 and "tokens/s" in err


@pytest.mark.slow  # starts `transformers serve` (a real server, loading a model)
def test_transformers_serve_refuses_top_k(served_smollm2, tmp_path, capsys):
    q = questions(tmp_path / "q.jsonl", 1)
    out = tmp_path / "s.jsonl"
    code, _, err = run_cli(["sample", q, "--backend", "openai", "--url", served_smollm2, "-n", "2",
                            "--max-new-tokens", "8", "-o", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"the server at {served_smollm2} refuses top_k 40" in err
    assert "Unexpected fields in the request" in err
    assert "pass --top-k 0 to sample without top-k" in err
    assert not out.exists() and not list(tmp_path.glob("*.lock"))


@pytest.mark.slow  # starts `transformers serve` (a real server, loading a model)
def test_eval_through_transformers_serve(served_smollm2, tmp_path, capsys):
    from maskdpo_cli.world.generator import make_world

    world = tmp_path / "world"
    make_world(5, str(world), n_topics=4, entities_per_topic=4, bios_per_entity=1)
    q = tmp_path / "q.jsonl"
    q.write_text((world / "test_questions.jsonl").read_text().splitlines(keepends=True)[0])
    [served_id] = served_models(served_smollm2)
    out = tmp_path / "eval"
    code, _, err = run_cli(["eval", q, "--model", f"smol={served_id}", "--backend", "openai", "--url", served_smollm2,
                            "--annotator", f"world:{world}", "--replications", "1", "--max-new-tokens", "8",
                            "-o", out], capsys)
    assert code == 0, err
    samples = read(out / "smol" / "samples.r0.jsonl")
    assert [s["id"] for s in samples] == [json.loads(line)["id"] for line in q.read_text().splitlines()]
    assert all(s["generation"]["backend"] == "openai" and s["generation"]["model"] == served_id for s in samples)
    summary = json.loads((out / "smol" / "summary.json").read_text())
    assert summary["questions"] == 1 and summary["generation"]["backend"] == "openai"


@pytest.mark.slow  # starts `transformers serve` (a real server, loading a model)
def test_annotate_through_transformers_serve_ends_with_the_clear_error(served_smollm2, tmp_path, capsys):
    samples = write_jsonl(tmp_path / "samples.jsonl", [{
        "id": "fr", "question": "What is the capital of France?", "document": "Paris is the capital of France.",
        "responses": [{"index": 0, "text": "The capital of France is Paris."}]}])
    out = tmp_path / "annotated.jsonl"
    code, _, err = run_cli(["annotate", samples, "--annotator", "anah-v2", "--judge-url", served_smollm2,
                            "--max-retries", "0", "-o", out], capsys)
    # SmolLM2-135M cannot follow the ANAH-v2 protocol: a judge error (exit 1), one line naming the
    # sentence, no guessed label, no annotated record; the judgments made are kept for a rerun.
    [error] = [line for line in err.splitlines() if line.startswith("maskdpo:")]
    assert code == 1 and "no usable reply for the sentence 'The capital of France is Paris.'" in error, err
    assert not out.exists() or out.read_text() == ""

"""A real local HTTP judge speaking the OpenAI chat API, with scripted replies and faults.

    with JudgeServer() as server:          # http://127.0.0.1:<free port>/v1
        ... server.url, server.chat_requests, server.conversations ...

Replies come from `script(messages)`; the default, `anah_script`, plays the ANAH-v2
protocol from keywords in the sentence (never in the test questions):
  "hello"/"你好" -> no facts; "Mars"/"火星" -> no reference information;
  "Paris"/"巴黎" -> no hallucination; "Berlin"/"柏林" -> contradictory; else unverifiable;
  "gibberish" -> a reply with no marker at all, every time.
Fault knobs (set on the instance, thread-safe): `fail_first` chat requests answered with
`fail_status` (+ `retry_after`), `fail_after`: every chat request after that many answered
with `fail_status` (a server that dies mid-run), `malformed_first` chat requests answered
with a reply with no marker, `delay_first` chat requests delayed by `delay` seconds,
`garbage_first` chat requests answered 200 with a body that is not JSON, `torn_first` chat
requests answered with half a body before the connection drops.
`max_in_flight` is the most chat requests the server was answering at once.

`factscore_script(splits)` plays the FactScore protocol instead: each sentence's facts, with
the quotes that place them, come from `splits`; a claim is True when each of its
capitalised words and numbers is in the passages shown with it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Messages = list[dict[str, str]]
MALFORMED = "I am not sure what you are asking."
TORN = b'{"id": "chatcmpl-torn", "choices": [{"mess'
_CJK = re.compile(r"[\u4e00-\u9fff]")


def first_turn(messages: Messages) -> str:
    """The first user message: it holds the question and the sentence under judgment."""
    return next(m["content"] for m in messages if m["role"] == "user")


def anah_script(messages: Messages) -> str:
    """ANAH-v2 replies decided by keywords in the first user turn (question + sentence)."""
    text = first_turn(messages)
    zh = bool(_CJK.search(text))
    turn = sum(m["role"] == "user" for m in messages)
    if "gibberish" in text:
        return MALFORMED
    if turn == 1:
        if "hello" in text.lower() or "你好" in text:
            return "<无事实>" if zh else "<No Facts>"
        return "<有事实>" if zh else "<Facts Present>"
    if turn == 2:
        if "Mars" in text or "火星" in text:
            return "<无参考信息>" if zh else "<No Reference Information>"
        return "巴黎是法国的首都。" if zh else "Paris is the capital of France. <SEP> Berlin is in Germany."
    if "Paris" in text or "巴黎" in text:
        return "<无幻觉>" if zh else "<No Hallucination>"
    if "Berlin" in text or "柏林" in text:
        return "<矛盾>" if zh else "The sentence is <Contradictory> to the reference."
    return "<无法验证>" if zh else "<Unverifiable>"


# Records whose sentences exercise every branch of `anah_script`, with the labels it gives.
EN_LABELS = {"Hello!": "nofact", "The capital is Paris.": "ok", "It is near Berlin.": "contradictory",
             "People on Mars agree.": "unverifiable"}
EN_REQUESTS = 1 + 3 + 3 + 2  # turns per distinct sentence: no facts ends at 1, no reference at 2
Q_ZH = {"id": "zh1", "question": "法国的首都是哪里？", "document": "巴黎是法国的首都。", "language": "zh",
        "responses": [{"index": 0, "text": "你好！首都是巴黎。不是柏林。"},
                      {"index": 1, "text": "首都是柏林。火星人同意。"}]}
ZH_LABELS = {"你好！": "nofact", "首都是巴黎。": "ok", "不是柏林。": "contradictory", "首都是柏林。": "contradictory",
             "火星人同意。": "unverifiable"}

def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


Split = list[tuple[str, "str | None"]]  # (fact, quote of the sentence that states it; None: no quote)


def split_reply(facts: Split) -> str:
    """A FactScore split reply: "- FACT | QUOTE" per fact ("- FACT" without a quote), or <No Facts>."""
    lines = [f"- {fact} | {quote}" if quote is not None else f"- {fact}" for fact, quote in facts]
    return "\n".join(lines) or "<No Facts>"


def factscore_script(splits: dict[str, Split]) -> Callable[[Messages], str]:
    """A FactScore judge: splits from `splits` (a "gibberish" sentence gets no usable reply, ever), and
    a claim is True when each of its capitalised words and numbers is in the passages it was shown."""
    def script(messages: Messages) -> str:
        prompt = messages[-1]["content"]
        if "Claim:" in prompt:
            passages, claim = between(prompt, "\n\n", "\n\nClaim:"), between(prompt, "Claim:", "\n\n")
            return "True" if all(w in passages for w in re.findall(r"[A-Z][a-z]+|\d+", claim)) else "False."
        sentence = between(prompt, "Sentence:\n", "\n\n")
        if "gibberish" in sentence:
            return MALFORMED
        return split_reply(splits[sentence])

    return script


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # many clients connect at once: the default backlog (5) drops some


class JudgeServer:
    def __init__(self, script: Callable[[Messages], str] = anah_script, model: str = "anah-v2-test") -> None:
        self.script, self.model = script, model
        self.fail_first, self.fail_status, self.retry_after = 0, 503, "0"
        self.malformed_first = 0
        self.delay_first, self.delay = 0, 0.0
        self.fail_after: int | None = None
        self.garbage_first = self.torn_first = 0
        self.chat_requests = 0
        self.in_flight = self.max_in_flight = 0
        self.model_requests = 0
        self.conversations: list[Messages] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server with `with JudgeServer() as server`"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    def first_turns(self, turn: int = 1) -> list[str]:
        """The first user message of every chat request made at the given turn."""
        return [first_turn(c) for c in self.conversations
                if sum(m["role"] == "user" for m in c) == turn]

    def _answer_chat(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.chat_requests += 1
            n = self.chat_requests
            self.conversations.append(body["messages"])
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self._reply(n, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _reply(self, n: int, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if n <= self.delay_first:
            time.sleep(self.delay)
        if n <= self.garbage_first:
            return 200, b"<html>upstream proxy error</html>", {}
        if n <= self.garbage_first + self.torn_first:
            return 200, TORN, {}
        if n <= self.fail_first or (self.fail_after is not None and n > self.fail_after):
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return self.fail_status, {"error": {"message": "scripted failure"}}, headers
        reply = MALFORMED if n <= self.fail_first + self.malformed_first else self.script(body["messages"])
        return 200, {
            "id": f"chatcmpl-{n}", "object": "chat.completion", "model": body.get("model", self.model),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply}}],
        }, {}


def _handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
            torn = payload is TORN
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data) * 2 if torn else len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left
            if torn:  # half the promised body, then the connection drops
                self.close_connection = True

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                with server._lock:
                    server.model_requests += 1
                self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            self._send(*server._answer_chat(body))

    return Handler

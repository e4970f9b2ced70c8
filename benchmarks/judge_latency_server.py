"""A judge server for benchmarks: every answer takes a fixed latency, at most C are served at once.

    python benchmarks/judge_latency_server.py --port 8001 --latency 0.5 --max-concurrent 128

It behaves like a continuous-batching engine at its batch limit: up to C requests are
answered together after `latency` seconds, the rest queue. It speaks the OpenAI chat API
(`GET /v1/models`, `POST /v1/chat/completions`) and plays the ANAH-v2 protocol
deterministically from a hash of the first user turn: 1 in 8 sentences has no facts, 1 in
8 of the rest has no reference information, the others get a type. `GET /stats` reports
what the server saw: calls, the time from the first request to the last answer, and the
most requests it held at once.

A small asyncio HTTP/1.1 server (keep-alive, Content-Length bodies), so hundreds of open
connections cost one thread and little CPU on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from typing import Any

TYPES = ("<No Hallucination>", "<Contradictory>", "<Unverifiable>")


def anah_reply(messages: list[dict[str, str]]) -> str:
    first = next(m["content"] for m in messages if m["role"] == "user")
    h = int.from_bytes(hashlib.blake2b(first.encode("utf-8"), digest_size=4).digest(), "big")
    turn = sum(m["role"] == "user" for m in messages)
    if turn == 1:
        return "<No Facts>" if h % 8 == 0 else "<Facts Present>"
    if turn == 2:
        return "<No Reference Information>" if h % 8 == 1 else "The reference says so. <SEP> And more."
    return TYPES[h % 3]


class LatencyJudge:
    def __init__(self, latency: float, max_concurrent: int, model: str = "anah-v2-bench") -> None:
        self.latency, self.model = latency, model
        self.slots = asyncio.Semaphore(max_concurrent)
        self.calls = 0
        self.held = self.max_held = 0
        self.first_start: float | None = None
        self.last_end: float | None = None

    def stats(self) -> dict[str, Any]:
        span = (self.last_end - self.first_start) if self.first_start and self.last_end else 0.0
        return {"calls": self.calls, "seconds": span, "calls_per_s": self.calls / span if span else 0.0,
                "max_held": self.max_held}

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.first_start is None:
            self.first_start = time.monotonic()
        async with self.slots:  # a full batch: the rest queue here
            self.held += 1
            self.max_held = max(self.max_held, self.held)
            await asyncio.sleep(self.latency)
            self.held -= 1
        self.calls += 1
        self.last_end = time.monotonic()
        return {"id": f"chatcmpl-{self.calls}", "object": "chat.completion", "model": self.model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": anah_reply(body["messages"])}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in
                           (line.split(":", 1) for line in header_lines if ":" in line)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                status, payload = await self.route(method, path.rstrip("/"), body)
                data = json.dumps(payload).encode("utf-8")
                writer.write(f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(data)}\r\n\r\n".encode("latin-1") + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if method == "POST" and path == "/v1/chat/completions":
            return 200, await self.chat(json.loads(body))
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]}
        if method == "GET" and path == "/stats":
            return 200, self.stats()
        return 404, {"error": {"message": f"no route {method} {path}"}}


async def serve(port: int, latency: float, max_concurrent: int) -> None:
    judge = LatencyJudge(latency, max_concurrent)
    server = await asyncio.start_server(judge.handle, "127.0.0.1", port, backlog=4096)
    print(f"listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per answer")
    parser.add_argument("--max-concurrent", type=int, default=128, help="answers served at once (C)")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.latency, args.max_concurrent))


if __name__ == "__main__":
    main()

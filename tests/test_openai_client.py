"""The one HTTP client for served judges and samplers, against real local OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from judge_server import JudgeServer
from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.openai_client import EndpointError, OpenAIClient, RequestRefused, base_url

HELLO = [{"role": "user", "content": "Say hello."}]


def body(i: int = 0) -> dict:
    return {"model": "anah-v2-test", "messages": [{"role": "user", "content": f"question {i}: hello"}]}


def client(*urls: str, **options) -> OpenAIClient:
    return OpenAIClient(urls, **{"flag": "--judge-url", "max_retries": 3, "backoff": 0.01, "timeout": 5.0,
                                 **options})


async def chat_all(c: OpenAIClient, n: int) -> list[dict]:
    try:
        return await asyncio.gather(*(c.chat(body(i)) for i in range(n)))
    finally:
        await c.aclose()


def free_port_url() -> str:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_requests_are_spread_over_every_server_and_capped_per_server():
    with JudgeServer() as a, JudgeServer() as b:
        a.delay_first = b.delay_first = 10**9
        a.delay = b.delay = 0.05
        answers = asyncio.run(chat_all(client(a.url, b.url + "/chat/completions/", concurrency=3), 60))
    assert len(answers) == 60 and all(r["choices"][0]["message"]["content"] for r in answers)
    assert a.chat_requests + b.chat_requests == 60
    assert min(a.chat_requests, b.chat_requests) >= 20  # least in flight: both servers share the work
    assert a.max_in_flight == b.max_in_flight == 3  # full, never over `concurrency` per server


def test_a_server_that_dies_mid_run_leaves_the_work_to_the_others():
    with JudgeServer() as good, JudgeServer() as dying:
        good.delay_first = dying.delay_first = 10**9
        good.delay = dying.delay = 0.02
        dying.fail_after, dying.retry_after = 5, None  # then 503 for ever, no Retry-After
        answers = asyncio.run(chat_all(client(good.url, dying.url, concurrency=4), 80))
    assert len(answers) == 80
    assert dying.chat_requests > 5  # it got work, failed, and was retried elsewhere
    # A failing server gets one probe at a time, not its share of the run.
    assert dying.chat_requests - 5 < 80 / 4


def test_an_unreachable_url_among_others_is_skipped_and_alone_is_a_clear_error():
    dead = free_port_url()
    with JudgeServer() as good:
        answers = asyncio.run(chat_all(client(dead, good.url, concurrency=2), 10))
    assert len(answers) == 10 and good.chat_requests == 10
    with pytest.raises(EndpointError, match=rf"--url {dead}/chat/completions: no usable answer after 3 "
                                            r"attempts \(last: ConnectError.*is the server running there\?"):
        asyncio.run(chat_all(client(dead, max_retries=2, flag="--url"), 1))


def test_retry_after_is_honoured_and_429_is_retried():
    with JudgeServer() as server:
        server.fail_first, server.fail_status, server.retry_after = 1, 429, "0.6"
        start = time.monotonic()
        asyncio.run(chat_all(client(server.url, backoff=0.0), 1))
        waited = time.monotonic() - start
    assert server.chat_requests == 2 and waited >= 0.6


def test_torn_and_non_json_answers_are_retried():
    with JudgeServer() as server:
        server.garbage_first, server.torn_first = 1, 1
        (answer,) = asyncio.run(chat_all(client(server.url, concurrency=1), 1))
    assert answer["choices"][0]["message"]["content"] == "<No Facts>"  # "hello": the scripted reply
    assert server.chat_requests == 3


def test_a_server_that_keeps_failing_exhausts_the_retries_with_the_last_failure():
    with JudgeServer() as server:
        server.fail_first, server.fail_status, server.retry_after = 1000, 500, None
        with pytest.raises(EndpointError, match=r"no usable answer after 3 attempts \(last: HTTP 500 "):
            asyncio.run(chat_all(client(server.url, max_retries=2), 1))
    assert server.chat_requests == 3


def test_a_refused_request_is_not_retried_and_carries_the_servers_words():
    with JudgeServer() as server:
        server.fail_first, server.fail_status = 1000, 400
        with pytest.raises(RequestRefused) as refused:
            asyncio.run(chat_all(client(server.url), 1))
    assert server.chat_requests == 1
    err = refused.value
    assert (err.status, err.url, err.exit_code) == (400, f"{server.url}/chat/completions", 2)
    assert "scripted failure" in err.detail and str(err).startswith(f"--judge-url {server.url}/chat/completions: HTTP 400")


def test_the_served_model_is_asked_once():
    async def ask(c: OpenAIClient) -> list[str]:
        try:
            return await asyncio.gather(*(c.served_model() for _ in range(5)))
        finally:
            await c.aclose()

    with JudgeServer(model="served-judge") as server:
        assert asyncio.run(ask(client(server.url))) == ["served-judge"] * 5
    assert server.model_requests == 1


def test_urls_are_normalized_and_checked():
    assert base_url("http://h:1/v1/", "--url") == base_url("http://h:1/v1/chat/completions", "--url") == "http://h:1/v1"
    with pytest.raises(MaskDPOError, match="--url h:1/v1: expected an http:// or https:// URL"):
        OpenAIClient(["h:1/v1"], flag="--url")
    assert OpenAIClient(["http://h:1/v1", "http://h:1/v1/"], flag="--url").urls == ["http://h:1/v1"]


def test_every_error_names_the_callers_flag():
    """The client serves the judge (--judge-url) and the sampler (--url): its errors name the caller's flag."""
    with JudgeServer() as server:
        server.fail_first, server.fail_status = 1000, 400
        with pytest.raises(RequestRefused, match=rf"^--url {server.url}/chat/completions: HTTP 400"):
            asyncio.run(chat_all(client(server.url, flag="--url"), 1))
    with pytest.raises(MaskDPOError, match="^--judge-url: at least one URL is needed"):
        OpenAIClient([], flag="--judge-url")
    # The sampler's backend passes --url down: a dead server is named by the sampler's flag.
    from maskdpo_cli.backends import GenerationParams, OpenAIOptions, make_backend

    dead = free_port_url()
    sampler = make_backend("openai", "m", OpenAIOptions(urls=(dead,), max_retries=0))
    try:
        with pytest.raises(EndpointError) as failed:
            sampler.probe(GenerationParams(n=1))
    finally:
        sampler.close()
    assert str(failed.value).startswith(f"--url {dead}/chat/completions: no usable answer after 1 attempts")

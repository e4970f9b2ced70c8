"""One asynchronous client for OpenAI-compatible chat servers: the judge's and the sampler's.

Built for long runs against served engines (`lmdeploy serve api_server`, `lmdeploy serve
proxy`, vLLM, SGLang, `transformers serve`), on aiohttp's connection pool with keep-alive.
aiohttp rather than httpx (or the `openai` package, which is httpx underneath): against a
server answering 128 requests at once in 0.5 s, 128 workers drew 227 calls/s through one
aiohttp session and 25 calls/s through one httpx.AsyncClient on this project's 2-core
machine (httpcore's pool and pure-Python parsing cost milliseconds of CPU per request;
benchmarks/bench_judge.py, BENCHMARKS.md).

- Several base URLs are one pool of servers (data parallel). Each request goes to the server
  with the fewest requests in flight, and at most `concurrency` requests are in flight per
  server: a served engine batches whatever is in flight, so the client keeps it full.
- Timeouts, dropped connections, torn or non-JSON answers, 429 and 5xx are retried with
  full-jitter exponential backoff (a Retry-After header wins), on another server when there
  is one. A server that failed rests (Retry-After, else a delay doubling with each failure
  in a row) and then gets one request at a time until one succeeds: a dead server costs a
  probe now and then, not a share of the run. When the attempts are spent, EndpointError
  names the URL and the last failure.
- Any other 4xx is our request's fault (an unknown field, a wrong model, a bad key):
  RequestRefused at once, with the server's own words, never retried.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from maskdpo_cli.backends.options import DEFAULT_CONCURRENCY
from maskdpo_cli.errors import MaskDPOError

MAX_BACKOFF_S = 60.0


class RequestRefused(MaskDPOError):
    """The server refused the request itself (a 4xx other than 429): retrying cannot help; exit 2."""

    def __init__(self, url: str, status: int, detail: str, flag: str) -> None:
        self.url, self.status, self.detail = url, status, detail
        super().__init__(f"{flag} {url}: HTTP {status} {detail}".strip())


class EndpointError(MaskDPOError):
    """No usable answer after every retry: the endpoint's fault, not the input's (exit code 1)."""

    exit_code = 1


class _Retryable(Exception):
    """A failure worth another try: what happened (for the final error) and how long to wait."""

    def __init__(self, what: str, wait: float | None = None) -> None:
        super().__init__(what)
        self.wait = wait


@dataclass
class _Server:
    url: str
    in_flight: int = 0
    failures: int = 0       # in a row; while > 0 the server takes one probe at a time
    rest_until: float = 0.0  # time.monotonic() before which it takes nothing


def base_url(url: str, flag: str) -> str:
    """Accept the base URL with or without a trailing slash or /chat/completions; `flag` names it in errors."""
    url = url.strip().rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    if not url.startswith(("http://", "https://")):
        raise MaskDPOError(f"{flag} {url}: expected an http:// or https:// URL")
    return url


class OpenAIClient:
    """POST {url}/chat/completions over several servers, concurrently, with retries (module docstring).

    `flag` is the caller's command-line flag that gave the URLs (--url, --judge-url): every error
    names it, so a user knows which servers failed.
    """

    def __init__(self, urls: Sequence[str], *, flag: str, api_key: str | None = None, max_retries: int = 5,
                 backoff: float = 1.0, timeout: float = 120.0, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise MaskDPOError(f"{flag}: at least one URL is needed")
        self.flag = flag
        self.servers = [_Server(u) for u in dict.fromkeys(base_url(u, flag) for u in urls)]
        self.api_key, self.max_retries, self.backoff, self.timeout = api_key, max_retries, backoff, timeout
        self.concurrency = max(1, concurrency)
        self._http: aiohttp.ClientSession | None = None
        self._capacity: asyncio.Condition | None = None
        self._model: asyncio.Task[str] | None = None

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def describe(self) -> dict[str, Any]:
        return {"url": self.urls[0]} if len(self.servers) == 1 else {"urls": self.urls}

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """The decoded answer of POST /chat/completions, from the least busy server."""
        answer = await self._request("POST", "/chat/completions", body)
        if not isinstance(answer, dict):
            raise EndpointError(f"{self.flag} {self.urls[0]}: /chat/completions answered "
                                f"{json.dumps(answer)[:200]}, not an object")
        return answer

    async def served_model(self) -> str:
        """The first model id that GET /models lists (asked once; concurrent callers share the answer)."""
        if self._model is None:
            self._model = asyncio.ensure_future(self._list_model())
        return await asyncio.shield(self._model)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _list_model(self) -> str:
        listing = await self._request("GET", "/models", None)
        try:
            return str(listing["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.flag} {self.urls[0]}: /models lists no model; name the served "
                                "model explicitly") from None

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """The decoded JSON answer, retried on transient failures, each try on the least busy server."""
        if self._http is None:  # made here, inside the event loop that will use it
            pool = self.concurrency * len(self.servers) + len(self.servers)
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=pool, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else None)
            self._capacity = asyncio.Condition()
        tried: set[int] = set()
        last, last_url = "no attempt", self.urls[0]
        for attempt in range(self.max_retries + 1):
            server = await self._acquire(tried)
            last_url = server.url + path
            try:
                answer = await self._send(method, last_url, body)
            except _Retryable as err:
                await self._release(server, ok=False, rest=err.wait)
                last = str(err)
                tried.add(id(server))
                if len(tried) == len(self.servers):
                    tried.clear()  # every server failed this request once: any may take the next try
                if attempt == self.max_retries:
                    break
                if not self._untried_ready(tried):  # another healthy server takes the next try at once
                    await asyncio.sleep(self._backoff(attempt) if err.wait is None else err.wait)
                continue
            except RequestRefused:
                await self._release(server, ok=True)  # our request's fault, not the server's
                raise
            except BaseException:  # cancelled: says nothing about the server
                await self._release(server, ok=None)
                raise
            await self._release(server, ok=True)
            return answer
        raise EndpointError(f"{self.flag} {last_url}: no usable answer after {self.max_retries + 1} "
                            f"attempts (last: {last})")

    async def _acquire(self, avoid: set[int]) -> _Server:
        """Wait for a free slot; take the least busy healthy server, preferring those not in `avoid`."""
        assert self._capacity is not None
        async with self._capacity:
            while True:
                now = time.monotonic()
                free = [s for s in self.servers if s.rest_until <= now
                        and s.in_flight < (1 if s.failures else self.concurrency)]
                if free:
                    server = min(free, key=lambda s: (id(s) in avoid, s.failures > 0, s.in_flight))
                    server.in_flight += 1
                    return server
                resting = [s.rest_until - now for s in self.servers if s.rest_until > now]
                try:  # woken by a released slot, when the first resting server may take a probe,
                    # or after a second (a wake-up lost to a cancelled waiter costs no more)
                    await asyncio.wait_for(self._capacity.wait(), min(resting + [1.0]))
                except asyncio.TimeoutError:
                    pass

    def _untried_ready(self, tried: set[int]) -> bool:
        now = time.monotonic()
        return any(id(s) not in tried and not s.failures and s.rest_until <= now for s in self.servers)

    async def _release(self, server: _Server, ok: bool | None, rest: float | None = None) -> None:
        assert self._capacity is not None
        async with self._capacity:
            server.in_flight -= 1
            recovered = bool(ok) and server.failures > 0
            if ok:
                server.failures, server.rest_until = 0, 0.0
            elif ok is False:
                server.failures += 1
                if rest is None:
                    rest = min(MAX_BACKOFF_S, self.backoff * 2 ** (server.failures - 1))
                server.rest_until = max(server.rest_until, time.monotonic() + rest)
            # One freed slot wakes one waiter: hundreds wait at once, and waking them all at
            # every answer costs more CPU than the requests. A recovered server has room for many.
            if recovered:
                self._capacity.notify_all()
            else:
                self._capacity.notify()

    async def _send(self, method: str, url: str, body: dict[str, Any] | None) -> Any:
        assert self._http is not None
        try:
            async with self._http.request(method, url, json=body) as answer:
                raw = await answer.read()
                status, retry_after = answer.status, answer.headers.get("Retry-After")
        except aiohttp.ClientConnectorError as err:
            raise _Retryable(f"ConnectError: {err.os_error}; is the server running there?") from None
        except asyncio.TimeoutError:
            raise _Retryable(f"Timeout: no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as err:  # resets, torn answers, protocol errors
            raise _Retryable(f"{type(err).__name__}: {err}") from None
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status} {_text(raw)}".strip(), _retry_after(retry_after))
        if status >= 400:
            raise RequestRefused(url, status, _text(raw), self.flag)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Retryable(f"answer is not JSON: {raw[:120]!r}") from None

    def _backoff(self, attempt: int) -> float:
        # Full jitter: requests that failed together do not retry together.
        return random.uniform(0, min(MAX_BACKOFF_S, self.backoff * 2 ** attempt))


def message_content(answer: Any) -> str | None:
    """choices[0].message.content of a chat completion; None when the answer has no such text."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _text(raw: bytes, limit: int = 300) -> str:
    return raw[:limit].decode("utf-8", "replace").strip()


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header in its delta-seconds form; dates are left to backoff."""
    try:
        return min(MAX_BACKOFF_S, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


__all__ = ["OpenAIClient", "RequestRefused", "EndpointError", "base_url", "DEFAULT_CONCURRENCY"]

"""Chat judges: one reply per conversation, from an OpenAI-compatible endpoint or a local backend.

The endpoint client is built for long runs against a served judge (e.g.
`lmdeploy serve api_server opencompass/anah-v2`): requests run concurrently, and
timeouts, dropped connections, 429 and 5xx are retried with exponential backoff and
jitter (a Retry-After header wins) before a JudgeError names the URL and the last failure.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from maskdpo_cli.errors import JudgeError, MaskDPOError

if TYPE_CHECKING:
    from maskdpo_cli.annotation import JudgeConfig

Messages = list[dict[str, str]]

DEFAULT_URL = "http://127.0.0.1:23333/v1"  # where `lmdeploy serve api_server` listens
JUDGE_BACKENDS = ("openai", "transformers", "lmdeploy")
MAX_BACKOFF_S = 60.0


class Judge(Protocol):
    def complete(self, conversations: list[Messages], temperature: float = 0.0) -> list[str]:
        """One reply per conversation, in order."""
        ...

    def describe(self) -> dict[str, Any]:
        ...


class _Retryable(Exception):
    """A failure worth another try: what happened (for the final error) and how long to wait."""

    def __init__(self, what: str, wait: float | None = None) -> None:
        super().__init__(what)
        self.wait = wait


class OpenAIJudge:
    """POST {url}/chat/completions, concurrently, with retries."""

    def __init__(self, url: str | None = None, model: str | None = None, api_key: str | None = None,
                 max_retries: int = 5, concurrency: int = 8, timeout: float = 120.0,
                 max_tokens: int = 1024, backoff: float = 1.0) -> None:
        self.url = _base_url(url or DEFAULT_URL)
        self._model, self.api_key = model, api_key
        self.max_retries, self.concurrency, self.timeout = max_retries, max(1, concurrency), timeout
        self.max_tokens, self.backoff = max_tokens, backoff

    @property
    def model(self) -> str:
        """The --judge-model, else the first model the endpoint serves (asked once)."""
        if self._model is None:
            self._model = self._served_model()
        return self._model

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "url": self.url, "model": self.model}

    def complete(self, conversations: list[Messages], temperature: float = 0.0) -> list[str]:
        if not conversations:
            return []
        model = self.model
        workers = min(self.concurrency, len(conversations))
        if workers == 1:
            return [self._chat(c, model, temperature) for c in conversations]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge")
        try:
            return list(pool.map(lambda c: self._chat(c, model, temperature), conversations))
        finally:
            # On a failure, requests not yet sent are dropped instead of awaited.
            pool.shutdown(wait=True, cancel_futures=True)

    def _chat(self, messages: Messages, model: str, temperature: float) -> str:
        body = {"model": model, "messages": messages, "temperature": temperature,
                "max_tokens": self.max_tokens, "stream": False}
        reply = self._request("/chat/completions", body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise JudgeError(f"judge endpoint {self.url}/chat/completions: reply without "
                             f"choices[0].message.content: {json.dumps(reply)[:200]}")
        return content

    def _served_model(self) -> str:
        listing = self._request("/models", None)
        try:
            return str(listing["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {self.url}/models lists no model; "
                             "pass --judge-model") from None

    def _request(self, path: str, body: dict[str, Any] | None) -> Any:
        """The decoded JSON answer to GET (body None) or POST, retried on transient failures."""
        url = self.url + path
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            try:
                return self._request_once(url, body)
            except _Retryable as err:
                last = str(err)
                if attempt == self.max_retries:
                    break
                time.sleep(self._backoff(attempt) if err.wait is None else err.wait)
        raise JudgeError(f"judge endpoint {url}: no usable answer after {self.max_retries + 1} "
                         f"attempts (last: {last})")

    def _request_once(self, url: str, body: dict[str, Any] | None) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(url, data=data, headers=headers,
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode("utf-8", "replace")
            if err.code == 429 or err.code >= 500:
                raise _Retryable(f"HTTP {err.code} {detail}".strip(),
                                 _retry_after(err.headers.get("Retry-After"))) from None
            # 4xx other than 429 is our request or our key: retrying would not help.
            raise JudgeError(f"judge endpoint {url}: HTTP {err.code} {detail}".strip()) from None
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets, torn answers
            reason = getattr(err, "reason", err)
            hint = "; is the judge served there?" if isinstance(reason, ConnectionRefusedError) else ""
            raise _Retryable(f"{type(reason).__name__}: {reason}{hint}") from None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Retryable(f"answer is not JSON: {raw[:120]!r}") from None

    def _backoff(self, attempt: int) -> float:
        # Full jitter: concurrent workers that failed together do not retry together.
        return random.uniform(0, min(MAX_BACKOFF_S, self.backoff * 2 ** attempt))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header in its delta-seconds form; dates are left to backoff."""
    try:
        return min(MAX_BACKOFF_S, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


def _base_url(url: str) -> str:
    """Accept the base URL with or without a trailing slash or /chat/completions."""
    url = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    if not url.startswith(("http://", "https://")):
        raise MaskDPOError(f"--judge-url {url}: expected an http:// or https:// URL")
    return url


class BackendJudge:
    """A judge model run in-process by a sampling backend (greedy; the model loads on first use)."""

    def __init__(self, backend_name: str, model: str, max_new_tokens: int = 1024) -> None:
        self.backend_name, self.model, self.max_new_tokens = backend_name, model, max_new_tokens
        self._backend = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend_name, "model": self.model}

    def complete(self, conversations: list[Messages], temperature: float = 0.0) -> list[str]:
        """Greedy replies; `temperature` is ignored (backends' chat() is greedy by contract)."""
        if not conversations:
            return []
        if self._backend is None:
            from maskdpo_cli.backends import make_backend

            self._backend = make_backend(self.backend_name, self.model)
        return self._backend.chat(conversations, self.max_new_tokens)


def make_judge(config: JudgeConfig) -> Judge:
    """The judge named by --judge-backend; nothing is contacted or loaded yet."""
    if config.backend == "openai":
        return OpenAIJudge(config.url, config.model, config.api_key, max_retries=config.max_retries,
                           concurrency=config.concurrency, timeout=config.timeout, backoff=config.backoff)
    if config.backend in ("transformers", "lmdeploy"):
        if not config.model:
            raise MaskDPOError(f"--judge-backend {config.backend} needs --judge-model "
                               "(a local HF directory of the judge, e.g. ANAH-v2)")
        return BackendJudge(config.backend, config.model)
    raise MaskDPOError(f"--judge-backend {config.backend}: expected one of {', '.join(JUDGE_BACKENDS)}")


__all__ = ["Judge", "OpenAIJudge", "BackendJudge", "make_judge", "DEFAULT_URL", "JUDGE_BACKENDS"]

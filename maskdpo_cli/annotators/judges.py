"""Chat judges: the next reply of one conversation, from served endpoints or a local backend.

`JudgeConfig` says how to reach one (the --judge-* options); `make_judge` builds it.

A Judge is awaited once per conversation turn, by many coroutines at once (annotate keeps
many questions and sentences in flight on one event loop):

- OpenAIJudge sends each reply request through maskdpo_cli.openai_client.OpenAIClient, which
  spreads them over every --judge-url and retries what can be retried.
- BackendJudge runs a judge model in-process (transformers, lmdeploy). Replies asked for
  while a batch is running are collected and run as the next batch of `backend.chat` in a
  worker thread, so the model works in batches and the event loop never blocks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from maskdpo_cli.backends.options import DEFAULT_CONCURRENCY
from maskdpo_cli.errors import JudgeError, MaskDPOError
from maskdpo_cli.openai_client import OpenAIClient, message_content

Messages = list[dict[str, str]]

DEFAULT_URL = "http://127.0.0.1:23333/v1"  # where `lmdeploy serve api_server` listens
JUDGE_BACKENDS = ("openai", "transformers", "lmdeploy")
MAX_TOKENS = 1024


@dataclass(frozen=True)
class JudgeConfig:
    """How to reach the chat judge (used by the anah-v2 and factscore annotators)."""

    model: str | None = None          # None with openai: the first model the endpoint serves
    backend: str = "openai"           # openai | transformers | lmdeploy
    urls: tuple[str, ...] = ()        # (): http://127.0.0.1:23333/v1 (lmdeploy serve's default)
    api_key: str | None = None
    prompts_file: str | Path | None = None
    max_retries: int = 5
    concurrency: int = DEFAULT_CONCURRENCY  # requests in flight per server (batch size in-process)
    timeout: float = 120.0            # seconds per request
    backoff: float = 1.0              # first retry waits up to this long, doubling each time
    cache_path: str | Path | None = None  # where judgments are appended; set from -o

    @property
    def capacity(self) -> int:
        """Requests the judge can usefully have in flight at once."""
        return max(1, self.concurrency) * max(1, len(self.urls))


class Judge(Protocol):
    async def reply(self, messages: Messages, temperature: float = 0.0) -> str:
        """The judge's next reply in this conversation; transport failures raise."""
        ...

    async def ready(self) -> None:
        """Learn what describe() reports (e.g. the served model's name); reply() does it itself."""
        ...

    def describe(self) -> dict[str, Any]:
        """{"backend", "model", ...}: complete once ready() or reply() has returned."""
        ...

    async def aclose(self) -> None:
        ...


class OpenAIJudge:
    """Replies from OpenAI-compatible endpoints (e.g. `lmdeploy serve api_server` of ANAH-v2)."""

    def __init__(self, client: OpenAIClient, model: str | None = None, max_tokens: int = MAX_TOKENS) -> None:
        self.client, self.model, self.max_tokens = client, model, max_tokens

    async def ready(self) -> None:
        if self.model is None:  # no --judge-model: the first model the endpoint serves
            self.model = await self.client.served_model()

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", **self.client.describe(), "model": self.model}

    async def reply(self, messages: Messages, temperature: float = 0.0) -> str:
        await self.ready()
        body = {"model": self.model, "messages": messages, "temperature": temperature,
                "max_tokens": self.max_tokens, "stream": False}
        answer = await self.client.chat(body)
        content = message_content(answer)
        if content is None:
            raise JudgeError(f"judge endpoint {self.client.urls[0]}: a reply without "
                             f"choices[0].message.content: {str(answer)[:200]}")
        return content

    async def aclose(self) -> None:
        await self.client.aclose()


class BackendJudge:
    """A judge model run in-process by a sampling backend: greedy, batched, loaded on first use."""

    def __init__(self, backend_name: str, model: str, max_batch: int = 128,
                 max_new_tokens: int = MAX_TOKENS) -> None:
        self.backend_name, self.model = backend_name, model
        self.max_batch, self.max_new_tokens = max(1, max_batch), max_new_tokens
        self._backend: Any = None
        self._pending: list[tuple[Messages, asyncio.Future[str]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend_name, "model": self.model}

    async def reply(self, messages: Messages, temperature: float = 0.0) -> str:
        """Greedy; `temperature` is ignored (backends' chat() is greedy by contract)."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((messages, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.ensure_future(self._run_batches())
        return await future

    async def _run_batches(self) -> None:
        await asyncio.sleep(0)  # let the coroutines woken in this tick add their conversations
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            try:
                replies = await asyncio.to_thread(self._chat, [messages for messages, _ in batch])
            except BaseException as err:  # every waiter of this batch gets the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                if not isinstance(err, Exception):
                    raise
                continue
            for (_, future), text in zip(batch, replies):
                if not future.done():
                    future.set_result(text)

    def _chat(self, conversations: list[Messages]) -> list[str]:
        if self._backend is None:
            from maskdpo_cli.backends import make_backend

            self._backend = make_backend(self.backend_name, self.model)
        return self._backend.chat(conversations, self.max_new_tokens)

    async def aclose(self) -> None:
        pass


def make_judge(config: JudgeConfig) -> Judge:
    """The judge named by --judge-backend; nothing is contacted or loaded yet."""
    if config.backend == "openai":
        client = OpenAIClient(config.urls or (DEFAULT_URL,), flag="--judge-url", api_key=config.api_key,
                              max_retries=config.max_retries, backoff=config.backoff,
                              timeout=config.timeout, concurrency=config.concurrency)
        return OpenAIJudge(client, config.model)
    if config.backend in ("transformers", "lmdeploy"):
        if not config.model:
            raise MaskDPOError(f"--judge-backend {config.backend} needs --judge-model "
                               "(a local HF directory of the judge, e.g. ANAH-v2)")
        return BackendJudge(config.backend, config.model, max_batch=config.concurrency)
    raise MaskDPOError(f"--judge-backend {config.backend}: expected one of {', '.join(JUDGE_BACKENDS)}")


__all__ = ["Judge", "Messages", "OpenAIJudge", "BackendJudge", "make_judge", "DEFAULT_URL", "JUDGE_BACKENDS"]

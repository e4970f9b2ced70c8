"""Sampling from served engines: any OpenAI-compatible chat server (`lmdeploy serve api_server`,
`lmdeploy serve proxy`, vLLM, SGLang, `transformers serve`), one or several (--url, repeated).

- The server applies the model's chat template and its stop tokens: we send the messages.
- One request per response, each with its own seed derived from the question's seed and the
  response index (as the LMDeploy backend does), so response j of a question is the same
  request whatever else is in flight, and the same again after a resume. `n` is not sent:
  some servers ignore it without a word (`transformers serve` answers one choice).
- The sampling settings are sent as they are: temperature, max_tokens, seed, and when
  sampling top_p and top_k (the extension field vLLM and LMDeploy accept; 0 = off, not
  sent). At temperature 0 the answer is the greedy one whatever top_p/top_k say, so they
  are not sent then. A server that refuses one of them stops the run with an error naming
  the setting and the flag (`probe`, before any record is written): dropping it would
  silently change the distribution the paper samples from.
- Requests are in flight across questions: a window of questions is asked at once and the
  answers come back in input order (`stream`), so the servers stay busy while the output
  stays ordered and resumable. The requests live on an event loop in a thread of its own:
  while the caller writes (and fsyncs) a record, answers keep arriving and new requests
  keep leaving.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import deque
from collections.abc import Coroutine
from concurrent.futures import Future
from collections.abc import Iterator, Sequence
from typing import Any

from maskdpo_cli.backends.base import GenerationParams, Messages, Progress, derive_seed
from maskdpo_cli.backends.options import OpenAIOptions
from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.openai_client import EndpointError, OpenAIClient, RequestRefused, message_content

FLAG = "--url"
PROBE = [{"role": "user", "content": "Hi"}]
# What to tell a user whose server refuses one of our request fields.
FIXES = {
    "top_k": "pass --top-k 0 to sample without top-k (it changes the distribution the paper samples from)",
    "top_p": "pass --top-p 1 to sample without nucleus filtering",
    "temperature": "choose another --temperature",
    "max_tokens": "choose a smaller --max-new-tokens",
    "seed": "responses could not be reproduced or resumed without it: use a server that accepts seed",
    "model": "pass --model with a name the server lists, or leave --model out to use the first one",
}


class OpenAIBackend:
    """K seeded chat requests per question against one or more OpenAI-compatible servers."""

    name = "openai"

    def __init__(self, options: OpenAIOptions, model: str | None = None) -> None:
        if not options.urls:
            raise MaskDPOError("--backend openai needs the server: pass --url URL (repeat it for several servers)")
        self.client = OpenAIClient(options.urls, flag=FLAG, api_key=options.api_key,
                                   max_retries=options.max_retries, concurrency=options.concurrency)
        self.model = model
        # One loop for the backend's life (the client's connection pool belongs to it), in its own thread.
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="maskdpo-openai", daemon=True)
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        """Where the responses came from, for the samples record's "generation"."""
        return self.client.describe()

    def probe(self, params: GenerationParams) -> str:
        """Ask once, with every sampling setting, before anything is written; the served model id."""
        if self.model is None:
            self.model = self._submit(self.client.served_model()).result()
        probe = GenerationParams(n=1, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                 max_new_tokens=1, seed=params.seed)
        self._submit(self._response(PROBE, probe, params.seed, None)).result()
        return self.model

    def request(self, messages: Messages, params: GenerationParams, seed: int) -> dict[str, Any]:
        """The body of one chat request (module docstring: what is sent and why)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": params.max_new_tokens,
                                "temperature": params.temperature, "seed": seed}
        if not params.greedy:
            body["top_p"] = params.top_p
            if params.top_k > 0:
                body["top_k"] = params.top_k
        return body

    def window(self, n: int) -> int:
        """Questions in flight: enough for twice what the servers take at once, so a slow question
        at the head of the output does not leave them idle."""
        capacity = self.client.concurrency * len(self.client.servers)
        return max(2, 2 * math.ceil(capacity / n))

    def stream(self, prompts: Sequence[Messages], params: GenerationParams, seeds: Sequence[int],
               on_progress: Progress | None = None) -> Iterator[list[str]]:
        """`params.n` responses per prompt, yielded in input order while later prompts are in flight."""
        jobs = iter(zip(prompts, seeds))
        pending: deque[Future[list[str]]] = deque()

        def top_up() -> None:
            while len(pending) < self.window(params.n):
                job = next(jobs, None)
                if job is None:
                    return
                pending.append(self._submit(self._question(*job, params, on_progress)))

        try:
            top_up()
            while pending:
                texts = pending.popleft().result()
                top_up()
                yield texts
        finally:
            for future in pending:  # an error or an interrupt: the questions still out are dropped
                future.cancel()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._submit(self.client.aclose()).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _question(self, prompt: Messages, seed: int, params: GenerationParams,
                        on_progress: Progress | None) -> list[str]:
        tasks = [asyncio.ensure_future(self._response(prompt, params, derive_seed(seed, j), on_progress))
                 for j in range(params.n)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one response failed: the question's others are not waited for
                task.cancel()
            raise

    async def _response(self, prompt: Messages, params: GenerationParams, seed: int,
                        on_progress: Progress | None) -> str:
        body = self.request(prompt, params, seed)
        try:
            answer = await self.client.chat(body)
        except RequestRefused as err:
            raise refusal(err, body) from None
        text = message_content(answer)
        if text is None:
            raise EndpointError(f"{FLAG} {', '.join(self.client.urls)}: an answer without "
                                f"choices[0].message.content: {json.dumps(answer)[:200]}")
        if on_progress:
            usage = answer.get("usage") or {}
            on_progress(int(usage.get("completion_tokens") or 0), 1)
        return text


def refusal(err: RequestRefused, body: dict[str, Any]) -> MaskDPOError:
    """A refused request as a sentence naming the setting and the flag that changes it."""
    fields = [field for field in FIXES if field in body and field in err.detail]
    if not fields and "pinned" in err.detail:  # `transformers serve` serves only its own model
        fields = ["model"]
    where = f"the server at {err.url.removesuffix('/chat/completions')}"
    if not fields:
        return RequestRefused(err.url, err.status, err.detail, FLAG)
    field = fields[0]
    return MaskDPOError(f"{where} refuses {field} {json.dumps(body[field])} (HTTP {err.status}: {err.detail}); "
                        f"{FIXES[field]}")

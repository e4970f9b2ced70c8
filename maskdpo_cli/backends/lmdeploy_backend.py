"""The GPU backend: LMDeploy's pipeline (TurboMind or its PyTorch engine), same interface.

LMDeploy is an optional extra (`pip install 'maskdpo[gpu]'`, lmdeploy==0.9.2) and is
imported only here. Prompts are rendered with the model's own HF chat template (the text
the transformers backend and training see) and passed with LMDeploy's preprocessing off,
so both backends condition on the same tokens. LMDeploy 0.9 generates one sequence per
request (GenerationConfig.n must be 1): the K samples of a question are K requests, each
with its own seed derived from (seeds[i], j).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maskdpo_cli.backends.base import GenerationParams, Messages, Progress, derive_seed
from maskdpo_cli.backends.options import LMDeployOptions
from maskdpo_cli.backends.transformers_backend import stop_token_ids
from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.models import chat_prompt_text, load_tokenizer

INSTALL_HINT = ("the lmdeploy backend needs LMDeploy on a CUDA machine: pip install 'maskdpo[gpu]' "
                "(lmdeploy==0.9.2), or use --backend transformers")
DEFAULT_BATCH_SIZE = 256


def _import_lmdeploy() -> Any:
    try:
        import lmdeploy
    except ImportError as err:
        raise MaskDPOError(f"{INSTALL_HINT} ({err})") from None
    return lmdeploy


def _generation_config(path: str | Path) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(path))
    except OSError:  # no generation_config.json: the tokenizer's eos is enough
        return None


class LMDeployBackend:
    """Sampling and greedy chat through `lmdeploy.pipeline` on a local HF model directory."""

    name = "lmdeploy"

    def __init__(self, path: str | Path, options: LMDeployOptions = LMDeployOptions()) -> None:
        if options.engine not in ("turbomind", "pytorch"):
            raise MaskDPOError(f"lmdeploy engine {options.engine!r}: expected turbomind or pytorch")
        lmdeploy = _import_lmdeploy()
        self.lmdeploy = lmdeploy
        self.batch_size = options.batch_size or DEFAULT_BATCH_SIZE
        self.tokenizer = load_tokenizer(str(path))
        engine_config = (lmdeploy.TurbomindEngineConfig if options.engine == "turbomind"
                         else lmdeploy.PytorchEngineConfig)
        config = engine_config(tp=options.tp, max_batch_size=self.batch_size, session_len=options.session_len)
        self.pipe = lmdeploy.pipeline(str(path), backend_config=config)
        self.stop_ids = sorted(stop_token_ids(self.tokenizer, _generation_config(path)))
        self.generated_tokens = 0

    def prompt_text(self, messages: Messages) -> str:
        """The chat-templated prompt, minus a leading BOS that LMDeploy's encoder adds again."""
        text = chat_prompt_text(self.tokenizer, messages)
        bos = self.tokenizer.bos_token
        adds_bos = bool(bos) and self.tokenizer("", add_special_tokens=True)["input_ids"][:1] == [
            self.tokenizer.bos_token_id]
        if adds_bos and text.startswith(bos):
            text = text[len(bos):]
        return text

    def _config(self, params: GenerationParams, seed: int) -> Any:
        return self.lmdeploy.GenerationConfig(
            n=1, max_new_tokens=params.max_new_tokens, do_sample=not params.greedy,
            temperature=params.temperature if not params.greedy else 1.0,
            top_k=params.top_k if not params.greedy else 1, top_p=params.top_p,
            random_seed=seed, stop_token_ids=self.stop_ids, skip_special_tokens=True)

    def generate(self, prompts: list[Messages], params: GenerationParams, seeds: list[int],
                 on_progress: Progress | None = None) -> list[list[str]]:
        """`params.n` responses per prompt, one LMDeploy request per (prompt, sample)."""
        if params.temperature > 2.0:
            raise MaskDPOError(f"--temperature {params.temperature}: LMDeploy accepts 0 to 2")
        texts = [self.prompt_text(p) for p in prompts]
        requests = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        configs = [self._config(params, derive_seed(seeds[i], j)) for i, j in requests]
        responses = self.pipe([texts[i] for i, _ in requests], gen_config=configs, do_preprocess=False)
        out: list[list[str]] = [[""] * params.n for _ in prompts]
        for (i, j), response in zip(requests, responses):
            out[i][j] = response.text
            self.generated_tokens += response.generate_token_len
        if on_progress:
            on_progress(sum(r.generate_token_len for r in responses), len(responses))
        return out

    def chat(self, conversations: list[Messages], max_new_tokens: int) -> list[str]:
        """One greedy reply per conversation."""
        params = GenerationParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        return [replies[0] for replies in self.generate(conversations, params, [0] * len(conversations))]

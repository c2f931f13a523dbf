"""vLLM backend (GPU; optional extra ``stepforge[vllm]``, imported only when used).

Prefix reuse is vLLM's automatic prefix caching: ``n`` samples of one prompt share its KV
blocks, and so do later calls that extend the same prefix (step-by-step search, MC rollouts).
"""

from __future__ import annotations

from collections.abc import Sequence

from stepforge.backends.base import (
    BackendError,
    Completion,
    GenerationCost,
    GenerationResult,
    cut_at_stop,
    validate_request,
)
from stepforge.backends.chat import has_chat_template, render_prompts
from stepforge.seeds import prompt_seeds
from stepforge.tasks import Prompt


class VLLMPolicy:
    def __init__(self, model: str, device: str | None = None, dtype: str | None = None, **llm_kwargs) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise BackendError("the vllm backend needs the optional extra: pip install 'stepforge[vllm]' "
                               f"(import failed: {err})") from err
        self._sampling_params = SamplingParams
        llm_kwargs.setdefault("enable_prefix_caching", True)
        if dtype and dtype != "auto":
            llm_kwargs.setdefault("dtype", dtype)
        if device and device not in ("auto", "cuda"):  # vLLM places itself; cuda:N = CUDA_VISIBLE_DEVICES
            raise BackendError(f"the vllm backend runs on the GPUs CUDA_VISIBLE_DEVICES shows; got --device {device}")
        self.llm = LLM(model=model, **llm_kwargs)
        self.name = f"vllm:{model}"

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.llm.get_tokenizer())

    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, stop: Sequence[str] | None = None,
                 max_new_tokens: int = 256, temperature: float = 1.0, seed: int | Sequence[int] | None = None
                 ) -> GenerationResult:
        validate_request(prompts, n, max_new_tokens, temperature)
        texts, _ = render_prompts(self.llm.get_tokenizer(), prompts)
        seeds = prompt_seeds(seed, len(texts))  # one SamplingParams per prompt: its own seed
        params = [self._sampling_params(n=n, temperature=temperature, max_tokens=max_new_tokens,
                                        stop=list(stop or []) or None, seed=None if seeds is None else seeds[i])
                  for i in range(len(texts))]
        outputs = self.llm.generate(texts, params, use_tqdm=False)
        rows, cost = [], GenerationCost()
        for out in outputs:
            row = []
            longest = 0
            for o in out.outputs:
                text, hit = cut_at_stop(o.text, stop)
                tokens = len(o.token_ids)
                longest = max(longest, tokens)
                reason = "length" if o.finish_reason == "length" else "stop"
                stop_reason = hit or (o.stop_reason if isinstance(o.stop_reason, str) else None)
                row.append(Completion(text, tokens, reason, stop_reason))
            rows.append(row)
            cost = cost + GenerationCost(len(out.prompt_token_ids or []), sum(c.tokens for c in row), 1 + longest)
        return GenerationResult(rows, cost)

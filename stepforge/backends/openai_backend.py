"""Any OpenAI-compatible server (vLLM serve, SGLang, TGI, llama.cpp, stepforge serve) through
``/v1/completions``: the prompt is the shared prefix and ``n`` asks for n continuations.

Timeouts and retries with exponential backoff on connection errors and 5xx/429 replies are
the official ``openai`` client's; after the last retry we raise :class:`BackendError` naming
the server and what failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from stepforge.backends.base import (
    BackendError,
    Completion,
    GenerationCost,
    GenerationResult,
    cut_at_stop,
    validate_request,
)


class OpenAIPolicy:
    """``base_url`` like ``http://127.0.0.1:8000/v1``. ``prompts_per_request`` prompts go in one
    request (the completions API takes a list); ``concurrency`` requests run at once."""

    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", timeout: float = 60.0,
                 max_retries: int = 3, prompts_per_request: int = 16, concurrency: int = 4) -> None:
        import openai

        self._openai = openai
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.prompts_per_request = prompts_per_request
        self.concurrency = concurrency
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout,
                                    max_retries=max_retries)
        self.name = f"openai:{self.base_url}:{model}"

    def generate(self, prompts: Sequence[str], *, n: int = 1, stop: Sequence[str] | None = None,
                 max_new_tokens: int = 256, temperature: float = 1.0, seed: int | None = None
                 ) -> GenerationResult:
        validate_request(prompts, n, max_new_tokens, temperature)
        chunks = [list(prompts[i:i + self.prompts_per_request])
                  for i in range(0, len(prompts), self.prompts_per_request)]
        args = [(c, n, list(stop or []), max_new_tokens, temperature,
                 None if seed is None else seed + k) for k, c in enumerate(chunks)]
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(chunks)))) as pool:
            parts = list(pool.map(lambda a: self._request(*a), args))
        completions = [row for rows, _ in parts for row in rows]
        cost = GenerationCost()
        for _, c in parts:
            cost = cost + c
        return GenerationResult(completions, cost)

    def _request(self, prompts: list[str], n: int, stop: list[str], max_new_tokens: int,
                 temperature: float, seed: int | None) -> tuple[list[list[Completion]], GenerationCost]:
        oa = self._openai
        try:
            resp = self.client.completions.create(
                model=self.model, prompt=prompts, n=n, max_tokens=max_new_tokens, temperature=temperature,
                stop=stop or None, seed=seed)
        except oa.APIConnectionError as err:
            raise BackendError(f"{self.base_url}: server unreachable after {self.max_retries + 1} attempts "
                               f"({type(err).__name__}: {err})") from err
        except oa.APIStatusError as err:
            raise BackendError(f"{self.base_url}: HTTP {err.status_code} after {self.max_retries + 1} attempts "
                               f"(retries apply to 408/409/429/5xx): {str(err)[:300]}") from err
        except oa.APIError as err:  # malformed body and the like
            raise BackendError(f"{self.base_url}: bad reply: {err}") from err
        except ValueError as err:  # the client parses a non-JSON body with json.loads
            raise BackendError(f"{self.base_url}: bad reply (not JSON): {err}") from err
        rows: list[list[Completion | None]] = [[None] * n for _ in prompts]
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list):
            raise BackendError(f"{self.base_url}: reply has no 'choices' list: {str(resp)[:200]}")
        per_row = [0] * len(prompts)
        generated = 0
        for ch in choices:
            i = ch.index // n  # the API numbers choices prompt-major: index = prompt * n + sample
            if not 0 <= i < len(prompts) or per_row[i] >= n:
                raise BackendError(f"{self.base_url}: choice index {ch.index} out of range for "
                                   f"{len(prompts)} prompts x n={n}")
            text, hit = cut_at_stop(ch.text or "", stop)  # some servers return the stop string
            reason = "length" if ch.finish_reason == "length" else "stop"
            stop_reason = hit or _stop_reason(ch, stop)
            tokens = _choice_tokens(ch)
            generated += tokens
            rows[i][per_row[i]] = Completion(text, tokens, reason, stop_reason)
            per_row[i] += 1
        if any(c is None for row in rows for c in row):
            raise BackendError(f"{self.base_url}: expected {len(prompts) * n} choices, got {len(choices)}")
        usage = getattr(resp, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
        if usage is not None and getattr(usage, "completion_tokens", None) is not None:
            generated = usage.completion_tokens
        # A server does not tell its forward passes; one prefill plus one per generated token of
        # the longest choice is what a batched server does for this request.
        longest = max((c.tokens for row in rows for c in row), default=0)
        return rows, GenerationCost(prompt_tokens, generated, 1 + longest)  # type: ignore[arg-type]


def _stop_reason(choice, stop: list[str]) -> str | None:
    # vLLM reports the matched stop string as choice.stop_reason; others say nothing.
    extra = getattr(choice, "model_extra", None) or {}
    value = extra.get("stop_reason")
    return value if isinstance(value, str) and value in stop else None


def _choice_tokens(choice) -> int:
    extra = getattr(choice, "model_extra", None) or {}
    if isinstance(extra.get("completion_tokens"), int):  # stepforge serve reports it per choice
        return extra["completion_tokens"]
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is not None and getattr(logprobs, "tokens", None):
        return len(logprobs.tokens)
    return 0

"""Any OpenAI-compatible server (vLLM serve, SGLang, TGI, llama.cpp, stepforge serve) through
``/v1/completions``: the prompt is the shared prefix and ``n`` asks for n continuations.

- Seeds: a seeded call sends one prompt per request with that prompt's own seed (from
  :mod:`stepforge.seeds`), so samples do not depend on how prompts were batched; unseeded
  calls send ``prompts_per_request`` prompts per request (the API takes a list).
- A server that ignores a list ``prompt`` (answers n choices instead of n·len(prompts)) is
  detected on the first such reply, logged, and sent one prompt per request from then on.
- Token counts: per choice when the server says (stepforge serve) or sends logprobs; else
  the request's ``usage.completion_tokens`` (what spec servers, vLLM included, send) is
  apportioned over its choices by text length.
- Chat prompts (:class:`~stepforge.tasks.Chat`) go to ``/v1/chat/completions``, one per
  request; a partial assistant answer is continued with vLLM's ``continue_final_message``
  extension (stepforge serve honours it too). With ``tokenizer`` (a local dir holding the
  served model's tokenizer) they are rendered here and sent to ``/v1/completions`` instead,
  which works with any server.
- Retries: the official client's (exponential backoff on connection errors, timeouts,
  408/409/429/5xx), plus ours for 200 replies that are truncated or not JSON.
"""

from __future__ import annotations

import logging
import time
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
from stepforge.backends.chat import has_chat_template, render_prompts
from stepforge.seeds import prompt_seeds
from stepforge.tasks import Chat, Prompt

log = logging.getLogger(__name__)


class _BadReply(Exception):
    """A 200 reply that cannot be used (not JSON, cut off, no choices): retried."""


class OpenAIPolicy:
    """``base_url`` like ``http://127.0.0.1:8000/v1``. Unseeded calls put ``prompts_per_request``
    prompts in one request; ``concurrency`` requests run at once; ``timeout`` (seconds) and
    ``max_retries`` apply to every request."""

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str = "EMPTY", timeout: float = 60.0,
                 max_retries: int = 3, prompts_per_request: int = 16, concurrency: int = 8,
                 tokenizer: str | None = None) -> None:
        import openai

        if timeout <= 0 or max_retries < 0 or prompts_per_request < 1 or concurrency < 1:
            raise ValueError("need timeout > 0, retries >= 0, prompts_per_request >= 1, concurrency >= 1")
        self._openai = openai
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.prompts_per_request = prompts_per_request
        self.concurrency = concurrency
        self.list_prompts_ok: bool | None = None  # learned from the first multi-prompt reply
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout,
                                    max_retries=max_retries)
        self.model = model or self._only_served_model()
        self.tokenizer = None
        if tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.name = f"openai:{self.base_url}:{self.model}"

    def _only_served_model(self) -> str:
        """The model name when none was given: the server's only one (``/v1/models``)."""
        try:
            served = [m.id for m in self.client.models.list()]
        except self._openai.APIConnectionError as err:
            raise BackendError(f"{self.base_url}: server unreachable after {self.max_retries + 1} attempts "
                               f"({type(err).__name__}: {err})") from None
        except Exception as err:
            raise BackendError(f"{self.base_url}: no --model given and /v1/models could not be read "
                               f"({type(err).__name__}: {str(err)[:200]}); pass --model") from None
        if len(served) != 1:
            raise BackendError(f"{self.base_url}: no --model given and the server serves {len(served)} models "
                               f"({', '.join(served[:10])}); pass --model")
        return served[0]

    @property
    def has_chat_template(self) -> bool:
        """Known only with a local tokenizer; chat is then opt-in (``--chat``)."""
        return self.tokenizer is not None and has_chat_template(self.tokenizer)

    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, stop: Sequence[str] | None = None,
                 max_new_tokens: int = 256, temperature: float = 1.0, seed: int | Sequence[int] | None = None
                 ) -> GenerationResult:
        validate_request(prompts, n, max_new_tokens, temperature)
        seeds = prompt_seeds(seed, len(prompts))
        if prompts and isinstance(prompts[0], Chat) and self.tokenizer is not None:
            prompts, _ = render_prompts(self.tokenizer, prompts)
        if (prompts and isinstance(prompts[0], Chat)) or seeds is not None or self.list_prompts_ok is False:
            chunks = [[p] for p in prompts]
        else:
            chunks = [list(prompts[i:i + self.prompts_per_request])
                      for i in range(0, len(prompts), self.prompts_per_request)]
        args = [(c, n, list(stop or []), max_new_tokens, temperature, None if seeds is None else seeds[k])
                for k, c in enumerate(chunks)]
        if self.list_prompts_ok is None and len(chunks) > 0 and len(chunks[0]) > 1:
            first = self._request_or_split(*args[0])  # learn whether list prompts work before fanning out
            parts = [first, *self._map(args[1:])]
        else:
            parts = self._map(args)
        return GenerationResult(*_merge(parts))

    def _map(self, args: list[tuple]) -> list[tuple[list[list[Completion]], GenerationCost]]:
        if not args:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(args)))) as pool:
            return list(pool.map(lambda a: self._request_or_split(*a), args))

    def _request_or_split(self, prompts: list[str], n: int, stop: list[str], max_new_tokens: int,
                          temperature: float, seed: int | None) -> tuple[list[list[Completion]], GenerationCost]:
        if len(prompts) > 1 and self.list_prompts_ok is False:
            return _merge([self._request_or_split([p], n, stop, max_new_tokens, temperature, seed) for p in prompts])
        rows, cost, ignored_list = self._request_maybe_list(prompts, n, stop, max_new_tokens, temperature, seed)
        if ignored_list:
            log.warning("%s ignores a list 'prompt' (answered %d choices for %d prompts x n=%d); sending one "
                        "prompt per request from now on", self.base_url, n, len(prompts), n)
            self.list_prompts_ok = False
            return self._request_or_split(prompts, n, stop, max_new_tokens, temperature, seed)
        if len(prompts) > 1:
            self.list_prompts_ok = True
        return rows, cost

    def _request_maybe_list(self, prompts: list[str], n: int, stop: list[str], max_new_tokens: int,
                            temperature: float, seed: int | None
                            ) -> tuple[list[list[Completion]], GenerationCost, bool]:
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._call(prompts, n, stop, max_new_tokens, temperature, seed)
                choices = getattr(resp, "choices", None)
                if not isinstance(choices, list) or not choices:
                    raise _BadReply(f"reply has no 'choices': {str(resp)[:200]}")
                if len(prompts) > 1 and len(choices) == n:
                    return [], GenerationCost(), True
                rows, cost = self._parse(resp, choices, prompts, n, stop)
                return rows, cost, False
            except _BadReply as err:
                if attempt == self.max_retries:
                    raise BackendError(f"{self.base_url}: bad reply after {attempt + 1} attempts: {err}") from None
                time.sleep(min(8.0, 0.25 * 2 ** attempt))
        raise AssertionError("unreachable")

    def _call(self, prompts, n, stop, max_new_tokens, temperature, seed):
        oa = self._openai
        attempts = self.max_retries + 1
        try:
            if isinstance(prompts[0], Chat):
                chat = prompts[0]
                extra = {"continue_final_message": True, "add_generation_prompt": False} if chat.continues else None
                return self.client.chat.completions.create(
                    model=self.model, messages=[dict(m) for m in chat.messages], n=n, max_tokens=max_new_tokens,
                    temperature=temperature, stop=stop or None, seed=seed, extra_body=extra)
            return self.client.completions.create(
                model=self.model, prompt=prompts if len(prompts) > 1 else prompts[0], n=n, max_tokens=max_new_tokens,
                temperature=temperature, stop=stop or None, seed=seed)
        except oa.APITimeoutError as err:
            raise BackendError(f"{self.base_url}: timed out after {self.timeout:g} s, {attempts} attempts "
                               "(raise --timeout for a slow server)") from err
        except oa.APIConnectionError as err:
            raise BackendError(f"{self.base_url}: server unreachable after {attempts} attempts "
                               f"({type(err).__name__}: {err})") from err
        except oa.APIStatusError as err:
            if err.status_code == 404 and "model" in str(err).lower():
                raise BackendError(f"{self.base_url}: the server does not serve model {self.model!r} "
                                   f"(HTTP 404): {str(err)[:300]}") from err
            raise BackendError(f"{self.base_url}: HTTP {err.status_code} after {attempts} attempts "
                               f"(retries apply to 408/409/429/5xx): {str(err)[:300]}") from err
        except ValueError as err:  # the client parses the body with json.loads
            raise _BadReply(f"not JSON ({type(err).__name__}: {str(err)[:200]})") from err
        except oa.APIError as err:  # malformed / truncated body on a 200
            raise _BadReply(f"{type(err).__name__}: {str(err)[:200]}") from err

    def _parse(self, resp, choices: list, prompts: list[str], n: int, stop: list[str]
               ) -> tuple[list[list[Completion]], GenerationCost]:
        rows: list[list[Completion | None]] = [[None] * n for _ in prompts]
        per_row = [0] * len(prompts)
        exact: list[int | None] = []
        for ch in choices:
            index = getattr(ch, "index", None)
            if not isinstance(index, int):
                raise _BadReply(f"choice without an integer index: {str(ch)[:200]}")
            i = index // n  # the API numbers choices prompt-major: index = prompt * n + sample
            if not 0 <= i < len(prompts) or per_row[i] >= n:
                raise BackendError(f"{self.base_url}: choice index {index} out of range for "
                                   f"{len(prompts)} prompts x n={n}")
            text, hit = cut_at_stop(_choice_text(ch), stop)  # some servers return the stop string
            reason = "length" if ch.finish_reason == "length" else "stop"
            exact.append(_choice_tokens(ch))
            rows[i][per_row[i]] = Completion(text, 0, reason, hit or _stop_reason(ch, stop))
            per_row[i] += 1
        if any(c is None for row in rows for c in row):
            raise _BadReply(f"expected {len(prompts) * n} choices, got {len(choices)}")
        flat = [c for row in rows for c in row]  # type: ignore[misc]
        usage = getattr(resp, "usage", None)
        total = getattr(usage, "completion_tokens", None) if usage is not None else None
        counts = _apportion(exact, [len(c.text) for c in flat], total)
        for c, k in zip(flat, counts, strict=True):
            c.tokens = k
        generated = total if isinstance(total, int) else sum(counts)
        prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
        # A server does not tell its forward passes; one prefill plus one per generated token of
        # the longest choice is what a batched server does for this request.
        longest = max(counts, default=0)
        return rows, GenerationCost(prompt_tokens, generated, 1 + longest)  # type: ignore[return-value]


def _merge(parts: list[tuple[list[list[Completion]], GenerationCost]]
           ) -> tuple[list[list[Completion]], GenerationCost]:
    """Rows of several requests, in order, and their summed cost."""
    return [row for rows, _ in parts for row in rows], sum((c for _, c in parts), GenerationCost())


def _apportion(exact: list[int | None], lengths: list[int], total: int | None) -> list[int]:
    """Tokens per choice: the exact count where known; otherwise ``total`` (usage) minus the
    known counts, shared by text length (largest remainder, so the counts add up to it)."""
    if all(e is not None for e in exact):
        return [int(e) for e in exact]  # type: ignore[arg-type]
    if not isinstance(total, int):
        return [int(e) if e is not None else 0 for e in exact]
    unknown = [i for i, e in enumerate(exact) if e is None]
    left = max(0, total - sum(e for e in exact if e is not None))
    weights = [max(1, lengths[i]) for i in unknown]
    shares = [left * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    for j in sorted(range(len(unknown)), key=lambda j: shares[j] - counts[j], reverse=True)[:left - sum(counts)]:
        counts[j] += 1
    out = [int(e) if e is not None else 0 for e in exact]
    for i, k in zip(unknown, counts, strict=True):
        out[i] = k
    return out


def _choice_text(choice) -> str:
    message = getattr(choice, "message", None)  # chat completions
    if message is not None:
        return getattr(message, "content", None) or ""
    return getattr(choice, "text", None) or ""


def _stop_reason(choice, stop: list[str]) -> str | None:
    # vLLM reports the matched stop string as choice.stop_reason; others say nothing.
    extra = getattr(choice, "model_extra", None) or {}
    value = extra.get("stop_reason")
    return value if isinstance(value, str) and value in stop else None


def _choice_tokens(choice) -> int | None:
    extra = getattr(choice, "model_extra", None) or {}
    if isinstance(extra.get("completion_tokens"), int):  # stepforge serve reports it per choice
        return extra["completion_tokens"]
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is not None and getattr(logprobs, "tokens", None):
        return len(logprobs.tokens)
    return None

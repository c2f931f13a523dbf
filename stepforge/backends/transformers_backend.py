"""Local Hugging Face transformers backend.

Prompts are left-padded and batched together; with ``n > 1`` each prompt's KV cache is
computed once and expanded to ``n`` rows (``DynamicCache.batch_repeat_interleave``) before
sampling, instead of re-encoding the prefix ``n`` times. Sampling is HF ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel

from stepforge.backends.base import (
    Completion,
    GenerationCost,
    GenerationResult,
    cut_at_stop,
    validate_request,
)


class TransformersPolicy:
    """A causal LM from transformers as a :class:`~stepforge.backends.base.Policy`.

    ``max_batch_rows`` bounds prompts × n per forward batch (memory); ``reuse_prefix=False``
    re-encodes each prompt once per sample (the baseline of ``bench/prefix_reuse.py``).
    """

    def __init__(self, model: PreTrainedModel, tokenizer, *, max_batch_rows: int = 1024,
                 reuse_prefix: bool = True, name: str | None = None) -> None:
        if tokenizer.pad_token_id is None:  # many causal LMs ship without one; EOS is the usual stand-in
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.reuse_prefix = reuse_prefix
        self.name = name or f"transformers:{getattr(model.config, '_name_or_path', '') or type(model).__name__}"

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> TransformersPolicy:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        return cls(model, tokenizer, name=f"transformers:{path}", **kwargs)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], *, n: int = 1, stop: Sequence[str] | None = None,
                 max_new_tokens: int = 256, temperature: float = 1.0, seed: int | None = None
                 ) -> GenerationResult:
        validate_request(prompts, n, max_new_tokens, temperature)
        per_chunk = max(1, self.max_batch_rows // n)
        completions: list[list[Completion]] = []
        cost = GenerationCost()
        with torch.random.fork_rng(devices=[]):  # seeding must not disturb the caller's RNG
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(prompts), per_chunk):
                rows, c = self._generate_chunk(list(prompts[start:start + per_chunk]), n, list(stop or []),
                                               max_new_tokens, temperature)
                completions.extend(rows)
                cost = cost + c
        return GenerationResult(completions, cost)

    def _generate_chunk(self, prompts: list[str], n: int, stop: list[str], max_new_tokens: int,
                        temperature: float) -> tuple[list[list[Completion]], GenerationCost]:
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True)
        ids, mask = enc.input_ids, enc.attention_mask
        width = ids.shape[1]
        prompt_tokens = int(mask.sum())
        kwargs: dict = {}
        forward_passes = 0
        reuse = self.reuse_prefix and n > 1 and width > 1
        if reuse:
            # Prefill every prompt but its last token once; generate() then feeds only that last
            # token, against the cache expanded to n rows per prompt.
            cache = DynamicCache(config=self.model.config)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                       past_key_values=cache, use_cache=True)
            cache.batch_repeat_interleave(n)
            kwargs["past_key_values"] = cache
            forward_passes += 1
        else:
            prompt_tokens *= n  # the naive path really encodes each prompt n times
        ids = ids.repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} \
            if temperature > 0 else {"do_sample": False}
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=tok)
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                  **sampling, **kwargs)
        new = out[:, width:]
        forward_passes += new.shape[1]
        rows: list[list[Completion]] = []
        generated = 0
        for i in range(len(prompts)):
            row = []
            for j in range(n):
                comp = self._completion(new[i * n + j].tolist(), stop, max_new_tokens)
                generated += comp.tokens
                row.append(comp)
            rows.append(row)
        return rows, GenerationCost(prompt_tokens, generated, forward_passes)

    def _completion(self, token_ids: list[int], stop: list[str], max_new_tokens: int) -> Completion:
        tok = self.tokenizer
        eos, pad = tok.eos_token_id, tok.pad_token_id
        if eos in token_ids:
            token_ids = token_ids[:token_ids.index(eos) + 1]
            ended_at_eos = True
        else:
            while token_ids and token_ids[-1] == pad:  # rows that stopped early are padded
                token_ids = token_ids[:-1]
            ended_at_eos = False
        text, stop_reason = cut_at_stop(tok.decode(token_ids, skip_special_tokens=True), stop)
        done = ended_at_eos or stop_reason is not None or len(token_ids) < max_new_tokens
        return Completion(text=text, tokens=len(token_ids), finish_reason="stop" if done else "length",
                          stop_reason=stop_reason)

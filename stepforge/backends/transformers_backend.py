"""Local Hugging Face transformers backend.

Prompts are left-padded and batched together; with ``n > 1`` each prompt's KV cache is
computed once and expanded to ``n`` rows (``DynamicCache.batch_repeat_interleave``) before
sampling, instead of re-encoding the prefix ``n`` times. Decoding is HF ``generate``; the
sampling draw itself is :class:`SeededSampler` (Gumbel-max with one generator per sample), so
sample j of a prompt depends on that prompt's seed and j only, not on what else is in the
batch (see :mod:`stepforge.seeds`). Inputs follow the model's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from stepforge.backends.base import (
    Completion,
    GenerationCost,
    GenerationResult,
    cut_at_stop,
    validate_request,
)
from stepforge.backends.chat import has_chat_template, render_prompts
from stepforge.backends.device import load_causal_lm, model_device
from stepforge.seeds import prompt_seeds, sample_seed
from stepforge.tasks import Prompt


class SeededSampler(LogitsProcessor):
    """Sampling from softmax(logits / T) with one torch.Generator per row (Gumbel-max trick:
    argmax(log p + G), G ~ Gumbel(0, 1), is a draw from p). Returns logits that are −inf
    everywhere but at the drawn token, so greedy decoding takes it. Row r's t-th draw uses
    only its own generator, which makes samples independent of batch size and composition."""

    NOISE_BYTES = 1 << 28  # uniforms drawn ahead per call: several decode steps at once, ≤ 256 MB

    def __init__(self, seeds: Sequence[int], temperature: float, device: torch.device, max_steps: int = 32) -> None:
        self.temperature = temperature
        self.max_steps = max(1, min(32, max_steps))  # a block never holds more steps than can be generated
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.noise: torch.Tensor | None = None  # (rows, block, vocab): the next decode steps' draws
        self.step = 0

    def _uniforms(self, vocab: int, device: torch.device) -> torch.Tensor:
        """This step's uniforms, one row per generator. Rows draw ``block`` steps at a time (one
        call per row per block, not per step); row r still reads only its own stream."""
        block = max(1, min(self.max_steps, self.NOISE_BYTES // (4 * vocab * len(self.generators))))
        if self.noise is None or self.step % self.noise.shape[1] == 0:
            self.noise = torch.stack([torch.rand(block, vocab, generator=g, device=device) for g in self.generators])
        u = self.noise[:, self.step % self.noise.shape[1]]
        self.step += 1
        return u

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        u = self._uniforms(scores.shape[-1], scores.device)
        neg_log_u = torch.log(u.clamp(min=1e-20)).neg().clamp(min=1e-20)  # −log u > 0
        gumbel = neg_log_u.log().neg()
        choice = (logp + gumbel).argmax(-1, keepdim=True)
        return torch.full_like(scores, float("-inf")).scatter_(1, choice, 0.0)


class TransformersPolicy:
    """A causal LM from transformers as a :class:`~stepforge.backends.base.Policy`.

    ``max_batch_rows`` bounds prompts × n per forward batch (memory); ``reuse_prefix=False``
    re-encodes each prompt once per sample (the baseline of ``bench/prefix_reuse.py``);
    ``max_context`` overrides the context length the model's config states.
    """

    def __init__(self, model: PreTrainedModel, tokenizer, *, max_batch_rows: int = 1024,
                 reuse_prefix: bool = True, name: str | None = None, max_context: int | None = None) -> None:
        if tokenizer.pad_token_id is None:  # many causal LMs ship without one; EOS is the usual stand-in
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.reuse_prefix = reuse_prefix
        self._max_context = max_context
        self.name = name or f"transformers:{getattr(model.config, '_name_or_path', '') or type(model).__name__}"

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = "auto",
                        dtype: str | torch.dtype | None = "auto", **kwargs) -> TransformersPolicy:
        model, tokenizer = load_causal_lm(path, device, dtype)
        return cls(model, tokenizer, name=f"transformers:{path}", **kwargs)

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.tokenizer)

    @property
    def max_context(self) -> int | None:
        """Tokens a prompt plus its continuation may take: the ``max_context`` given, else the
        model's ``max_position_embeddings`` (if it says); inputs are checked against it."""
        return self._max_context or getattr(self.model.config, "max_position_embeddings", None)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts)).input_ids]

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, stop: Sequence[str] | None = None,
                 max_new_tokens: int = 256, temperature: float = 1.0, seed: int | Sequence[int] | None = None
                 ) -> GenerationResult:
        validate_request(prompts, n, max_new_tokens, temperature)
        seeds = prompt_seeds(seed, len(prompts))
        if seeds is None:  # unseeded: fresh seeds from torch's global RNG
            seeds = torch.randint(0, 2**62, (len(prompts),)).tolist()
        per_chunk = max(1, self.max_batch_rows // n)
        completions: list[list[Completion]] = []
        cost = GenerationCost()
        for start in range(0, len(prompts), per_chunk):
            rows, c = self._generate_chunk(list(prompts[start:start + per_chunk]), n, list(stop or []),
                                           max_new_tokens, temperature, seeds[start:start + per_chunk])
            completions.extend(rows)
            cost = cost + c
        return GenerationResult(completions, cost)

    def _generate_chunk(self, prompts: list, n: int, stop: list[str], max_new_tokens: int,
                        temperature: float, seeds: list[int]) -> tuple[list[list[Completion]], GenerationCost]:
        tok = self.tokenizer
        device = model_device(self.model)
        texts, rendered = render_prompts(tok, prompts)
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not rendered)
        ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
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
        if temperature > 0:
            row_seeds = [sample_seed(s, j) for s in seeds for j in range(n)]
            kwargs["logits_processor"] = LogitsProcessorList([SeededSampler(row_seeds, temperature, device,
                                                                            max_new_tokens)])
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=tok)
        # A config of our own: the model's generation_config (its temperature, top_p, repetition
        # penalty...) must not change what "temperature T" means here.
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **kwargs)
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
                          stop_reason=stop_reason, token_ids=token_ids)

"""Small tensor helpers shared by everything that runs a causal LM over token id lists."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, or EOS for the many causal LMs that ship without one."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def pad_right(sequences: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (batch, width) ids and the matching attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    return ids, mask


def next_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token i+1 | tokens ≤ i) for every position: (batch, length − 1), in float32."""
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)

"""A process reward model: any transformers backbone + a scalar head read after each step.

The text is ``question + question_separator + step_1 + step_separator + step_2 + ...``; the
score of step t is read at the token holding the last character of the separator after
step t. Boundaries are found through the tokenizer's character offsets, never by counting
tokens, so any tokenizer works. All steps of a trajectory are scored in ONE forward pass.

Saved as an ordinary HF model dir (backbone + tokenizer via ``save_pretrained``) plus
``prm_head.safetensors`` and ``stepforge_prm.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from stepforge.alignment import layout_steps, token_steps, tokens_at_chars
from stepforge.backends.causal_lm import next_token_logprobs
from stepforge.backends.device import check_model_dir, resolve_device, resolve_dtype
from stepforge.guards import MAX_CHARS_PER_TOKEN
from stepforge.schema import RecordError, Trajectory

PRM_CONFIG = "stepforge_prm.json"
PRM_HEAD = "prm_head.safetensors"


@dataclass
class PRMConfig:
    step_separator: str = "\n"
    question_separator: str = "\n"
    max_length: int = 1024  # longer inputs are an error naming the item (no silent truncation)
    # "separator": the head reads the hidden state at each step's last token (DESIGN.md §4).
    # "prefix_min": the head scores every solution token and step t gets the minimum over all
    # tokens up to its end, so a prefix is only as good as its worst token ("on a correct path").
    readout: str = "separator"
    # prefix_min only: add a·(log p(token) − b) from the backbone's own LM head to each token's
    # logit (a, b learned; starts as "a token is bad when the model found it unlikely").
    token_logprob_feature: bool = False

    def __post_init__(self) -> None:
        if self.token_logprob_feature and self.readout != "prefix_min":
            raise ValueError("token_logprob_feature needs readout='prefix_min'")
        if self.readout not in ("separator", "prefix_min"):
            raise ValueError(f"unknown PRM readout {self.readout!r}; choose separator or prefix_min")


@dataclass
class EncodedTrajectory:
    input_ids: list[int]
    step_positions: list[int]  # token index whose hidden state scores each step
    content_mask: list[int] | None = None  # 1 for tokens inside a step's own text (not question/separators)


def encode_steps(tokenizer, question: str, steps: Sequence[str], cfg: PRMConfig, item: str = "") -> EncodedTrajectory:
    """Token ids of the formatted text and, per step, the token that ends it (by char offsets)."""
    if not steps:
        raise RecordError(f"{item or 'trajectory'}: no steps to score")
    chars = len(question) + sum(len(s) + len(cfg.step_separator) for s in steps)
    if chars > cfg.max_length * MAX_CHARS_PER_TOKEN:  # refuse before tokenizing megabytes
        raise RecordError(f"{item or 'trajectory'}: {chars:,} characters cannot fit the PRM's max_length "
                          f"{cfg.max_length} tokens; shorten it or raise max_length")
    layout = layout_steps(question, steps, cfg.question_separator, cfg.step_separator)
    enc = tokenizer(layout.text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if len(ids) > cfg.max_length:
        raise RecordError(f"{item or 'trajectory'}: {len(ids)} tokens exceed the PRM's max_length "
                          f"{cfg.max_length}; shorten it or raise max_length")
    positions = tokens_at_chars(offsets, layout.ends)  # the token holding each separator's last char
    content = [int(k >= 0) for k in token_steps(offsets, layout.spans)]
    return EncodedTrajectory(ids, positions, content)


class ProcessRewardModel(nn.Module):
    """``forward`` returns one logit per step position; P(step good) = sigmoid(logit)."""

    def __init__(self, backbone: PreTrainedModel, tokenizer, config: PRMConfig | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config or PRMConfig()
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # a, b of the log-prob feature (unused unless config.token_logprob_feature)
        self.logprob_scale = nn.Parameter(torch.tensor(1.0))
        self.logprob_shift = nn.Parameter(torch.tensor(-1.0))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_backbone(cls, path: str | Path, config: PRMConfig | None = None, device: str | torch.device = "auto",
                      dtype: str | torch.dtype = "auto") -> ProcessRewardModel:
        """A fresh head on a pretrained backbone (e.g. the world policy's checkpoint dir)."""
        config = config or PRMConfig()
        dev = resolve_device(device)
        model = cls(_load_backbone(check_model_dir(path, "backbone"), config, resolve_dtype(dtype, dev)),
                    AutoTokenizer.from_pretrained(path), config)
        return model.to(dev)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, step_positions: torch.Tensor,
                content_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.token_logprob_feature:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            hidden = out.hidden_states[-1]
            logp = next_token_logprobs(out.logits, input_ids)
            logp = torch.cat([torch.zeros_like(logp[:, :1]), logp], 1)  # token i given < i
        else:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.to(self.head.weight.dtype)  # a bf16/fp16 backbone feeds the fp32 head
        if self.config.readout == "prefix_min":
            token_logits = self.head(hidden).squeeze(-1)  # (batch, length)
            if self.config.token_logprob_feature:
                token_logits = token_logits + self.logprob_scale * (logp - self.logprob_shift)
            if content_mask is not None:  # question and separator tokens never lower the minimum
                token_logits = token_logits.masked_fill(content_mask == 0, torch.finfo(token_logits.dtype).max)
            running = torch.cummin(token_logits, dim=1).values
            return torch.gather(running, 1, step_positions.clamp(min=0))
        idx = step_positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return self.head(torch.gather(hidden, 1, idx)).squeeze(-1)  # (batch, steps)

    def encode(self, t: Trajectory) -> EncodedTrajectory:
        return encode_steps(self.tokenizer, t.question, t.steps, self.config, item=f"trajectory {t.id!r}")

    @torch.inference_mode()
    def score(self, trajectories: Sequence[Trajectory], batch_size: int = 64) -> list[list[float]]:
        """P(good) for every step of every trajectory: one forward pass per trajectory, batched
        (sorted by length so padding stays small), in input order."""
        self.eval()
        encoded = [self.encode(t) for t in trajectories]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
        out: list[list[float]] = [[] for _ in encoded]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = {k: v.to(self.device) for k, v in
                     collate([encoded[i] for i in idx], self.tokenizer.pad_token_id).items()}
            probs = torch.sigmoid(self(batch["input_ids"], batch["attention_mask"], batch["step_positions"],
                                       batch["content_mask"])).float().cpu()
            for row, i in enumerate(idx):
                out[i] = probs[row, :len(encoded[i].step_positions)].tolist()
        return out

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        head = {f"head.{k}": v.contiguous() for k, v in self.head.state_dict().items()}
        head.update({"logprob_scale": self.logprob_scale.detach(), "logprob_shift": self.logprob_shift.detach()})
        save_file(head, str(path / PRM_HEAD))
        (path / PRM_CONFIG).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto",
                        dtype: str | torch.dtype = "auto") -> ProcessRewardModel:
        path = Path(path)
        if path.is_dir() and not (path / PRM_CONFIG).exists():
            raise FileNotFoundError(f"{path}: not a stepforge PRM (no {PRM_CONFIG}); train one with "
                                    "`stepforge train-prm`, or pass --format for a public PRM")
        check_model_dir(path, "PRM")
        config = PRMConfig(**json.loads((path / PRM_CONFIG).read_text()))
        dev = resolve_device(device)
        model = cls(_load_backbone(path, config, resolve_dtype(dtype, dev)), AutoTokenizer.from_pretrained(path),
                    config)
        weights = load_file(str(path / PRM_HEAD))
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in weights.items() if k.startswith("head.")})
        with torch.no_grad():
            model.logprob_scale.copy_(weights["logprob_scale"])
            model.logprob_shift.copy_(weights["logprob_shift"])
        return model.to(dev).eval()


def _load_backbone(path: str | Path, config: PRMConfig, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    # the log-prob feature needs the backbone's LM head; otherwise the bare model is enough
    return (AutoModelForCausalLM if config.token_logprob_feature else AutoModel).from_pretrained(path, dtype=dtype)


def collate(items: Sequence[EncodedTrajectory], pad_id: int, labels: Sequence[Sequence[float]] | None = None
            ) -> dict[str, torch.Tensor]:
    """Right-pad token ids and step positions (-1) into tensors; labels padded with 0 + a mask."""
    width = max(len(e.input_ids) for e in items)
    steps = max(len(e.step_positions) for e in items)
    batch = {
        "input_ids": torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in items]),
        "attention_mask": torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in items]),
        "step_positions": torch.tensor([e.step_positions + [-1] * (steps - len(e.step_positions)) for e in items]),
        "content_mask": torch.tensor([(e.content_mask or [1] * len(e.input_ids)) + [0] * (width - len(e.input_ids))
                                      for e in items]),
    }
    if labels is not None:
        batch["step_labels"] = torch.tensor([list(x) + [0.0] * (steps - len(x)) for x in labels], dtype=torch.float)
        batch["step_mask"] = torch.tensor([[1.0] * len(x) + [0.0] * (steps - len(x)) for x in labels])
    return batch

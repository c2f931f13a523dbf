"""Per-step log-probabilities under a causal LM, and the implicit PRM built from them.

Implicit PRM (PRIME, Cui et al. 2025; OPRL): with a model π_φ and a reference π_ref,

    r_t = β · Σ_{tokens i of step t} log( π_φ(y_i | y_<i) / π_ref(y_i | y_<i) )

Trained on outcomes with cross-entropy, σ(β · Σ_all log-ratio) ≈ P(correct), or by DPO on
(correct, wrong) trajectory pairs: −log σ(β · (Σ log-ratio_w − Σ log-ratio_l)). Tokens are
assigned to steps by character offsets (a token belongs to the step its first character is
in; separator tokens to none).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from stepforge.alignment import layout_steps, token_steps
from stepforge.backends.causal_lm import next_token_logprobs, pad_id, pad_right
from stepforge.backends.device import model_device
from stepforge.prm.model import PRMConfig
from stepforge.schema import RecordError, Trajectory


@dataclass
class StepTokens:
    input_ids: list[int]
    step_of_token: list[int]  # -1 for question / special tokens


def encode_for_logprobs(tokenizer, t: Trajectory, cfg: PRMConfig) -> StepTokens:
    if not t.steps:
        raise RecordError(f"trajectory {t.id!r}: no steps")
    layout = layout_steps(t.question, t.steps, cfg.question_separator, cfg.step_separator)
    enc = tokenizer(layout.text, return_offsets_mapping=True, add_special_tokens=True)
    if len(enc["input_ids"]) > cfg.max_length:
        raise RecordError(f"trajectory {t.id!r}: {len(enc['input_ids'])} tokens exceed max_length {cfg.max_length}")
    # separators belong to no step: the one after the answer is text the policy never writes
    return StepTokens(enc["input_ids"], token_steps(enc["offset_mapping"], layout.spans))


def step_logprob_sums(model: PreTrainedModel, tokenizer, trajectories: Sequence[Trajectory], cfg: PRMConfig,
                      batch_size: int = 64, grad: bool = False) -> list[torch.Tensor]:
    """Σ log π(token) over each step's own tokens (separators excluded): one forward pass per
    trajectory, batched.
    Returns one tensor of shape (steps,) per trajectory (differentiable with ``grad``)."""
    encoded = [encode_for_logprobs(tokenizer, t, cfg) for t in trajectories]
    pad = pad_id(tokenizer)
    device = model_device(model)
    out: list[torch.Tensor] = []
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            ids, mask = pad_right([e.input_ids for e in chunk], pad)
            ids, mask = ids.to(device), mask.to(device)
            lp = next_token_logprobs(model(input_ids=ids, attention_mask=mask).logits, ids)
            for row, e in enumerate(chunk):
                steps = torch.tensor(e.step_of_token[1:], device=device)  # token i+1 is predicted at position i
                n_steps = len(trajectories[start + row].steps)
                valid = steps[: len(e.input_ids) - 1] >= 0
                sums = torch.zeros(n_steps, dtype=lp.dtype, device=device).index_add(
                    0, steps[: len(e.input_ids) - 1][valid], lp[row, : len(e.input_ids) - 1][valid])
                out.append(sums)
    return out


def prefix_values(step_rewards: torch.Tensor) -> list[float]:
    """σ(Σ_{k≤t} r_k) per step t: the implicit value of each prefix (PRIME's Q-value view), in [0, 1]."""
    return torch.sigmoid(step_rewards.detach().float().cumsum(0)).cpu().tolist()


class ImplicitPRM:
    """Step rewards from the log-ratio of a trained model and a frozen reference."""

    def __init__(self, model: PreTrainedModel, tokenizer, beta: float = 0.05, reference: PreTrainedModel | None = None,
                 config: PRMConfig | None = None) -> None:
        self.model = model
        self.reference = reference if reference is not None else copy.deepcopy(model).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.tokenizer, self.beta, self.config = tokenizer, beta, config or PRMConfig()

    def step_rewards(self, trajectories: Sequence[Trajectory], grad: bool = False) -> list[torch.Tensor]:
        lp = step_logprob_sums(self.model, self.tokenizer, trajectories, self.config, grad=grad)
        ref = step_logprob_sums(self.reference, self.tokenizer, trajectories, self.config)
        return [self.beta * (a - b) for a, b in zip(lp, ref, strict=True)]

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        """Same interface as ProcessRewardModel.score: :func:`prefix_values` of its step rewards."""
        return [prefix_values(r) for r in self.step_rewards(trajectories)]

    def train_on_outcomes(self, trajectories: Sequence[Trajectory], steps: int = 200, batch_size: int = 16,
                          lr: float = 1e-4, seed: int = 0, loss: str = "ce") -> list[float]:
        """``ce``: BCE(σ(Σ_t r_t), correct); ``dpo``: pairs of a correct and a wrong trajectory of
        one problem, −log σ(Σ r_w − Σ r_l). Returns the loss per step."""
        rng = random.Random(seed)
        usable = [t for t in trajectories if t.steps and t.correct is not None]
        if loss == "dpo":
            by_problem: dict[str, tuple[list[Trajectory], list[Trajectory]]] = {}
            for t in usable:
                by_problem.setdefault(t.problem_id, ([], []))[0 if t.correct else 1].append(t)
            pairs = [(w, lo) for good, bad in by_problem.values() for w in good for lo in bad]
            if not pairs:
                raise ValueError("DPO needs problems with both a correct and a wrong trajectory")
        elif loss != "ce":
            raise ValueError(f"unknown implicit PRM loss {loss!r}; choose ce or dpo")
        opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=lr)
        self.model.train()
        history = []
        for _ in range(steps):
            if loss == "ce":
                batch = [usable[rng.randrange(len(usable))] for _ in range(batch_size)]
                totals = torch.stack([r.sum() for r in self.step_rewards(batch, grad=True)])
                target = torch.tensor([float(t.correct) for t in batch], device=totals.device)
                value = F.binary_cross_entropy_with_logits(totals, target)
            else:
                chosen = [pairs[rng.randrange(len(pairs))] for _ in range(batch_size)]
                rw = torch.stack([r.sum() for r in self.step_rewards([c[0] for c in chosen], grad=True)])
                rl = torch.stack([r.sum() for r in self.step_rewards([c[1] for c in chosen], grad=True)])
                value = -F.logsigmoid(rw - rl).mean()
            opt.zero_grad()
            value.backward()
            opt.step()
            history.append(value.item())
        self.model.eval()
        return history

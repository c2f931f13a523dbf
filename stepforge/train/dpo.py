"""Preference training on step pairs: DPO through TRL's DPOTrainer, and ORPO (no reference
model; TRL ≥ 1.14 dropped its ORPOTrainer, so the loss is ours).

Step pairs end at a step boundary, not at the end of a solution. TRL appends EOS to every
completion that does not already end with the tokenizer's EOS string, which would teach the
policy to stop after one step; TRL is therefore given a tokenizer copy whose EOS is the step
separator. A final (answer) step arrives without a separator and gets the real EOS here;
TRL then appends the separator after it, which is harmless (nothing after EOS is ever
generated). TRL adds the tokenizer's own special tokens, BOS included, when it tokenizes.
"""

from __future__ import annotations

import copy
import random
import tempfile
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from stepforge.alignment import token_steps
from stepforge.backends.causal_lm import next_token_logprobs, pad_id, pad_right
from stepforge.backends.chat import render_prompts
from stepforge.backends.device import model_device
from stepforge.schema import Problem, StepPair
from stepforge.seeds import derive_seed
from stepforge.tasks import THINK_CLOSE, THINK_OPEN, Task


def _rows(pairs: Sequence[StepPair], eos: str, step_separator: str) -> list[dict[str, str]]:
    def end(text: str) -> str:  # a final step ends the solution
        return text if text.endswith(step_separator) else text + eos

    return [{"prompt": p.prompt, "chosen": end(p.chosen), "rejected": end(p.rejected)} for p in pairs]


def train_dpo(model, tokenizer, pairs: Sequence[StepPair], *, beta: float = 0.5, lr: float = 3e-6, epochs: float = 1.0,
              max_steps: int = -1, batch_size: int = 64, seed: int = 0, step_separator: str = "\n",
              sft_weight: float = 0.0, lr_scheduler: str = "constant") -> list[dict]:
    """DPO (Rafailov et al. 2023) on step pairs with TRL's DPOTrainer; the reference is a frozen
    copy of ``model`` at the start. ``sft_weight`` > 0 adds TRL's NLL term on the chosen step
    (RPO-style). Trains ``model`` in place and returns the log history.

    The defaults are what improved the world policy (bench/step_dpo.py): a small constant
    learning rate, β = 0.5, large batches. The pairs sit only where the policy errs, and a small
    policy turns large steps on them into a global bias: at lr 1e-4 its greedy accuracy fell
    from 84% to 28–53%, while at 3e-6 it rose (it peaks after ~1.5e-4 of summed Adam steps)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("no step pairs to train on")
    rows = _rows(pairs, tokenizer.eos_token, step_separator)
    dpo_tokenizer = copy.deepcopy(tokenizer)
    dpo_tokenizer.eos_token = step_separator  # stops TRL from appending EOS after a step
    if dpo_tokenizer.pad_token is None:
        dpo_tokenizer.pad_token = tokenizer.eos_token
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, beta=beta, learning_rate=lr, num_train_epochs=epochs, max_steps=max_steps,
                         per_device_train_batch_size=batch_size, logging_steps=10, save_strategy="no", report_to=[],
                         seed=seed, use_cpu=model_device(model).type == "cpu", max_length=1024,
                         lr_scheduler_type=lr_scheduler,
                         loss_type=["sigmoid", "sft"] if sft_weight > 0 else ["sigmoid"],
                         loss_weights=[1.0, sft_weight] if sft_weight > 0 else None)
        # an explicit frozen copy: TRL would otherwise reload model.name_or_path (from a hub for
        # models built from a config)
        reference = copy.deepcopy(model).eval()
        trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=dpo_tokenizer)
        trainer.train()
    model.eval()
    return trainer.state.log_history


def orpo_loss(mean_logp_chosen: torch.Tensor, mean_logp_rejected: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """ORPO (Hong et al. 2024; used by PRefLexOR): L = −log p(y_w) − λ·log σ(log odds(y_w) − log odds(y_l)),
    with log p the mean token log-likelihood and odds(y) = p / (1 − p)."""
    def log_odds(logp: torch.Tensor) -> torch.Tensor:
        return logp - torch.log1p(-torch.exp(logp).clamp(max=1 - 1e-6))

    ratio = F.logsigmoid(log_odds(mean_logp_chosen) - log_odds(mean_logp_rejected))
    return (-mean_logp_chosen - lam * ratio).mean()


def _completion_token_logps(model, tokenizer, prompts: list[str], completions: list[str],
                            add_special_tokens: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor, list[list[tuple[int, int]]]]:
    """Per-token log-probs of each completion after its prompt: (log-probs (B, T−1), the
    completion's positions in them, and each completion token's character span within the
    completion, in order). ``add_special_tokens=False`` for chat renderings (own BOS)."""
    ids, starts, spans = [], [], []
    for p, c in zip(prompts, completions, strict=True):
        # the completion starts at the first token holding a character of it (by offsets: a BPE
        # merge across the boundary makes "tokens of the prompt" no prefix of the full encoding)
        enc = tokenizer(p + c, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
        owner = token_steps(enc["offset_mapping"], [(len(p), len(p) + len(c))])
        ids.append(enc["input_ids"])
        first = next((i for i, k in enumerate(owner) if k == 0), len(owner))
        starts.append(first)
        spans.append([(max(a - len(p), 0), b - len(p)) for a, b in enc["offset_mapping"][first:]])
    device = model_device(model)
    x, mask = (t.to(device) for t in pad_right(ids, pad_id(tokenizer)))
    tok = next_token_logprobs(model(input_ids=x, attention_mask=mask).logits, x)
    pos = torch.arange(x.shape[1] - 1, device=device)[None, :]
    comp = (pos >= torch.tensor(starts, device=device)[:, None] - 1) & (mask[:, 1:] == 1)
    return tok, comp, spans


def _completion_mean_logp(model, tokenizer, prompts: list[str], completions: list[str],
                          add_special_tokens: bool = True) -> torch.Tensor:
    """Mean token log-prob of each completion after its prompt."""
    tok, comp, _ = _completion_token_logps(model, tokenizer, prompts, completions, add_special_tokens)
    return (tok * comp).sum(-1) / comp.sum(-1).clamp(min=1)


MaskMode = Literal["all", "thinking_dropout", "answer_only"]


def thinking_loss_mask(text: str, spans: Sequence[tuple[int, int]], mode: MaskMode, rng: random.Random,
                       rate: float = 0.2) -> list[bool]:
    """Which tokens of a completion count in the loss (PRefLexOR's Phase II): ``all``;
    ``thinking_dropout``: all but a random ``rate`` of the tokens inside thinking blocks (tags
    included); ``answer_only``: only the tokens after the last ``THINK_CLOSE`` (everything when
    there is none). ``spans``: each token's character span in ``text``."""
    if mode == "all":
        return [True] * len(spans)
    if mode == "answer_only":
        end = text.rfind(THINK_CLOSE)
        cut = end + len(THINK_CLOSE) if end >= 0 else 0
        return [a >= cut for a, _ in spans]
    if mode != "thinking_dropout":
        raise ValueError(f"unknown mask mode {mode!r}; choose all, thinking_dropout or answer_only")
    blocks, at = [], 0
    while (start := text.find(THINK_OPEN, at)) >= 0:
        close = text.find(THINK_CLOSE, start)
        end = len(text) if close < 0 else close + len(THINK_CLOSE)
        blocks.append((start, end))
        at = end
    return [not (any(s <= a < e for s, e in blocks) and rng.random() < rate) for a, _ in spans]


def masked_dpo_loss(logratio_chosen: torch.Tensor, logratio_rejected: torch.Tensor, beta: float = 0.1
                    ) -> torch.Tensor:
    """DPO (Rafailov et al. 2023) over the counted tokens only: inputs are Σ_{counted t}
    (log π(y_t) − log π_ref(y_t)) per sequence; L = −log σ(β·(chosen − rejected)), batch mean."""
    return -F.logsigmoid(beta * (logratio_chosen - logratio_rejected)).mean()


def train_dpo_masked(model, tokenizer, rows: Sequence[tuple[str, str, str]], mode: MaskMode = "answer_only", *,
                     beta: float = 0.1, rate: float = 0.2, lr: float = 1e-5, steps: int = 100, batch_size: int = 16,
                     seed: int = 0) -> list[float]:
    """PRefLexOR's Phase II: DPO on (prompt, chosen, rejected) rows against a frozen copy of the
    starting model, counting the tokens :func:`thinking_loss_mask` keeps (a fresh random mask
    each time a row is drawn). Returns the loss per step."""
    if not rows:
        raise ValueError("no preference rows to train on")
    reference = copy.deepcopy(model).eval()
    for q in reference.parameters():
        q.requires_grad_(False)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    history = []
    model.train()
    for _ in range(steps):
        batch = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
        prompts = [r[0] for r in batch]
        sums = []
        for texts in ([r[1] for r in batch], [r[2] for r in batch]):
            tok, comp, spans = _completion_token_logps(model, tokenizer, prompts, texts)
            with torch.no_grad():
                ref, _, _ = _completion_token_logps(reference, tokenizer, prompts, texts)
            counted = torch.zeros_like(comp)
            for i, (text, sp) in enumerate(zip(texts, spans, strict=True)):
                keep = thinking_loss_mask(text, sp, mode, rng, rate)
                where = torch.nonzero(comp[i]).squeeze(-1)[:len(keep)]
                counted[i, where] = torch.tensor(keep[:len(where)], device=comp.device)
            sums.append(((tok - ref) * counted).sum(-1))
        loss = masked_dpo_loss(sums[0], sums[1], beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    model.eval()
    return history


def train_orpo(model, tokenizer, pairs: Sequence[StepPair], *, lam: float = 0.1, lr: float = 5e-4, steps: int = 100,
               batch_size: int = 16, seed: int = 0, step_separator: str = "\n") -> list[float]:
    """ORPO on step pairs with a plain loop (no reference model). Returns the loss per step."""
    if not pairs:
        raise ValueError("no step pairs to train on")
    rows = _rows(pairs, tokenizer.eos_token, step_separator)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    history = []
    for _ in range(steps):
        batch = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
        prompts = [r["prompt"] for r in batch]
        lw = _completion_mean_logp(model, tokenizer, prompts, [r["chosen"] for r in batch])
        ll = _completion_mean_logp(model, tokenizer, prompts, [r["rejected"] for r in batch])
        loss = orpo_loss(lw, ll, lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    model.eval()
    return history


def train_orpo_active(model, tokenizer, task: Task, problems: Sequence[Problem], chosen: Callable[[Problem], str], *,
                      regenerate_every: int = 25, samples: int = 4, lam: float = 0.1, lr: float = 1e-4,
                      steps: int = 200, batch_size: int = 16, temperature: float = 1.0, max_new_tokens: int = 256,
                      seed: int = 0) -> list[dict]:
    """PRefLexOR's Phase I: ORPO (:func:`orpo_loss`) of a chosen answer (``chosen(problem)``,
    e.g. a verified thinking + answer) against the *current* model's own wrong answers, sampled
    (``samples`` per problem at ``temperature``) and regenerated every ``regenerate_every``
    steps (active learning); ``regenerate_every=0`` samples them once before training (static).
    ``lam=0`` is SFT on the chosen answers alone (the control: same steps, same rate).
    Returns per step: loss and the number of problems that have a rejected answer."""
    from stepforge.backends.transformers_backend import TransformersPolicy
    from stepforge.sample import sample_trajectories

    if not problems:
        raise ValueError("no problems to train on")
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rendered, is_chat = render_prompts(tokenizer, [task.prompt(p) for p in problems])  # chat template in chat mode
    prompts = {p.id: text for p, text in zip(problems, rendered, strict=True)}
    wanted = {p.id: chosen(p) + tokenizer.eos_token for p in problems}
    rejected: dict[str, list[str]] = {}
    history = []
    for step in range(steps):
        if lam > 0 and (step == 0 or (regenerate_every and step % regenerate_every == 0)):
            model.eval()
            policy = TransformersPolicy(model, tokenizer)
            rejected = {}
            for batch in sample_trajectories(policy, problems, task, n=samples, temperature=temperature,
                                             max_new_tokens=max_new_tokens, seed=derive_seed(seed, "rejected", step)):
                for t, c in zip(batch.trajectories, batch.completions, strict=True):
                    if not t.correct:
                        rejected.setdefault(t.problem_id, []).append(c.text + tokenizer.eos_token)
            if not rejected:
                raise ValueError("the model answered every problem right: no rejected answers to train against")
        pool = sorted(rejected) if lam > 0 else [p.id for p in problems]
        model.train()
        ids = [pool[rng.randrange(len(pool))] for _ in range(batch_size)]
        lw = _completion_mean_logp(model, tokenizer, [prompts[i] for i in ids], [wanted[i] for i in ids], not is_chat)
        if lam > 0:
            ll = _completion_mean_logp(model, tokenizer, [prompts[i] for i in ids],
                                       [rejected[i][rng.randrange(len(rejected[i]))] for i in ids], not is_chat)
            loss = orpo_loss(lw, ll, lam)
        else:
            loss = -lw.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"step": step + 1, "loss": loss.item(), "rejected_problems": len(rejected)})
    model.eval()
    return history

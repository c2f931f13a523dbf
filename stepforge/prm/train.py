"""PRM training with the HF Trainer (accelerate underneath: multi-GPU / DeepSpeed configs work
unchanged) and a loss of our own. TRL's PRMTrainer is gone from trl ≥ 1.14 and cast labels
with int(), truncating soft MC labels to 0; here soft labels stay soft.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from stepforge.prm.model import ProcessRewardModel, collate
from stepforge.schema import RecordError, StepPair, Trajectory


def step_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over labeled steps of BCE(σ(logit_t), y_t), y_t ∈ [0, 1] soft or hard (Math-Shepherd)."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """−log σ(R_w − R_l), averaged over pairs (Bradley–Terry on step scores)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


@dataclass
class PRMTrainConfig:
    """Training settings; the defaults are the world PRM's recipe (README: F1 0.907), which the
    CLI reads from here. ``readout`` / ``token_logprob_feature`` build the model's
    :class:`PRMConfig` (the separator read-out reached only F1 ≈ 0.4 on the world policy)."""

    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    last_step_only: bool = False
    freeze_backbone: bool = True  # train only the head (a probe on the backbone)
    readout: str = "prefix_min"
    token_logprob_feature: bool = True
    hard: bool = False  # threshold labels at 0.5 (default keeps soft labels soft)
    seed: int = 0
    logging_steps: int = 20


def _labels_for(t: Trajectory, cfg: PRMTrainConfig) -> tuple[list[float], list[float]]:
    labels = [0.0 if v is None else (float(v >= 0.5) if cfg.hard else float(v)) for v in t.step_labels]
    mask = [0.0 if v is None else 1.0 for v in t.step_labels]
    if cfg.last_step_only:
        last = max((i for i, m in enumerate(mask) if m), default=None)
        mask = [1.0 if i == last else 0.0 for i in range(len(mask))]
    return labels, mask


class _StepDataset(torch.utils.data.Dataset):
    def __init__(self, model: ProcessRewardModel, trajectories: Sequence[Trajectory], cfg: PRMTrainConfig) -> None:
        self.rows = []
        for t in trajectories:
            if all(v is None for v in t.step_labels):
                raise RecordError(f"trajectory {t.id!r} has no step labels to train on")
            labels, mask = _labels_for(t, cfg)
            self.rows.append((model.encode(t), labels, mask))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i]


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, model: ProcessRewardModel, pairs: Sequence[StepPair]) -> None:
        # the question and earlier steps come from the pair's source (meta.question, meta.prefix,
        # as stepforge's pair builders record them), never from splitting the prompt text back:
        # a prompt may hold a few-shot block or a chat template; the candidate step is scored last
        self.rows = []
        for i, p in enumerate(pairs):
            item = f"pair {i} ({p.problem_id}, step {p.step_index})"
            question, prev = p.meta.get("question"), p.meta.get("prefix")
            if not isinstance(question, str) or not isinstance(prev, list):
                raise RecordError(f"{item}: pairwise PRM training needs meta.question and meta.prefix (the steps "
                                  "before the pair), as `stepforge pairs` records them")
            self.rows.append((model.encode(Trajectory(id=item, problem_id=p.problem_id, question=question,
                                                      steps=[*prev, p.chosen.strip()])),
                              model.encode(Trajectory(id=item, problem_id=p.problem_id, question=question,
                                                      steps=[*prev, p.rejected.strip()]))))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i]


class _PRMTrainer(Trainer):
    loss_type: Literal["bce", "pairwise"] = "bce"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_type == "pairwise":
            r_w = _last_step_logit(model, inputs["chosen"])
            r_l = _last_step_logit(model, inputs["rejected"])
            loss = pairwise_loss(r_w, r_l)
        else:
            logits = model(inputs["input_ids"], inputs["attention_mask"], inputs["step_positions"],
                           inputs["content_mask"])
            loss = step_bce(logits, inputs["step_labels"], inputs["step_mask"])
        return (loss, None) if return_outputs else loss


def _last_step_logit(model: ProcessRewardModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(batch["input_ids"], batch["attention_mask"], batch["step_positions"], batch["content_mask"])
    last = (batch["step_positions"] >= 0).sum(-1) - 1
    return logits.gather(1, last.unsqueeze(-1)).squeeze(-1)


def _args(cfg: PRMTrainConfig, out_dir: str, use_cpu: bool) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps, lr_scheduler_type="cosine", logging_steps=cfg.logging_steps,
        save_strategy="no", report_to=[], seed=cfg.seed, use_cpu=use_cpu,  # train where the model is
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=False,
    )


def train_prm(model: ProcessRewardModel, trajectories: Sequence[Trajectory] = (), cfg: PRMTrainConfig | None = None,
              pairs: Sequence[StepPair] = ()) -> list[dict]:
    """Train in place on labeled trajectories (per-step BCE) or step pairs (pairwise loss).
    Returns the Trainer's log history."""
    cfg = cfg or PRMTrainConfig()
    if bool(trajectories) == bool(pairs):
        raise ValueError("train on labeled trajectories or on step pairs (exactly one of them)")
    pad = model.tokenizer.pad_token_id
    if pairs:
        dataset: torch.utils.data.Dataset = _PairDataset(model, pairs)

        def collator(rows):
            return {"chosen": collate([r[0] for r in rows], pad), "rejected": collate([r[1] for r in rows], pad)}
    else:
        dataset = _StepDataset(model, trajectories, cfg)

        def collator(rows):
            batch = collate([r[0] for r in rows], pad, [r[1] for r in rows])
            batch["step_mask"] = torch.tensor([r[2] + [0.0] * (batch["step_mask"].shape[1] - len(r[2]))
                                               for r in rows])
            return batch

    for p in model.backbone.parameters():
        p.requires_grad_(not cfg.freeze_backbone)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _PRMTrainer(model=model, args=_args(cfg, tmp, use_cpu=model.device.type == "cpu"),
                              train_dataset=dataset, data_collator=collator)
        trainer.loss_type = "pairwise" if pairs else "bce"
        model.train()
        trainer.train()
    model.eval()
    return trainer.state.log_history

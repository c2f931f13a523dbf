"""Supervised fine-tuning on trajectories (e.g. original vs step-expanded solutions) with TRL's
SFTTrainer: prompt-completion rows, loss on the completion (and EOS) only, LoRA through peft
as an option.

The prompt is the task's own (plain text, or chat messages in chat mode, which TRL renders
with the tokenizer's template), so a model trained here is sampled exactly as it was trained.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stepforge.backends.device import model_device
from stepforge.schema import Problem, Trajectory
from stepforge.tasks import Chat, Task


@dataclass(frozen=True)
class SFTSettings:
    lr: float = 2e-5
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    max_length: int = 1024
    seed: int = 0
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank (peft) and merge them back
    lora_alpha: int = 16


def sft_rows(trajectories: Sequence[Trajectory], task: Task) -> list[dict[str, Any]]:
    """One prompt-completion row per trajectory: the task's prompt for its question and its
    steps joined as the task writes a solution (conversational rows in chat mode)."""
    rows = []
    for t in trajectories:
        if not t.steps:
            raise ValueError(f"trajectory {t.id!r} has no steps to train on")
        prompt = task.prompt(Problem(id=t.problem_id, question=t.question, answer=t.final_answer or ""))
        completion = task.solution_text(t.steps)
        if isinstance(prompt, Chat):
            rows.append({"prompt": list(prompt.messages),
                         "completion": [{"role": "assistant", "content": completion}]})
        else:
            rows.append({"prompt": prompt, "completion": completion})
    return rows


def lora_config(rank: int, alpha: int = 16):
    """LoRA adapters of ``rank`` on every linear layer (peft, an optional extra)."""
    try:
        from peft import LoraConfig
    except ImportError as e:
        raise ImportError("--lora-rank needs peft: pip install 'stepforge[lora]'") from e
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM")


def train_sft(model, tokenizer, trajectories: Sequence[Trajectory], task: Task,
              settings: SFTSettings = SFTSettings()) -> tuple[Any, list[dict]]:
    """Fine-tune ``model`` on the trajectories; returns (trained model, TRL's log history).
    With ``lora_rank`` the LoRA weights are merged, so the result saves as a plain model."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not trajectories:
        raise ValueError("no trajectories to train on")
    peft_config = lora_config(settings.lora_rank, settings.lora_alpha) if settings.lora_rank > 0 else None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, learning_rate=settings.lr, num_train_epochs=settings.epochs,
                         max_steps=settings.max_steps, per_device_train_batch_size=settings.batch_size,
                         max_length=settings.max_length, completion_only_loss=True, logging_steps=10,
                         save_strategy="no", report_to=[], seed=settings.seed,
                         use_cpu=model_device(model).type == "cpu")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(sft_rows(trajectories, task)),
                             processing_class=tokenizer, peft_config=peft_config)
        trainer.train()
        trained = trainer.model
    if peft_config is not None:
        trained = trained.merge_and_unload()
    trained.eval()
    return trained, trainer.state.log_history

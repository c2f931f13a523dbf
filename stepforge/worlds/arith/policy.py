"""The world's tiny causal policy: a LlamaForCausalLM built from a config and trained on CPU.

Trained with a plain PyTorch loop rather than the HF Trainer: at ~0.2M parameters the
Trainer's per-step bookkeeping costs as much as the model's forward/backward.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from stepforge.runs import TRAIN_RECORD
from stepforge.worlds.arith.problems import STYLES, ArithConfig, sample_problem
from stepforge.worlds.arith.tokenizer import build_tokenizer

SHIPPED_CHECKPOINT = Path(__file__).parent / "checkpoint"
SHIPPED_PRM = Path(__file__).parent / "prm"  # trained by `stepforge train-prm` on MC labels (see its json)
# the padded world (arith-padded): its own policy and PRM, commands in their json files
PADDED_CHECKPOINT = Path(__file__).parent / "padded" / "checkpoint"
PADDED_PRM = Path(__file__).parent / "padded" / "prm"


@dataclass
class PolicyTrainConfig:
    """Model size and optimisation settings; defaults are the shipped checkpoint's.

    2,000 steps is deliberately short: fully trained (4,000 steps) the model is almost perfect
    (0.8% step errors), while at 2,000 it errs on ~12% of sampled steps, mostly on
    multiplications, which leaves room for labels, PRMs and search to matter.
    """

    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 512
    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 1
    style: str = "terse"  # solution style of freshly drawn problems (problems.STYLES)
    # also train on the prompt's tokens (all but <s>): FIM in the manner of code models
    # (Bavarian et al. 2022), where the prefix and suffix are supervised too
    prompt_loss: bool = False
    # start from this trained model's weights instead of scratch (embeddings grow to the tokenizer)
    init_from: str | None = None
    device: str = "cpu"  # cpu | cuda[:N] (the CLI resolves auto); the default size trains fastest on one CPU thread
    world: ArithConfig = field(default_factory=lambda: ArithConfig(min_steps=2, max_steps=12))

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"unknown solution style {self.style!r}; expected one of {STYLES}")


def build_model(cfg: PolicyTrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


Example = tuple[str, str]  # (prompt, completion): loss on the completion and EOS only


def drawn_examples(rng: random.Random, cfg: PolicyTrainConfig) -> Iterator[Example]:
    """Fresh problems forever: ``question\\n`` -> solution in ``cfg.style``."""
    while True:
        p = sample_problem(rng, cfg.world)
        yield p.question + "\n", p.solution_in(cfg.style, rng)


def corpus_examples(corpus: Sequence[Example], seed: int) -> Iterator[Example]:
    """A fixed corpus, reshuffled (seeded) each epoch, forever."""
    if not corpus:
        raise ValueError("empty training corpus")
    order = list(range(len(corpus)))
    rng = random.Random(seed)
    while True:
        rng.shuffle(order)
        yield from (corpus[i] for i in order)


def training_batch(examples: Iterator[Example], batch_size: int, tokenizer: PreTrainedTokenizerFast,
                   prompt_loss: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded batch of ``<s>prompt completion</s>`` with loss on the completion and EOS
    only (``prompt_loss``: on the prompt after ``<s>`` too)."""
    ids, labels = [], []
    for _ in range(batch_size):
        prompt_text, completion = next(examples)
        prompt = tokenizer(prompt_text).input_ids  # includes <s>
        answer = [*tokenizer(completion, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        ids.append(prompt + answer)
        labels.append([-100, *prompt[1:], *answer] if prompt_loss else [-100] * len(prompt) + answer)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    label_t = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
    return {"input_ids": input_ids, "attention_mask": (label_t != -100) | (input_ids != pad), "labels": label_t}


def train_policy(out_dir: str | Path, cfg: PolicyTrainConfig | None = None,
                 progress: Callable[[int, int, float], None] | None = None,
                 corpus: Sequence[Example] | None = None, tokenizer: PreTrainedTokenizerFast | None = None,
                 record: dict | None = None) -> Path:
    """Train from scratch and ``save_pretrained`` model + tokenizer into ``out_dir``.

    Examples are fresh problems in ``cfg.style``, or ``corpus`` (prompt, completion) pairs
    cycled in seeded epochs; ``tokenizer`` (e.g. :func:`build_tokenizer_with`) replaces the
    world's; ``record`` is added to the saved training record (say what the corpus was).
    """
    cfg = cfg or PolicyTrainConfig()
    torch.set_num_threads(cfg.threads)
    tokenizer = tokenizer or build_tokenizer()
    if cfg.init_from is not None:
        model = LlamaForCausalLM.from_pretrained(cfg.init_from)
        if model.config.vocab_size < len(tokenizer):  # new special tokens (FIM): fresh rows
            torch.manual_seed(cfg.seed)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    else:
        model = build_model(cfg, tokenizer)
    device = torch.device(cfg.device)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 0
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    examples = (corpus_examples(corpus, cfg.seed) if corpus is not None
                else drawn_examples(random.Random(cfg.seed), cfg))
    start, ema, tokens = time.perf_counter(), None, 0
    for step in range(cfg.steps):
        batch = {k: v.to(device) for k, v in training_batch(examples, cfg.batch_size, tokenizer,
                                                              cfg.prompt_loss).items()}
        tokens += int((batch["labels"] != -100).sum())
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if progress:
            progress(step + 1, cfg.steps, ema)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.cpu().save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {"config": _jsonable(asdict(cfg)), "final_loss_ema": ema, "train_seconds": time.perf_counter() - start,
            "completion_tokens": tokens, "torch_threads": cfg.threads, "command": " ".join(sys.argv),
            **({"corpus": f"{len(corpus)} examples"} if corpus is not None else {}), **(record or {})}
    (tmp / TRAIN_RECORD).write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic publish: a killed training run never leaves a half-written policy
    return out


def _jsonable(d: dict) -> dict:
    return {k: (_jsonable(asdict(v)) if hasattr(v, "__dataclass_fields__") else v) for k, v in d.items()}


def default_cache_dir(world: str = "arith") -> Path:
    import os

    return Path(os.environ.get("STEPFORGE_CACHE", Path.home() / ".cache" / "stepforge")) / f"{world}-policy"


def resolve_policy_dir(path: str | Path | None = None, world: str = "arith", shipped: Path | None = None
                       ) -> Path | None:
    """Where a trained world policy lives: ``path``, else the shipped checkpoint (``shipped``, or
    this world's), else the cache."""
    if path is not None:
        return Path(path)
    shipped = shipped or {"arith": SHIPPED_CHECKPOINT, "arith-padded": PADDED_CHECKPOINT}.get(world)
    for candidate in (shipped, default_cache_dir(world)):
        if candidate is not None and (candidate / "config.json").exists():
            return candidate
    return None


def load_policy(path: str | Path | None = None, world: str = "arith", shipped: Path | None = None
                ) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Load the trained world policy (eval mode). Raises FileNotFoundError with the fix if absent."""
    where = resolve_policy_dir(path, world, shipped)
    if where is None or not (where / "config.json").exists():
        raise FileNotFoundError(f"no trained {world} policy at {where or default_cache_dir(world)}; "
                                f"run `stepforge train-world --world {world}` (about 3 min on 2 cores)")
    model = LlamaForCausalLM.from_pretrained(where)
    model.eval()
    tokenizer = build_tokenizer()
    if model.config.vocab_size > len(tokenizer):  # trained with added tokens (FIM, thinking): its own
        tokenizer = PreTrainedTokenizerFast.from_pretrained(where)
    return model, tokenizer

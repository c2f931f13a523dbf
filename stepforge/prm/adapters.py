"""Adapters for public PRM formats. Each scores every step of a trajectory in ONE forward pass
and returns P(step good), like :meth:`ProcessRewardModel.score`.

| format              | step marker            | read-out                                              |
|---------------------|------------------------|-------------------------------------------------------|
| Math-Shepherd       | ``ки`` after each step | softmax over the "+"/"-" logits at the ``ки`` token    |
| Qwen2.5-Math-PRM    | ``<extra_0>``          | 2-class head, P(class 1) at each ``<extra_0>``         |
| RLHFlow             | chat turns             | P("+") vs "-" predicting each assistant "+" turn       |
| TRL token classif.  | separator (``\\n``)     | 2-class token head, P(class 1) at the step's last token |

Marker positions come from character offsets of the rendered text (RLHFlow, Math-Shepherd,
TRL) or the marker's special-token id (Qwen, as its reference code does). RLHFlow's
reference code runs one pass per step (T passes); this adapter renders the whole
conversation once, which gives the same scores under a causal model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stepforge.alignment import layout_steps, tokens_at_chars
from stepforge.backends.causal_lm import pad_id, pad_right
from stepforge.backends.device import check_model_dir, model_device, resolve_device, resolve_dtype
from stepforge.schema import RecordError, Trajectory


def char_positions(tokenizer, text: str, chars: Sequence[int], add_special_tokens: bool = True
                   ) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and, for each char index, the token holding it."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    return enc["input_ids"], tokens_at_chars(enc["offset_mapping"], chars)


def _batched(model, encoded: list[tuple[list[int], list[int]]], pad: int, read, batch_size: int = 32
             ) -> list[list[float]]:
    out: list[list[float]] = [[] for _ in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    device = model_device(model)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = pad_right([encoded[i][0] for i in idx], pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
            for row, i in enumerate(idx):
                out[i] = read(logits[row], encoded[i][1])
    return out


def _need_steps(t: Trajectory) -> None:
    if not t.steps:
        raise RecordError(f"trajectory {t.id!r}: no steps to score")


class MathShepherdPRM:
    """``question + " " + step_1 + " ки\\n" + step_2 + " ки\\n" ...`` into a causal LM; step t's
    score is softmax([logit("+"), logit("-")])[0] at its ``ки`` token (peiyi9979/math-shepherd)."""

    def __init__(self, model, tokenizer, step_tag: str = "ки", good: str = "+", bad: str = "-") -> None:
        self.model, self.tokenizer, self.step_tag = model.eval(), tokenizer, step_tag
        self.candidates = [self._single_id(good), self._single_id(bad)]

    def _single_id(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"Math-Shepherd needs {text!r} to be one token, got {ids}")
        return ids[0]

    def encode(self, t: Trajectory) -> tuple[list[int], list[int]]:
        _need_steps(t)
        text, marks = t.question + " ", []
        for s in t.steps:
            text += s + " "
            marks.append(len(text) + len(self.step_tag) - 1)  # last char of the tag
            text += self.step_tag + "\n"
        return char_positions(self.tokenizer, text, marks)

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        def read(logits, positions):
            probs = logits[:, self.candidates].softmax(-1)[:, 0]
            return probs[positions].tolist()

        return _batched(self.model, [self.encode(t) for t in trajectories], pad_id(self.tokenizer), read)


QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class QwenMathPRM:
    """Qwen2.5-Math-PRM: chat (system, user question, assistant steps joined and ended by
    ``<extra_0>``); the model's 2-class per-token logits give P(good) = softmax[..., 1] at each
    ``<extra_0>``. Any model whose output ``.logits`` is (batch, length, 2) works."""

    def __init__(self, model, tokenizer, step_sep: str = "<extra_0>", system: str = QWEN_SYSTEM) -> None:
        self.model, self.tokenizer, self.step_sep, self.system = model.eval(), tokenizer, step_sep, system
        ids = tokenizer(step_sep, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{step_sep!r} must be a single special token of the tokenizer")
        self.sep_id = ids[0]

    def render(self, t: Trajectory) -> str:
        answer = self.step_sep.join(t.steps) + self.step_sep
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": t.question},
                    {"role": "assistant", "content": answer}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return f"{self.system}\n{t.question}\n{answer}"

    def encode(self, t: Trajectory) -> tuple[list[int], list[int]]:
        _need_steps(t)
        ids = self.tokenizer(self.render(t), add_special_tokens=False)["input_ids"]
        positions = [i for i, x in enumerate(ids) if x == self.sep_id]
        if len(positions) != len(t.steps):
            raise RecordError(f"trajectory {t.id!r}: found {len(positions)} {self.step_sep} markers for "
                              f"{len(t.steps)} steps (a step contains the marker?)")
        return ids, positions

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        def read(logits, positions):
            return logits[positions].softmax(-1)[:, 1].tolist()

        return _batched(self.model, [self.encode(t) for t in trajectories], pad_id(self.tokenizer), read)


class RLHFlowPRM:
    """RLHFlow PRMs (Llama3.1-8B-PRM-*): user turns carry the steps (the first prefixed by the
    question), each assistant turn is "+"; P(good_t) = softmax([logit("+"), logit("-")])[0] at
    the position predicting step t's assistant "+"."""

    def __init__(self, model, tokenizer, good: str = "+", bad: str = "-") -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("RLHFlow PRMs need a tokenizer with a chat template")
        self.model, self.tokenizer, self.good = model.eval(), tokenizer, good
        self.candidates = [tokenizer(x, add_special_tokens=False)["input_ids"][-1] for x in (good, bad)]

    def conversation(self, t: Trajectory) -> list[dict[str, str]]:
        turns = []
        for k, step in enumerate(t.steps):
            turns.append({"role": "user", "content": f"{t.question} {step}" if k == 0 else step})
            turns.append({"role": "assistant", "content": self.good})
        return turns

    def encode(self, t: Trajectory) -> tuple[list[int], list[int]]:
        _need_steps(t)
        turns = self.conversation(t)
        text = self.tokenizer.apply_chat_template(turns, tokenize=False)
        # the k-th assistant "+" is found by rendering the conversation up to it: its char index is
        # the length of the rendering that stops right before it
        marks, cursor = [], 0
        for k in range(len(t.steps)):
            prefix = self.tokenizer.apply_chat_template(turns[:2 * k + 1], tokenize=False, add_generation_prompt=True)
            cursor = text.index(self.good, max(cursor, len(prefix)))
            marks.append(cursor)
            cursor += len(self.good)
        ids, positions = char_positions(self.tokenizer, text, marks, add_special_tokens=False)
        return ids, [p - 1 for p in positions]  # the logits that predict the "+" token

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        def read(logits, positions):
            return logits[positions][:, self.candidates].softmax(-1)[:, 0].tolist()

        return _batched(self.model, [self.encode(t) for t in trajectories], pad_id(self.tokenizer), read)


class TokenClassificationPRM:
    """TRL's stepwise format: ``prompt + step_1 + sep + step_2 + sep ...`` into a token
    classifier (``AutoModelForTokenClassification``, 2 labels); P(good_t) = softmax[..., 1] at the
    last token of step t + separator, where TRL's PRMTrainer puts the label."""

    def __init__(self, model, tokenizer, separator: str = "\n") -> None:
        self.model, self.tokenizer, self.separator = model.eval(), tokenizer, separator

    def encode(self, t: Trajectory) -> tuple[list[int], list[int]]:
        _need_steps(t)
        layout = layout_steps(t.question, t.steps, "", self.separator)
        return char_positions(self.tokenizer, layout.text, layout.ends)

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        def read(logits, positions):
            return logits[positions].softmax(-1)[:, 1].tolist()

        return _batched(self.model, [self.encode(t) for t in trajectories], pad_id(self.tokenizer), read)


def qwen2_process_reward_model_class():
    """Qwen2.5-Math-PRM's architecture (``Qwen2ForProcessRewardModel``, shipped as custom code
    in its ``modeling_qwen2_rm.py``): a Qwen2 decoder (``model.*``) and a two-layer score head
    ``score = Sequential(Linear(h, h), ReLU, Linear(h, num_labels=2))`` applied to every token.
    Defined here so real checkpoints load with their weights and without trust_remote_code;
    the class is built on first use (transformers is imported lazily by this module's users)."""
    from torch import nn
    from transformers import Qwen2Model, Qwen2PreTrainedModel
    from transformers.modeling_outputs import TokenClassifierOutput

    class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
        _keys_to_ignore_on_load_unexpected = (r"^lm_head\.",)

        def __init__(self, config) -> None:
            super().__init__(config)
            self.num_labels = getattr(config, "num_labels", 2) or 2
            self.model = Qwen2Model(config)
            self.score = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(),
                                       nn.Linear(config.hidden_size, self.num_labels))
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return TokenClassifierOutput(logits=self.score(hidden))

    return Qwen2ForProcessRewardModel


ADAPTERS = {"math-shepherd": MathShepherdPRM, "qwen": QwenMathPRM, "rlhflow": RLHFlowPRM,
            "token-classification": TokenClassificationPRM}


def load_adapter(kind: str, path: str, device: str = "auto", dtype: str = "auto", **kwargs):
    """Load a public PRM directory with the adapter for its format, on ``device`` in ``dtype``.

    A checkpoint whose weights do not cover the model the adapter needs (e.g. a causal LM
    loaded as a 2-class token classifier) is an error: transformers would otherwise start
    the missing head from random weights and score noise."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    if kind not in ADAPTERS:
        raise ValueError(f"unknown PRM format {kind!r}; choose from {', '.join(ADAPTERS)}")
    from transformers import AutoConfig

    where = check_model_dir(path, "PRM")
    dev = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(where)
    architectures = getattr(AutoConfig.from_pretrained(where), "architectures", None) or []
    if kind == "qwen" and "Qwen2ForProcessRewardModel" in architectures:
        auto = qwen2_process_reward_model_class()  # the real Qwen2.5-Math-PRM-7B layout
    elif kind in ("qwen", "token-classification"):
        auto = AutoModelForTokenClassification
    else:
        auto = AutoModelForCausalLM
    model, info = auto.from_pretrained(where, dtype=resolve_dtype(dtype, dev), output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if "rotary" not in k]
    if missing:
        raise ValueError(f"{where}: not a {kind} PRM checkpoint for {auto.__name__}: {len(missing)} weights are "
                         f"missing and would be random ({', '.join(sorted(missing)[:3])}...)")
    return ADAPTERS[kind](model.to(dev), tokenizer, **kwargs)

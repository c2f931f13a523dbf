import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForTokenClassification,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForTokenClassification,
)

from stepforge.prm.adapters import MathShepherdPRM, QwenMathPRM, RLHFlowPRM, TokenClassificationPRM
from stepforge.schema import RecordError, Trajectory

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL = ["<pad>", "<extra_0>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@pytest.fixture(scope="module")
def tok():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["Natalia sold 48 clips in April. Then she sold 24 in May. So 72 clips. + - Step 1: Step 2:",
              "How many clips did Natalia sell altogether? 48/2 = 24 and 48+24 = 72"] * 40
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", additional_special_tokens=SPECIAL[1:])
    t.add_tokens(["ки"])
    t.chat_template = CHAT
    return t


T = Trajectory(id="t", problem_id="p", question="How many clips?",
               steps=["Natalia sold 48/2 = 24 clips in May.", "48+24 = 72", "So 72 clips."])


def causal(tok, seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=512)).eval()


def full_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_math_shepherd_positions_and_scores(tok):
    prm = MathShepherdPRM(causal(tok), tok)
    ids, pos = prm.encode(T)
    assert [tok.convert_ids_to_tokens(ids[p]) for p in pos] == ["ки"] * 3
    text = tok.decode(ids)
    assert text == "How many clips? Natalia sold 48/2 = 24 clips in May. ки\n48+24 = 72 ки\nSo 72 clips. ки\n"
    logits = full_logits(prm.model, ids)
    want = logits[pos][:, prm.candidates].softmax(-1)[:, 0]
    other = Trajectory(id="u", problem_id="p", question="Q?", steps=["Then she sold 24."])
    got = prm.score([other, T])[1]  # batched with padding, in input order
    assert got == pytest.approx(want.tolist(), abs=1e-5)


def test_qwen_positions_and_scores(tok):
    torch.manual_seed(1)
    model = Qwen2ForTokenClassification(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     num_key_value_heads=2, num_labels=2)).eval()
    prm = QwenMathPRM(model, tok)
    assert prm.render(T).startswith("<|system|>Please reason step by step")
    ids, pos = prm.encode(T)
    assert [tok.convert_ids_to_tokens(ids[p]) for p in pos] == ["<extra_0>"] * 3
    want = full_logits(model, ids)[pos].softmax(-1)[:, 1]
    assert prm.score([T])[0] == pytest.approx(want.tolist(), abs=1e-5)
    bad = T.model_copy(update={"steps": ["a <extra_0> b"]})
    with pytest.raises(RecordError, match="found 2 <extra_0> markers for 1 steps"):
        prm.encode(bad)


def test_rlhflow_one_pass_equals_the_reference_per_step_passes(tok):
    model = causal(tok, seed=2)
    prm = RLHFlowPRM(model, tok)
    ids, pos = prm.encode(T)
    assert [tok.convert_ids_to_tokens(ids[p + 1]) for p in pos] == ["+"] * 3
    # RLHFlow's reference: one pass per step over the conversation up to that step's "+"
    reference = []
    turns = prm.conversation(T)
    for k in range(len(T.steps)):
        rendered = tok.apply_chat_template(turns[:2 * k + 2], tokenize=False)
        step_ids = tok(rendered, add_special_tokens=False)["input_ids"]
        plus = max(i for i, x in enumerate(step_ids) if x == prm.candidates[0])
        logits = full_logits(model, step_ids)[plus - 1, prm.candidates]
        reference.append(logits.softmax(-1)[0].item())
    assert prm.score([T])[0] == pytest.approx(reference, abs=1e-5)


def test_trl_token_classification_positions(tok):
    torch.manual_seed(3)
    model = LlamaForTokenClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=2,
                                                    num_key_value_heads=2, num_labels=2)).eval()
    prm = TokenClassificationPRM(model, tok)
    ids, pos = prm.encode(T)
    text = T.question + "".join(s + "\n" for s in T.steps)
    offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
    ends = [i for i, ch in enumerate(text) if ch == "\n"]
    assert [offsets[p][0] <= e < offsets[p][1] for p, e in zip(pos, ends, strict=True)] == [True] * 3
    want = full_logits(model, ids)[pos].softmax(-1)[:, 1]
    assert prm.score([T])[0] == pytest.approx(want.tolist(), abs=1e-5)


def test_adapters_reject_empty_trajectories(tok):
    with pytest.raises(RecordError, match="no steps"):
        MathShepherdPRM(causal(tok), tok).score([T.model_copy(update={"steps": [], "step_labels": []})])


def qwen_prm_dir(tok, path, seed=4):
    """A tiny checkpoint laid out like Qwen/Qwen2.5-Math-PRM-7B: config architectures and
    auto_map as the real one's, weights model.* + score.0.* + score.2.*, the <extra_0> token."""
    from stepforge.prm.adapters import qwen2_process_reward_model_class

    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=2,
                         architectures=["Qwen2ForProcessRewardModel"],
                         auto_map={"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"})
    torch.manual_seed(seed)
    model = qwen2_process_reward_model_class()(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


def test_a_real_layout_qwen_prm_checkpoint_loads_with_its_score_head(tok, tmp_path):
    from safetensors.torch import load_file

    from stepforge.prm.adapters import load_adapter

    model = qwen_prm_dir(tok, tmp_path / "qwen-prm")
    keys = set(load_file(str(tmp_path / "qwen-prm" / "model.safetensors")))
    assert {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"} <= keys
    assert any(k.startswith("model.layers.0.") for k in keys)
    prm = load_adapter("qwen", str(tmp_path / "qwen-prm"), device="cpu")
    ids, pos = prm.encode(T)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    want = logits[pos].softmax(-1)[:, 1]  # the reference: P(class 1) at each <extra_0>
    assert prm.score([T])[0] == pytest.approx(want.tolist(), abs=1e-5)


def test_a_checkpoint_that_does_not_match_the_adapter_fails_loudly(tok, tmp_path):
    from stepforge.prm.adapters import load_adapter

    causal(tok).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match=r"not a qwen PRM checkpoint.*missing and would be random"):
        load_adapter("qwen", str(tmp_path / "lm"), device="cpu")

import json

import torch

from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.worlds.arith.policy import PolicyTrainConfig, load_policy, train_policy
from stepforge.worlds.arith.problems import ArithConfig


def test_training_lowers_loss_and_saves_a_loadable_policy(tmp_path):
    losses = []
    cfg = PolicyTrainConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, steps=120,
                            batch_size=8, warmup=10, world=ArithConfig(min_steps=2, max_steps=3))
    out = train_policy(tmp_path / "p", cfg, progress=lambda s, n, loss: losses.append(loss))
    assert losses[-1] < 0.7 * losses[0]
    record = json.loads((out / "stepforge_train.json").read_text())
    assert record["config"]["steps"] == 120 and record["config"]["world"]["max_steps"] == 3
    model, tok = load_policy(out)
    res = TransformersPolicy(model, tok).generate(["5 a+1\n"], n=2, max_new_tokens=8, seed=0)
    assert len(res.completions[0]) == 2
    assert not (tmp_path / "p.tmp").exists()


def test_missing_policy_says_how_to_train(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="stepforge train-world"):
        load_policy(tmp_path / "nothing")


def test_training_batch_masks_the_prompt_unless_prompt_loss():
    import itertools

    from stepforge.worlds.arith.policy import training_batch
    from stepforge.worlds.arith.tokenizer import build_tokenizer

    tok = build_tokenizer()
    pair = ("4 a+1\n", "a+1=5\nAnswer: 5")
    n_prompt = len(tok(pair[0]).input_ids)  # <s> 4 space a +1 newline
    masked = training_batch(itertools.repeat(pair), 1, tok)["labels"][0].tolist()
    assert masked[:n_prompt] == [-100] * n_prompt and masked[-1] == tok.eos_token_id
    full = training_batch(itertools.repeat(pair), 1, tok, prompt_loss=True)["labels"][0].tolist()
    assert full[0] == -100 and full[1:n_prompt] == tok(pair[0]).input_ids[1:] and full[n_prompt:] == masked[n_prompt:]


def test_a_policy_can_start_from_trained_weights_with_new_special_tokens(tmp_path):
    from transformers import LlamaForCausalLM

    from stepforge.worlds.arith.policy import SHIPPED_CHECKPOINT, PolicyTrainConfig, train_policy
    from stepforge.worlds.arith.tokenizer import FIM_TOKENS, build_tokenizer_with

    tok = build_tokenizer_with(FIM_TOKENS)
    out = train_policy(tmp_path / "fim", PolicyTrainConfig(steps=1, lr=1e-9, init_from=str(SHIPPED_CHECKPOINT)),
                       corpus=[("<fim_prefix>4 a+1\n<fim_suffix>Answer: 5<fim_middle>", "a+1=5")], tokenizer=tok)
    base = LlamaForCausalLM.from_pretrained(SHIPPED_CHECKPOINT)
    grown = LlamaForCausalLM.from_pretrained(out)
    assert grown.config.vocab_size == len(tok) == base.config.vocab_size + 3
    old = base.get_input_embeddings().weight
    assert torch.allclose(grown.get_input_embeddings().weight[:len(old)], old, atol=1e-5)  # kept, lr ~ 0


def test_train_world_cli_trains_the_padded_world_at_a_chosen_size(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stepforge.cli import app
    from stepforge.tasks import get_world

    monkeypatch.setenv("STEPFORGE_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(app, ["train-world", "--world", "arith-padded", "--steps", "3", "--hidden-size", "16",
                                 "--num-layers", "1", "--lr", "1e-3"])
    assert r.exit_code == 0, r.output
    where = tmp_path / "cache" / "arith-padded-policy"  # the padded world's own cache, not the arith one
    record = json.loads((where / "stepforge_train.json").read_text())["config"]
    assert record["style"] == "padded" and record["hidden_size"] == 16 and record["intermediate_size"] == 64
    assert record["num_layers"] == 1 and record["lr"] == 1e-3 and record["device"] == "cpu"
    assert get_world("arith-padded").policy_dir(where) == where
    r = CliRunner().invoke(app, ["train-world", "--world", "arith-padded", "--style", "fancy"])
    assert r.exit_code != 0 and "no style 'fancy'" in r.output


def test_the_world_backend_follows_the_data_world():
    from stepforge.cli.common import make_cli_policy, policy_identity, world_in
    from stepforge.worlds.arith.policy import PADDED_CHECKPOINT, SHIPPED_CHECKPOINT

    assert world_in("world:arith-padded") == "arith-padded" and world_in("world") is None
    assert world_in("gsm8k:test") is None
    padded = make_cli_policy("world", None, None, "cpu", "float32", world=world_in("world:arith-padded"))
    plain = make_cli_policy("world", None, None, "cpu", "float32")
    assert padded.name == "world:arith-padded" and plain.name == "world:arith"
    first = next(iter(padded.model.state_dict().values()))
    assert not first.equal(next(iter(plain.model.state_dict().values())))
    ids = {policy_identity("world", None, None, w)["model"]["path"] for w in ("arith-padded", None)}
    assert len(ids) == 2 and str(PADDED_CHECKPOINT) in " ".join(ids) and str(SHIPPED_CHECKPOINT) in " ".join(ids)

import json

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

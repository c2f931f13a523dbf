import math

import pytest
import torch
from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from stepforge.eval.prm_metrics import (
    aggregate,
    best_of_n_table,
    calibrate_threshold,
    first_error_f1,
    predict_first_error,
    step_auc,
    weighted_vote,
)
from stepforge.prm.implicit import ImplicitPRM, step_logprob_sums
from stepforge.prm.model import PRMConfig, ProcessRewardModel, encode_steps
from stepforge.prm.train import PRMTrainConfig, pairwise_loss, step_bce, train_prm
from stepforge.schema import Problem, RecordError, StepPair, Trajectory
from stepforge.worlds.arith.tokenizer import build_tokenizer


def traj(steps, labels=None, tid="t", question="5 a+1 b*2", **kw):
    return Trajectory(id=tid, problem_id="p", question=question, steps=steps, step_labels=labels or [], **kw)


def tiny_prm(readout="separator", seed=0) -> ProcessRewardModel:
    tok = build_tokenizer()
    torch.manual_seed(seed)
    backbone = LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128))
    return ProcessRewardModel(backbone, tok, PRMConfig(readout=readout, max_length=128))


def test_golden_step_positions_world_tokenizer():
    tok = build_tokenizer()
    e = encode_steps(tok, "5 a+1", ["a+1=6", "Answer: 6"], PRMConfig())
    tokens = tok.convert_ids_to_tokens(e.input_ids)
    assert tokens == ["<s>", "5", " ", "a", "+1", "\n", "a", "+1", "=", "6", "\n", "Answer:", " ", "6", "\n"]
    assert e.step_positions == [10, 14]
    assert e.content_mask == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0]


def test_step_positions_follow_character_offsets_with_a_bpe_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["Natalia sold 48 clips.\nThen 24 more.\n", "So 72 in total ки\n"] * 50
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "[PAD]"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="[PAD]")
    cfg = PRMConfig(step_separator=" ки\n")
    steps = ["Natalia sold 48 clips.", "Then 24 more."]
    e = encode_steps(tok, "How many?", steps, cfg)
    text = "How many?\n" + "".join(s + " ки\n" for s in steps)
    offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
    for pos, end_char in zip(e.step_positions, [text.index(" ки\n") + 3, len(text) - 1], strict=True):
        assert offsets[pos][0] <= end_char < offsets[pos][1]  # the token holding the separator's last char


def test_bad_inputs_name_the_item():
    prm = tiny_prm()
    with pytest.raises(RecordError, match="trajectory 'empty': no steps"):
        prm.score([traj([], tid="empty")])
    with pytest.raises(RecordError, match=r"trajectory 'long': \d+ tokens exceed the PRM's max_length 128"):
        prm.score([traj(["a+1=6"] * 40, tid="long")])
    with pytest.raises(RecordError, match="trajectory 'nolab' has no step labels"):
        train_prm(prm, [traj(["a+1=6"], tid="nolab")])
    with pytest.raises(ValueError, match="unknown PRM readout"):
        PRMConfig(readout="mean")


@pytest.mark.parametrize("readout", ["separator", "prefix_min"])
def test_one_pass_equals_prefix_by_prefix(readout):
    prm = tiny_prm(readout)
    torch.nn.init.normal_(prm.head.weight, std=1.0)
    t = traj(["a+1=6", "b*2=12", "Answer: 12"])
    one = prm.score([t])[0]
    per = [prm.score([traj(t.steps[:k + 1])])[0][-1] for k in range(3)]
    assert one == pytest.approx(per, abs=1e-5)
    if readout == "prefix_min":
        assert one[0] >= one[1] >= one[2]  # a prefix is as good as its worst token


def test_soft_labels_stay_soft():
    prm = tiny_prm()
    data = [traj(["a+1=6", "b*2=12", "Answer: 12"], [0.3, 0.8, 0.55])]
    train_prm(prm, data, PRMTrainConfig(max_steps=200, batch_size=1, lr=1e-2, warmup_steps=0,
                                       freeze_backbone=False, logging_steps=50))
    assert prm.score(data)[0] == pytest.approx([0.3, 0.8, 0.55], abs=0.05)  # int() truncation would give 0/1


def test_hard_and_last_step_only_options():
    prm = tiny_prm()
    data = [traj(["a+1=6", "b*2=12", "Answer: 12"], [0.3, 0.8, 0.9])]
    train_prm(prm, data, PRMTrainConfig(max_steps=150, batch_size=1, lr=1e-2, warmup_steps=0,
                                       freeze_backbone=False, hard=True,
                                        last_step_only=True))
    assert prm.score(data)[0][-1] > 0.9  # only the last label (hard 1.0) was trained


def test_save_and_load_round_trip(tmp_path):
    prm = tiny_prm("prefix_min")
    torch.nn.init.normal_(prm.head.weight)
    t = traj(["a+1=6", "Answer: 6"], question="5 a+1")
    prm.save_pretrained(tmp_path / "prm")
    back = ProcessRewardModel.from_pretrained(tmp_path / "prm")
    assert back.config == prm.config and back.score([t])[0] == pytest.approx(prm.score([t])[0])
    with pytest.raises(FileNotFoundError, match="not a stepforge PRM"):
        ProcessRewardModel.from_pretrained(tmp_path)


def test_losses_by_hand():
    logits = torch.tensor([[0.0, 2.0, 5.0]])
    labels = torch.tensor([[0.5, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert step_bce(logits, labels, mask).item() == pytest.approx(expected)
    assert pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_pairwise_training_prefers_chosen_steps():
    prm = tiny_prm()
    pairs = [StepPair(prompt="5 a+1 b*2\na+1=6\n", chosen="b*2=12", rejected="b*2=13", problem_id="p",
                      step_index=1, meta={"question": "5 a+1 b*2", "prefix": ["a+1=6"]})]
    train_prm(prm, pairs=pairs, cfg=PRMTrainConfig(max_steps=60, batch_size=1, lr=1e-2, warmup_steps=0,
                                       freeze_backbone=False))
    good, bad = prm.score([traj(["a+1=6", "b*2=12"]), traj(["a+1=6", "b*2=13"])])
    assert good[-1] > bad[-1] + 0.2


def test_first_error_f1_by_hand():
    gold = [None, None, 2, 0]
    pred = [None, 1, 2, 1]
    r = first_error_f1(pred, gold)
    assert (r["acc_ok"], r["acc_err"]) == (0.5, 0.5) and r["f1"] == pytest.approx(0.5)
    assert predict_first_error([0.9, 0.4, 0.1], 0.5) == 1 and predict_first_error([0.9, 0.8], 0.5) is None
    theta, f1 = calibrate_threshold([[0.9, 0.9], [0.9, 0.2], [0.3, 0.9]], [None, 1, 0])
    assert 0.3 < theta <= 0.9 and f1 == 1.0


def test_step_auc_and_aggregation_by_hand():
    # good steps scored 0.9, 0.4; bad 0.5, 0.1 -> 3 of 4 pairs ordered right
    assert step_auc([[0.9, 0.5], [0.4, 0.1]], [[1.0, 0.0], [1.0, 0.0]]) == pytest.approx(0.75)
    assert step_auc([[0.5, 0.5]], [[1.0, 0.0]]) == pytest.approx(0.5)  # a tie counts half
    s = [0.9, 0.5, 0.8]
    assert (aggregate(s, "min"), aggregate(s, "last"), aggregate(s, "mean")) == (0.5, 0.8, pytest.approx(2.2 / 3))
    assert aggregate(s, "prod") == pytest.approx(0.36)
    assert weighted_vote(["3", "4", "4"], [0.9, 0.3, 0.4]) == "3"


def test_best_of_n_table_by_hand():
    problems = [Problem(id="a", question="q", answer="1"), Problem(id="b", question="q", answer="2")]
    ts = [Trajectory(id=f"{p}{i}", problem_id=p, question="q", steps=["s"], final_answer=ans, correct=ok)
          for p, i, ans, ok in [("a", 0, "1", True), ("a", 1, "9", False), ("a", 2, "9", False),
                                ("b", 0, "2", True), ("b", 1, "7", False)]]
    scores = [[0.9], [0.2], [0.3], [0.1], [0.6]]
    table = best_of_n_table(problems, ts, scores, lambda p, a: a == p.answer, resamples=200)
    assert table["bon_min"]["accuracy"] == 0.5 and table["majority"]["accuracy"] == 0.5
    assert table["oracle"]["accuracy"] == 1.0 and table["weighted_min"]["accuracy"] == 0.5
    assert table["oracle"]["ci_low"] == table["oracle"]["ci_high"] == 1.0


def test_step_logprobs_and_implicit_prm(world_policy):
    model, tok = world_policy.model, world_policy.tokenizer
    t = traj(["a+1=6", "b*2=12", "Answer: 12"])
    sums = step_logprob_sums(model, tok, [t], PRMConfig())[0]
    ids = tok("5 a+1 b*2\na+1=6\nb*2=12\nAnswer: 12\n", return_tensors="pt").input_ids
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    # tokens: <s> 5 ' ' a +1 ' ' b *2 \n | a +1 = 6 (9..12, step 0) | \n (13, no step) | ...
    assert sums[0].item() == pytest.approx(lp[8:12].sum().item(), abs=1e-5)
    implicit = ImplicitPRM(model, tok, beta=0.5)
    assert implicit.step_rewards([t])[0] == pytest.approx(torch.zeros(3), abs=1e-6)  # π = π_ref at start
    assert implicit.score([t])[0] == pytest.approx([0.5, 0.5, 0.5])


def test_implicit_prm_trained_on_outcomes_separates_right_from_wrong():
    from transformers import LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128))
    good = traj(["a+1=6", "b*2=12", "Answer: 12"], tid="g", correct=True)
    bad = traj(["a+1=6", "b*2=13", "Answer: 13"], tid="b", correct=False)
    for loss in ("ce", "dpo"):
        implicit = ImplicitPRM(lm, tok, beta=1.0)
        implicit.train_on_outcomes([good, bad], steps=40, batch_size=2, lr=3e-3, loss=loss)
        r_good, r_bad = (r.sum().item() for r in implicit.step_rewards([good, bad]))
        assert r_good > r_bad + 1.0, loss


@pytest.mark.slow
def test_cli_train_score_eval(tmp_path):
    import json

    from typer.testing import CliRunner

    from stepforge.cli import app

    run = CliRunner().invoke
    for name, seed in (("train", "1"), ("test", "2")):
        r = run(app, ["sample", "--data", "world", "--limit", "40", "--n", "4", "--out", str(tmp_path / name),
                      "--no-greedy", "--seed", seed])
        assert r.exit_code == 0, r.output
    r = run(app, ["label", "-i", str(tmp_path / "train/trajectories.jsonl"), "-o", str(tmp_path / "lab.jsonl"),
                  "--method", "truth"])
    assert r.exit_code == 0, r.output
    r = run(app, ["train-prm", "--train", str(tmp_path / "lab.jsonl"), "--out", str(tmp_path / "prm"),
                  "--epochs", "1"])
    assert r.exit_code == 0, r.output
    r = run(app, ["score", "--prm", str(tmp_path / "prm"), "-i", str(tmp_path / "test/trajectories.jsonl"),
                  "-o", str(tmp_path / "scored.jsonl")])
    assert r.exit_code == 0, r.output
    first = json.loads((tmp_path / "scored.jsonl").read_text().splitlines()[0])
    assert len(first["meta"]["prm_scores"]) == len(first["steps"])
    r = run(app, ["eval-prm", "--prm", str(tmp_path / "prm"), "--data", str(tmp_path / "test/trajectories.jsonl"),
                  "--out", str(tmp_path / "eval.json")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["first_error"]["always correct"]["f1"] == 0.0
    assert report["first_error"]["prm"]["f1"] > 0.5  # the world PRM recipe starts from the policy's likelihood
    assert "bon_min" in report["best_of_n"] and "majority" in report["best_of_n"]
    bad = run(app, ["score", "--prm", str(tmp_path), "-i", str(tmp_path / "lab.jsonl"), "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "not a stepforge PRM" in bad.output

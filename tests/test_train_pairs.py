import math

import pytest
import torch
from scripted import ScriptedArithPolicy
from transformers import LlamaConfig, LlamaForCausalLM

from stepforge.label.methods import problem_of
from stepforge.schema import StepPair, Trajectory
from stepforge.search.mcts import Node
from stepforge.train.dpo import _completion_mean_logp, orpo_loss, train_dpo
from stepforge.train.pairs import step_dpo_pairs, tree_pairs
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.problems import ArithProblem, first_error
from stepforge.worlds.arith.tokenizer import build_tokenizer

P = ArithProblem(start=10, ops=(("+", 1), ("+", 2), ("*", 2), ("-", 3)))


def wrong_at(k: int) -> Trajectory:
    steps = list(P.steps)
    head, value = steps[k].rsplit("=" if "=" in steps[k] else " ", 1)
    steps[k] = f"{head}{'=' if '=' in steps[k] else ' '}{int(value) + 1}"
    return Trajectory(id=f"w{k}", problem_id="p", question=P.question, steps=steps, correct=False, first_error=k)


def test_orpo_loss_by_hand():
    lw, ll = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)])
    # log odds: 0 and log(0.25); ratio term −log σ(log 4)
    expected = -math.log(0.5) - 0.1 * math.log(1 / (1 + 0.25))
    assert orpo_loss(lw, ll, 0.1).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("k", [1, 4])
def test_step_dpo_pairs_choose_a_verified_step(k):
    t = wrong_at(k)
    [pair] = step_dpo_pairs([t], [problem_of(t, ARITH, None)], ScriptedArithPolicy(good=2), ARITH, candidates=4, k=4)
    assert pair.prompt == ARITH.prefix_prompt(problem_of(t, ARITH, None), t.steps[:k])
    assert pair.rejected.strip() == t.steps[k] and pair.step_index == k
    prev = t.steps[:k]
    assert first_error(P.question, [*prev, pair.chosen.strip()]) is None  # the verified step is right
    final = ARITH.is_final_step(t.steps[k])
    assert pair.chosen.endswith("\n") != final and pair.rejected.endswith("\n") != final  # answers end the solution


def test_no_pair_without_a_verified_alternative():
    t = wrong_at(1)
    assert step_dpo_pairs([t], [problem_of(t, ARITH, None)], ScriptedArithPolicy(good=0), ARITH) == []


def test_a_rarely_successful_alternative_is_not_verified():
    t = wrong_at(1)
    problem = problem_of(t, ARITH, None)
    # one of four rollouts succeeds: MC = 0.25, below the default bar of 0.5
    assert step_dpo_pairs([t], [problem], ScriptedArithPolicy(good=1), ARITH, candidates=4, k=4) == []
    [pair] = step_dpo_pairs([t], [problem], ScriptedArithPolicy(good=1), ARITH, candidates=4, k=4, min_value=0.25)
    assert pair.meta["chosen_mc"] == 0.25


def test_tree_pairs_best_vs_worst_child():
    problem = P.to_problem("p")
    root = Node(())
    good = Node((P.steps[0],), parent=root, visits=2, value_sum=2.0)
    bad = Node(("a+1=12",), parent=root, visits=2, value_sum=0.0)
    root.children = [good, bad]
    [pair] = tree_pairs(problem, root, ARITH)
    assert pair.chosen == P.steps[0] + "\n" and pair.rejected == "a+1=12\n" and pair.step_index == 0
    assert tree_pairs(problem, Node(()), ARITH) == []


def test_trl_dpo_learns_the_preference_without_eos_after_a_step():
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0))
    pairs = [StepPair(prompt="5 a+1 b*2\na+1=6\n", chosen="b*2=12\n", rejected="b*2=13\n", problem_id="p",
                      step_index=1),
             StepPair(prompt="5 a+1\na+1=6\n", chosen="Answer: 6", rejected="Answer: 7", problem_id="q", step_index=1)]
    prompts = [p.prompt for p in pairs]

    def margin():
        with torch.no_grad():
            w = _completion_mean_logp(model, tok, prompts, ["b*2=12\n", "Answer: 6</s>"])
            lo = _completion_mean_logp(model, tok, prompts, ["b*2=13\n", "Answer: 7</s>"])
        return (w - lo).tolist()

    before = margin()
    train_dpo(model, tok, pairs, beta=0.5, lr=1e-2, max_steps=30, batch_size=2)
    after = margin()
    assert all(a > b + 0.5 for a, b in zip(after, before, strict=True))
    assert tok.eos_token == "</s>"  # the caller's tokenizer is untouched


def test_active_orpo_regenerates_its_own_rejected_answers(world_policy):
    import copy

    from stepforge.train.dpo import train_orpo_active
    from stepforge.worlds.arith import ARITH
    from stepforge.worlds.arith.problems import parse_question
    from stepforge.worlds.arith.task import generate

    problems = generate(12, seed=5, prefix="orpo", min_steps=6, max_steps=8)
    tok = world_policy.tokenizer

    def chosen(p):
        return parse_question(p.question).solution

    def chosen_logp(model):
        prompts = [p.question + "\n" for p in problems]
        return _completion_mean_logp(model, tok, prompts, [chosen(p) + tok.eos_token for p in problems]).mean().item()

    settings = dict(samples=2, steps=6, batch_size=4, lr=1e-5, max_new_tokens=96, seed=1)
    active = copy.deepcopy(world_policy.model)
    before = chosen_logp(active)
    history = train_orpo_active(active, tok, ARITH, problems, chosen, regenerate_every=3, **settings)
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert all(0 < h["rejected_problems"] <= 12 for h in history)
    assert chosen_logp(active) > before  # the chosen answers became likelier
    static = train_orpo_active(copy.deepcopy(world_policy.model), tok, ARITH, problems, chosen, regenerate_every=0,
                               **settings)
    assert len({h["rejected_problems"] for h in static}) == 1  # sampled once
    sft = copy.deepcopy(world_policy.model)
    control = train_orpo_active(sft, tok, ARITH, problems, chosen, lam=0.0, **settings)
    assert all(h["rejected_problems"] == 0 for h in control)  # the SFT control never samples
    assert chosen_logp(sft) > before


def test_cli_train_orpo_on_world_trajectories(tmp_path):
    from typer.testing import CliRunner

    from stepforge.cli import app

    run = CliRunner().invoke
    r = run(app, ["sample", "--data", "world", "--limit", "6", "--n", "2", "--out", str(tmp_path / "s"),
                  "--no-greedy", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = run(app, ["train-orpo", "-i", str(tmp_path / "s/trajectories.jsonl"), "--out", str(tmp_path / "orpo"),
                  "--steps", "2", "--batch-size", "2", "--samples", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "orpo" / "config.json").exists() and "chosen answers" in r.output
    r = run(app, ["train-orpo", "-i", str(tmp_path / "s/trajectories.jsonl"), "--out", str(tmp_path / "lora"),
                  "--steps", "2", "--batch-size", "2", "--samples", "2", "--device", "cpu", "--lora-rank", "4",
                  "--lr", "1e-2"])
    assert r.exit_code == 0, r.output
    assert not list((tmp_path / "lora").glob("adapter_*"))  # merged: a plain model
    (tmp_path / "none.jsonl").write_text("")
    r = run(app, ["train-orpo", "-i", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0


THINK_TEXT = "<|thinking|>\na*3=12\n<|/thinking|>\na*3=12\nAnswer: 12"


def _think_spans():
    from stepforge.worlds.arith.tokenizer import THINKING_TOKENS, build_tokenizer_with

    tok = build_tokenizer_with((), plain=THINKING_TOKENS)
    return tok, tok(THINK_TEXT, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]


def test_thinking_loss_masks_golden():
    import random

    from stepforge.train.dpo import thinking_loss_mask

    _, spans = _think_spans()
    assert [THINK_TEXT[a:b] for a, b in spans][:9] == ["<|thinking|>", "\n", "a", "*3", "=", "1", "2", "\n",
                                                       "<|/thinking|>"]
    answer_only = thinking_loss_mask(THINK_TEXT, spans, "answer_only", random.Random(0))
    assert answer_only == [False] * 9 + [True] * 11  # only what follows the closing tag
    dropout = thinking_loss_mask(THINK_TEXT, spans, "thinking_dropout", random.Random(3), rate=0.3)
    assert [i for i, keep in enumerate(dropout) if not keep] == [0, 5, 6, 8]  # inside the block only
    assert thinking_loss_mask(THINK_TEXT, spans, "all", random.Random(0)) == [True] * 20
    assert thinking_loss_mask("a+1=2\nAnswer: 2", [(0, 1)], "answer_only", random.Random(0)) == [True]
    with pytest.raises(ValueError, match="unknown mask mode"):
        thinking_loss_mask(THINK_TEXT, spans, "half", random.Random(0))


def test_masked_dpo_loss_by_hand_and_training_moves_only_counted_tokens(world_policy):
    import copy
    import math

    import torch

    from stepforge.train.dpo import masked_dpo_loss, train_dpo_masked

    # −log σ(0.1·(2 − (−1))) = log(1 + e^−0.3)
    assert masked_dpo_loss(torch.tensor([2.0]), torch.tensor([-1.0]), 0.1).item() == pytest.approx(
        math.log1p(math.exp(-0.3)), rel=1e-6)
    rows = [("40 a-6 b*2\n", "a-6=34\nb*2=68\nAnswer: 68</s>", "a-6=34\nb*2=66\nAnswer: 66</s>")]
    model = copy.deepcopy(world_policy.model)
    losses = train_dpo_masked(model, world_policy.tokenizer, rows, "all", beta=0.1, lr=1e-4, steps=4, batch_size=2)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # the reference is the start: ratio 0
    assert losses[-1] < losses[0]

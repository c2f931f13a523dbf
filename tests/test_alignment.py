"""One token-alignment module (#16.14) and RL on the ids it sampled (#16.15)."""

import pytest
import torch

from stepforge.alignment import generated_offsets, layout_steps, locate_steps, token_steps, tokens_at_chars
from stepforge.backends.base import Completion
from stepforge.schema import RecordError, StepPair, Trajectory


def test_layout_and_token_maps_by_hand():
    lay = layout_steps("Q", ["ab", "c"], "\n", "\n")
    assert lay.text == "Q\nab\nc\n" and lay.spans == [(2, 4), (5, 6)] and lay.ends == [4, 6]
    offsets = [(0, 0), (0, 1), (1, 2), (2, 4), (4, 5), (5, 6), (6, 7)]  # BOS, Q, \n, ab, \n, c, \n
    assert token_steps(offsets, lay.spans) == [-1, -1, -1, 0, -1, 1, -1]
    assert tokens_at_chars(offsets, lay.ends) == [4, 6]
    assert locate_steps("x a-1=5\ny", ["a-1=5", "y"]) == [(2, 7), (8, 9)]
    with pytest.raises(ValueError, match="not found"):
        locate_steps("abc", ["zz"])


def test_generated_offsets_follow_the_decoded_text(world_policy):
    tok = world_policy.tokenizer
    ids = [*tok("a-6=34\nAnswer: 34", add_special_tokens=False).input_ids, tok.eos_token_id]
    offsets = generated_offsets(tok, ids)
    text = tok.decode(ids, skip_special_tokens=True)
    assert "".join(text[a:b] for a, b in offsets) == text and offsets[-1][0] == offsets[-1][1]  # EOS: no text


def test_rl_trains_on_exactly_the_sampled_ids(world_policy):
    from stepforge.train.rl import _token_rows

    tok = world_policy.tokenizer
    prompt = tok("40 a-6 b*2\n").input_ids
    cut = tok("a-6=34\nb*2=6", add_special_tokens=False).input_ids  # stopped by the token limit
    ids, step_of = _token_rows(tok, prompt, Completion("a-6=34\nb*2=6", len(cut), "length", token_ids=cut),
                               ["a-6=34", "b*2=6"])
    assert ids == [*prompt, *cut] and tok.eos_token_id not in ids[len(prompt):]  # no EOS after a cut-off
    assert len(step_of) == len(cut) and step_of[cut.index(tok.convert_tokens_to_ids("\n"))] == -1
    ended = [*cut, tok.eos_token_id]
    _, step_of = _token_rows(tok, prompt, Completion("a-6=34\nb*2=6", len(ended), "stop", token_ids=ended),
                             ["a-6=34", "b*2=6"])
    assert step_of[-1] == 1  # the EOS that was sampled belongs to the last step


def test_pairwise_prm_training_takes_steps_from_the_pair_not_the_prompt():
    from stepforge.prm.model import PRMConfig, ProcessRewardModel
    from stepforge.prm.train import _PairDataset
    from stepforge.tasks import get_world

    prm = ProcessRewardModel.from_backbone(get_world().policy_dir(None), PRMConfig(), device="cpu")
    fewshot = "1 a+1\na+1=2\nAnswer: 2\n\n5 a+1 b*2\na+1=6\n"  # a prompt a split would misread
    pair = StepPair(prompt=fewshot, chosen="b*2=12\n", rejected="b*2=13\n", problem_id="p", step_index=1,
                    meta={"question": "5 a+1 b*2", "prefix": ["a+1=6"]})
    chosen, _ = _PairDataset(prm, [pair])[0]
    want = Trajectory(id="x", problem_id="p", question="5 a+1 b*2", steps=["a+1=6", "b*2=12"])
    assert chosen.input_ids == prm.encode(want).input_ids

    with pytest.raises(RecordError, match=r"needs meta\.question and meta\.prefix"):
        _PairDataset(prm, [pair.model_copy(update={"meta": {}})])


def test_one_credit_spreader():
    from stepforge.train.credit import step_returns_to_tokens, step_values_to_tokens

    v = torch.tensor([0.5, -1.0])
    assert step_values_to_tokens(v, [-1, 0, 0, -1, 1]).tolist() == [0.0, 0.5, 0.5, 0.0, -1.0]
    assert step_returns_to_tokens(v, [(1, 3), (4, 5)], 5).tolist() == [0.0, 0.5, 0.5, 0.0, -1.0]

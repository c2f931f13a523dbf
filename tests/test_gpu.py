"""GPU checks (issue #10): run with ``pytest -m gpu`` on a CUDA machine; skipped without CUDA.

Every test builds its data from the world (nothing from ../shared), so the folder can travel
to a GPU machine alone: see the README's "GPU" section for the command.
"""

import copy

import pytest
import torch

from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.problems import generate_problems

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")]
PROMPTS = ["40 a-6 b*2 c-4 d+3\n", "12 a+7 b*3\n", "5 a*4 b-2 c+9 d*2\n"]


@pytest.fixture(scope="module")
def gpu_policy():
    from stepforge.backends import make_policy

    return make_policy("world", device="cuda", dtype="float32")


def test_prefix_reuse_on_gpu_gives_the_outputs_of_re_encoding(gpu_policy):
    from stepforge.backends.transformers_backend import TransformersPolicy

    naive = TransformersPolicy(gpu_policy.model, gpu_policy.tokenizer, reuse_prefix=False)
    a = gpu_policy.generate(PROMPTS, n=8, max_new_tokens=40, seed=3)
    b = naive.generate(PROMPTS, n=8, max_new_tokens=40, seed=3)
    assert gpu_policy.model.device.type == "cuda" and a.texts() == b.texts()


def test_bf16_generation_runs_and_stops_at_steps():
    from stepforge.backends import make_policy

    policy = make_policy("world", device="cuda", dtype="auto")
    res = policy.generate(PROMPTS, n=4, stop=["\n"], max_new_tokens=20, seed=0)
    assert all(c.text and "\n" not in c.text for row in res.completions for c in row)


def test_prm_scores_on_cpu_and_gpu_agree():
    from stepforge.backends import make_policy
    from stepforge.prm.model import ProcessRewardModel
    from stepforge.sample import sample_trajectories
    from stepforge.tasks import get_world

    trajs = [t for b in sample_trajectories(make_policy("world"), generate_problems(16, seed=1), ARITH, n=2,
                                            max_new_tokens=80) for t in b.trajectories if t.steps]
    cpu = ProcessRewardModel.from_pretrained(get_world().prm_dir, device="cpu").score(trajs)
    fp32 = ProcessRewardModel.from_pretrained(get_world().prm_dir, device="cuda", dtype="float32").score(trajs)
    bf16 = ProcessRewardModel.from_pretrained(get_world().prm_dir, device="cuda", dtype="bfloat16").score(trajs)
    flat = lambda s: [x for row in s for x in row]  # noqa: E731
    assert max(abs(a - b) for a, b in zip(flat(cpu), flat(fp32), strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(flat(cpu), flat(bf16), strict=True)) < 0.05


def test_train_prm_train_dpo_and_rl_on_cuda(tmp_path, gpu_policy):
    from stepforge.prm.model import PRMConfig, ProcessRewardModel
    from stepforge.prm.train import PRMTrainConfig, train_prm
    from stepforge.sample import sample_trajectories
    from stepforge.schema import StepPair
    from stepforge.tasks import get_world
    from stepforge.train.dpo import train_dpo
    from stepforge.train.rl import RLConfig, train_rl

    trajs = [t for b in sample_trajectories(gpu_policy, generate_problems(16, seed=2), ARITH, n=2, max_new_tokens=80)
             for t in b.trajectories if t.steps]
    prm = ProcessRewardModel.from_backbone(get_world().policy_dir(None), PRMConfig(readout="prefix_min"),
                                           device="cuda", dtype="float32")
    history = train_prm(prm, trajs, PRMTrainConfig(max_steps=5, batch_size=8))
    assert prm.device.type == "cuda" and any("loss" in h for h in history)

    model = copy.deepcopy(gpu_policy.model)
    pairs = [StepPair(prompt="5 a+1 b*2\na+1=6\n", chosen="b*2=12\n", rejected="b*2=13\n", problem_id="p",
                      step_index=1)] * 8
    train_dpo(model, gpu_policy.tokenizer, pairs, max_steps=2, batch_size=4)
    assert next(model.parameters()).device.type == "cuda"

    cfg = RLConfig(credit="min", steps=2, problems_per_step=4, samples_per_problem=4, max_new_tokens=64,
                   min_steps=2, max_steps=3)
    rows = train_rl(copy.deepcopy(gpu_policy.model), gpu_policy.tokenizer, tmp_path / "rl", cfg,
                    ProcessRewardModel.from_pretrained(get_world().prm_dir, device="cuda"))
    assert len(rows) == 2 and all(0.0 <= r["accuracy"] <= 1.0 for r in rows)

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from scripted import ScriptedArithPolicy, flaky_server

from stepforge.backends.openai_backend import OpenAIPolicy
from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.label.judge import label_judge, parse_judgement
from stepforge.label.methods import label_binary, label_mc, label_truth, problem_of
from stepforge.label.quality import consensus, label_quality
from stepforge.label.rollouts import Query, RolloutEstimator
from stepforge.label.runner import LabelConfig, label_file
from stepforge.schema import Trajectory, read_jsonl, truth_labels, write_jsonl
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.problems import ArithProblem

P8 = ArithProblem(start=10, ops=(("+", 1), ("+", 2), ("*", 2), ("-", 3), ("+", 4), ("-", 5), ("+", 6), ("*", 2)))


def trajectory(problem: ArithProblem, wrong_at: int | None, tid: str = "t") -> Trajectory:
    """The exact solution with step ``wrong_at`` off by one, later steps consistent with it."""
    steps, v = [], problem.start
    for i, (op, k) in enumerate(problem.ops):
        v = v + (op == "+") * k - (op == "-") * k if op in "+-" else v * k
        if i == wrong_at:
            v += 1
        steps.append(f"{'abcdefgh'[i]}{op}{k}={v}")
    steps.append(f"Answer: {v}")
    return Trajectory(id=tid, problem_id="p8", question=problem.question, steps=steps, final_answer=str(v),
                      correct=wrong_at is None)


def problem_list(trajs):
    return [problem_of(t, ARITH, None) for t in trajs]


def test_mc_soft_and_hard_labels_by_hand():
    t = trajectory(P8, wrong_at=5)
    policy = ScriptedArithPolicy(good=3)  # 3 of 4 rollouts from a right prefix end right
    est = RolloutEstimator(policy, ARITH, k=4)
    [soft] = label_mc([t], problem_list([t]), est)
    assert soft.step_labels == [0.75] * 5 + [0.0] * 4  # the answer step is checked, not rolled out
    assert soft.first_error == 5 and soft.label_source == "mc"
    assert soft.cost.rollouts == 4 * 8 and policy.calls == 1  # every prefix in one backend call
    [hard] = label_mc([t], problem_list([t]), RolloutEstimator(ScriptedArithPolicy(1), ARITH, k=4), hard=True)
    assert hard.step_labels == [1.0] * 5 + [0.0] * 4


def test_mc_early_stop_spends_only_up_to_the_first_zero():
    t = trajectory(P8, wrong_at=2)
    policy = ScriptedArithPolicy(good=2)
    [lab] = label_mc([t], problem_list([t]), RolloutEstimator(policy, ARITH, k=4), early_stop=True)
    assert lab.step_labels == [0.5, 0.5, 0.0] + [0.0] * 6
    assert lab.cost.rollouts == 3 * 4 and policy.calls == 3  # one wave per depth


def test_binary_search_probes_by_hand():
    t = trajectory(P8, wrong_at=5)  # T = 9 steps with the answer; first error at 0-based 5
    policy = ScriptedArithPolicy(good=1)
    [lab] = label_binary([t], problem_list([t]), RolloutEstimator(policy, ARITH, k=4))
    # lo=1,hi=9: m=5 (steps 0-4 right, +) -> lo=6; m=7 (-) -> hi=7; m=6 (-) -> hi=6: first error 6 (1-based)
    assert lab.meta["mc_probes"] == {"5": 0.25, "6": 0.0, "7": 0.0}
    assert lab.first_error == 5 and lab.step_labels == truth_labels(9, 5)
    assert lab.cost.rollouts == 3 * 4 and lab.label_source == "binary"
    right = trajectory(P8, wrong_at=None, tid="ok")
    [ok] = label_binary([right], problem_list([right]), RolloutEstimator(policy, ARITH, k=4))
    assert ok.first_error is None and ok.cost.rollouts == 0


@pytest.mark.parametrize("wrong_at", range(8))
def test_binary_search_finds_every_first_error(wrong_at):
    t = trajectory(P8, wrong_at=wrong_at)
    [lab] = label_binary([t], problem_list([t]), RolloutEstimator(ScriptedArithPolicy(2), ARITH, k=3))
    assert lab.first_error == wrong_at
    assert lab.cost.rollouts <= 3 * 4  # ceil(log2 9) probes of k rollouts


def test_omegaprm_tree_reuses_rollouts_across_trajectories():
    trajs = [trajectory(P8, wrong_at=w, tid=f"t{w}") for w in (3, 4, 5, 6)] + [trajectory(P8, None, "ok")]
    plain = label_binary(trajs, problem_list(trajs), RolloutEstimator(ScriptedArithPolicy(2), ARITH, k=4))
    policy = ScriptedArithPolicy(2)
    tree = label_binary(trajs, problem_list(trajs), RolloutEstimator(policy, ARITH, k=4, reuse=True))
    assert [t.first_error for t in tree] == [t.first_error for t in plain] == [3, 4, 5, 6, None]
    assert tree[0].label_source == "omegaprm"
    # the correct sample proves its prefixes, and shared prefixes are probed once
    assert sum(t.cost.rollouts for t in tree) < sum(t.cost.rollouts for t in plain)


def test_estimator_dedups_and_knows_terminal_prefixes():
    t = trajectory(P8, wrong_at=None)
    problem = problem_of(t, ARITH, None)
    policy = ScriptedArithPolicy(good=4)
    est = RolloutEstimator(policy, ARITH, k=4)
    q = Query(problem, tuple(t.steps[:3]))
    a, b, done = est.estimate([q, q, Query(problem, tuple(t.steps))])
    assert (a.correct, a.total, a.rollouts) == (4, 4, 4) and (b.correct, b.rollouts) == (4, 0)
    assert (done.correct, done.total, done.rollouts) == (1, 1, 0) and policy.rollouts == 4


def test_truth_labels_from_the_exact_checker():
    trajs = [trajectory(P8, wrong_at=2), trajectory(P8, None, "ok")]
    lab = label_truth(trajs, problem_list(trajs), ARITH)
    assert lab[0].first_error == 2 and lab[0].step_labels == truth_labels(9, 2)
    assert lab[1].first_error is None and lab[1].label_source == "truth"


@pytest.mark.parametrize(("reply", "verdict"), [
    ("The earliest wrong step is \\boxed{3}.", 3), ("\\boxed{-1}", None), ("Step 2 is wrong", 2), ("4", 4),
    ("All steps are correct.", None), ("I am not sure.", "unparseable"), ("\\boxed{42}", "unparseable"),
])
def test_parse_judgement(reply, verdict):
    assert parse_judgement(reply, 9) == verdict


class JudgeByChecker:
    """Replies like an LLM judge, but from the world's exact checker; garbage for some items."""

    name = "checker-judge"

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=64, temperature=0.0, seed=None):
        from stepforge.backends.base import Completion, GenerationResult
        from stepforge.worlds.arith.problems import first_error

        rows = []
        for prompt in prompts:
            question = prompt.split("Problem: ")[1].split("\n")[0]
            steps = [line.split(": ", 1)[1] for line in prompt.splitlines() if line.startswith("Step ")]
            fe = first_error(question, steps)
            text = "Hmm, hard to say." if question.startswith("13 ") else f"\\boxed{{{-1 if fe is None else fe}}}"
            rows.append([Completion(text, 5, "stop")])
        return GenerationResult(rows)


def test_judge_through_a_real_http_server_with_faults():
    srv, attempts = flaky_server(JudgeByChecker(), failures=2, status=503)  # two 503s, then answers
    try:
        odd = ArithProblem(start=13, ops=P8.ops)
        trajs = [trajectory(P8, 4, "a"), trajectory(P8, None, "b"), trajectory(odd, 1, "c")]
        labels = label_judge(trajs, OpenAIPolicy(srv.base_url, "stepforge"))
        assert [t.first_error for t in labels[:2]] == [4, None]
        assert labels[0].step_labels == truth_labels(9, 4) and labels[0].label_source == "judge"
        assert labels[2].meta["judge_unparseable"] and labels[2].step_labels == [None] * 9
        assert attempts["n"] == 5  # seeded: one prompt per request (3), two of them retried after a 503
    finally:
        srv.shutdown()
        srv.server_close()


def test_consensus_and_quality_by_hand():
    truth = [trajectory(P8, w, f"t{i}") for i, w in enumerate([2, 5, None])]
    truth = label_truth(truth, problem_list(truth), ARITH)
    other = [t.model_copy(update={"first_error": fe, "step_labels": truth_labels(9, fe), "label_source": "judge"})
             for t, fe in zip(truth, [2, 4, None], strict=True)]
    kept = consensus(truth, other)
    assert [t.id for t in kept.kept] == ["t0", "t2"] and kept.report["kept_share"] == pytest.approx(2 / 3, abs=1e-4)
    q = label_quality(other, truth)
    assert q["first_error_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    # t1: judge says bad from 4, truth from 5 -> one false "bad"; everything else agrees
    assert q["bad_step_recall"] == 1.0 and q["bad_step_precision"] == pytest.approx(11 / 12, abs=1e-4)
    assert q["step_agreement"] == pytest.approx(26 / 27, abs=1e-4)


def test_label_file_needs_problems_for_text_tasks(tmp_path):
    from stepforge.tasks import GSM8K

    src = tmp_path / "in.jsonl"
    write_jsonl(src, [Trajectory(id="x", problem_id="gsm8k-test-999999", question="q", steps=["a"])])
    with pytest.raises(ValueError, match="problem 'gsm8k-test-999999' not found; pass the problems file"):
        label_file(src, tmp_path / "out.jsonl", GSM8K, LabelConfig(method="mc"), ScriptedArithPolicy(1))
    with pytest.raises(ValueError, match="unknown label method"):
        label_file(src, tmp_path / "out.jsonl", GSM8K, LabelConfig(method="magic"))  # type: ignore[arg-type]


def test_gsm8k_model_solutions_labeled_by_truth_and_rollouts(tmp_path, world_policy):
    from stepforge.loaders import load_gsm8k, load_gsm8k_model_solutions
    from stepforge.tasks import GSM8K

    trajs = load_gsm8k_model_solutions(limit=2)  # the first 2 questions, every model
    assert any(not t.correct for t in trajs) and all(t.steps for t in trajs)
    src = tmp_path / "in.jsonl"
    write_jsonl(src, trajs)
    problems = {p.id: p for p in load_gsm8k("test", limit=2)}
    label_file(src, tmp_path / "truth.jsonl", GSM8K, LabelConfig(method="truth"), problems=problems)
    # the world Llama (RoPE) runs past its configured 512 positions: enough to test the pipeline
    roomy = TransformersPolicy(world_policy.model, world_policy.tokenizer, max_context=4096)
    label_file(src, tmp_path / "mc.jsonl", GSM8K, LabelConfig(method="mc", k=2, max_new_tokens=8), roomy, problems)
    truth, mc = read_jsonl(tmp_path / "truth.jsonl", Trajectory), read_jsonl(tmp_path / "mc.jsonl", Trajectory)
    assert len(truth) == len(mc) == len(trajs)
    assert all(len(t.step_labels) == len(t.steps) for t in mc) and all(t.cost.rollouts > 0 for t in mc)


def _label_cmd(src, out):
    return [sys.executable, "-m", "stepforge.cli", "label", "-i", str(src), "-o", str(out), "--method", "mc",
            "--k", "4", "--batch-size", "4", "--seed", "3"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, world_policy):
    from stepforge.sample import sample_trajectories
    from stepforge.worlds.arith.problems import generate_problems

    problems = generate_problems(20, seed=11)
    trajs = [t for b in sample_trajectories(world_policy, problems, ARITH, n=4, max_new_tokens=80)
             for t in b.trajectories]
    src = tmp_path / "in.jsonl"
    write_jsonl(src, trajs)
    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_label_cmd(src, whole), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_label_cmd(src, part), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if part.exists() and part.read_text().count("\n") >= 8:  # at least two batches on disk
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = part.read_text().count("\n")
    assert 8 <= killed_at < len(trajs), "the run must be killed mid-way for this test to mean anything"
    subprocess.run(_label_cmd(src, part), check=True, env=env, capture_output=True)
    assert part.read_text() == whole.read_text()
    ids = [json.loads(line)["id"] for line in part.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == len(trajs)


def test_qu_score_by_hand():
    from stepforge.label.omegaprm import OmegaConfig, qu_score

    cfg = OmegaConfig()
    # Q = 0.5^(1-0.5) * 0.9^(50/500); U = 0.125 * sqrt(16) / (1 + 1)
    assert qu_score(0.5, 50, 1, 16, cfg) == pytest.approx(0.5 ** 0.5 * 0.9 ** 0.1 + 0.25)
    assert qu_score(0.9, 10, 0, 4, cfg) > qu_score(0.2, 10, 0, 4, cfg)  # likelier-good states first
    assert qu_score(0.5, 10, 0, 4, cfg) > qu_score(0.5, 400, 0, 4, cfg)  # shorter wrong rollouts first
    assert qu_score(0.5, 10, 0, 4, cfg) > qu_score(0.5, 10, 3, 4, cfg)  # less-visited states first


def test_omegaprm_tree_search_labels_new_rollouts_exactly():
    from stepforge.label.omegaprm import OmegaConfig, search_tree
    from stepforge.worlds.arith.problems import first_error

    t = trajectory(P8, wrong_at=6)
    est = RolloutEstimator(ScriptedArithPolicy(good=2), ARITH, k=4, reuse=True)
    [base] = label_binary([t], problem_list([t]), est)
    extra = search_tree(est, OmegaConfig(searches=5, parallel=2), id_prefix="omega0", existing=[base])
    assert 0 < len(extra) <= 5 and len({x.id for x in extra}) == len(extra)
    for x in extra:  # scripted wrong rollouts err in their last operation; the search must find it
        assert x.first_error == first_error(P8.question, x.steps) == len(P8.ops) - 1
        assert x.first_error >= x.meta["omegaprm_state_steps"] and x.label_source == "omegaprm"
        assert x.id.startswith("p8/omega0-")


def test_balance_keeps_extras_that_narrow_the_gap():
    from stepforge.label.omegaprm import balance

    bad_heavy = [Trajectory(id="a", problem_id="p", question="q", steps=["s"] * 4, step_labels=[0.0] * 4)]
    good_extra = Trajectory(id="b", problem_id="p", question="q", steps=["s"] * 3, step_labels=[1.0, 1.0, 0.0])
    bad_extra = Trajectory(id="c", problem_id="p", question="q", steps=["s"] * 2, step_labels=[0.0, 0.0])
    assert [t.id for t in balance(bad_heavy, [bad_extra, good_extra])] == ["b"]


@pytest.mark.slow
def test_ray_fan_out_writes_the_serial_file(tmp_path, world_policy):
    import functools

    pytest.importorskip("ray")
    from stepforge.backends import make_policy
    from stepforge.sample import sample_trajectories
    from stepforge.worlds.arith.problems import generate_problems

    trajs = [t for b in sample_trajectories(world_policy, generate_problems(6, seed=2), ARITH, n=4,
                                            max_new_tokens=80) for t in b.trajectories]
    src = tmp_path / "in.jsonl"
    write_jsonl(src, trajs)
    cfg = LabelConfig(method="omegaprm", k=4, seed=5, searches=2)
    label_file(src, tmp_path / "serial.jsonl", ARITH, cfg, world_policy, batch_size=4)
    stats = label_file(src, tmp_path / "ray.jsonl", ARITH, cfg, batch_size=4, workers=2,
                       policy_factory=functools.partial(make_policy, "world"))
    assert stats.batches_run == 6
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "serial.jsonl").read_text()


def test_garbage_judge_reply_fails_with_a_clear_error():
    from stepforge.backends import BackendError

    srv, _ = flaky_server(JudgeByChecker(), failures=100, body=b"<html>not json</html>")
    try:
        with pytest.raises(BackendError, match=r"127\.0\.0\.1.*not JSON"):
            label_judge([trajectory(P8, 1)], OpenAIPolicy(srv.base_url, "stepforge", max_retries=0))
    finally:
        srv.shutdown()
        srv.server_close()


def test_cli_labels_gsm8k_format_data(tmp_path):
    from typer.testing import CliRunner

    from stepforge.cli import app
    from stepforge.loaders import load_gsm8k_model_solutions

    src = tmp_path / "g.jsonl"
    write_jsonl(src, load_gsm8k_model_solutions(limit=14))  # question 13 has a slip
    out = tmp_path / "truth.jsonl"
    result = CliRunner().invoke(app, ["label", "-i", str(src), "-o", str(out), "--method", "truth", "--task", "gsm8k",
                                      "--problems", "gsm8k:test"])
    assert result.exit_code == 0, result.output
    labeled = read_jsonl(out, Trajectory)
    assert len(labeled) == len(read_jsonl(src, Trajectory)) and all(t.label_source == "truth" for t in labeled)
    assert any(t.first_error is not None for t in labeled)  # the old models' arithmetic slips are found
    missing = CliRunner().invoke(app, ["label", "-i", str(src), "-o", str(tmp_path / "x.jsonl"), "--method", "mc",
                                       "--task", "gsm8k"])
    assert missing.exit_code == 2 and "pass the problems file" in missing.output

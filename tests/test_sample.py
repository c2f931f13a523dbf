import pytest

from stepforge.backends.base import Completion
from stepforge.eval.sampling import sampling_report, step_error_rate
from stepforge.sample import sample_to_file, to_trajectory
from stepforge.schema import Problem, Trajectory, read_jsonl, truth_labels
from stepforge.search.vote import majority_vote
from stepforge.tasks import GSM8K
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.problems import generate_problems

PROBLEM = Problem(id="p", question="40 a-6 b*2", answer="68", meta={"ops": [["-", 6], ["*", 2]]})


def test_to_trajectory_correct_wrong_unparseable():
    ok = to_trajectory(PROBLEM, Completion("a-6=34\nb*2=68\nAnswer: 68", 12, "stop"), ARITH, "p/0")
    assert ok.correct and ok.first_error is None and ok.step_labels == [1.0, 1.0, 1.0]
    bad = to_trajectory(PROBLEM, Completion("a-6=34\nb*2=66\nAnswer: 66", 12, "stop"), ARITH, "p/1")
    assert not bad.correct and bad.first_error == 1 and bad.step_labels == [1.0, 0.0, 0.0]
    assert bad.label_source == "truth" and bad.cost.generated_tokens == 12
    junk = to_trajectory(PROBLEM, Completion("a-6=34\nb*", 5, "length"), ARITH, "p/2")
    assert junk.final_answer is None and junk.correct is False and junk.meta["unparseable"]
    assert junk.meta["finish_reason"] == "length"


def test_gsm8k_task_reads_text_solutions():
    p = Problem(id="g", question="?", answer="18")
    t = to_trajectory(p, Completion("16 - 3 - 4 = 9 eggs.\n9 * 2 = 19 dollars.\nThe answer is 18.", 20, "stop"),
                      GSM8K, "g/0")
    assert t.correct and t.final_answer == "18" and t.first_error == 1  # arithmetic slip in step 1
    assert t.label_source is None  # arithmetic checks are a lower bound, not ground truth labels


def test_truth_labels_and_step_error_rate():
    assert truth_labels(4, 2) == [1.0, 1.0, 0.0, 0.0]
    trajs = [Trajectory(id=str(i), problem_id="p", question="q", steps=["s"] * 5, label_source="truth",
                        first_error=fe, step_labels=truth_labels(5, fe)) for i, fe in enumerate([None, 0, 3])]
    # steps at risk: 5 + 1 + 4 = 10, errors 2
    assert step_error_rate(trajs) == pytest.approx(0.2)


def test_majority_vote():
    assert majority_vote(["3", "4", "4", None, "3", "4"]) == "4"
    assert majority_vote(["3", "4"]) == "3"  # ties go to the first seen
    assert majority_vote([None, None]) is None
    assert majority_vote(["0.5", "1/2", "2"], same=lambda a, b: eval(a) == eval(b)) == "0.5"


def test_sampling_report_by_hand():
    problems = [Problem(id="a", question="q", answer="1", meta={"ops": [1, 2]}),
                Problem(id="b", question="q", answer="2", meta={"ops": [1, 2, 3]})]

    def t(pid, ans, ok):
        return Trajectory(id=f"{pid}{ans}{ok}", problem_id=pid, question="q", steps=["x"], final_answer=ans,
                          correct=ok)

    sampled = [t("a", "1", True), t("a", "5", False), t("a", "5", False), t("b", "2", True), t("b", "7", False)]
    report = sampling_report(problems, sampled, ARITH, greedy=[t("a", "1", True), t("b", "7", False)])
    assert report["sample_accuracy"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert report["majority_accuracy"] == 0.5  # a votes 5 (wrong), b ties -> 2 (first seen, right)
    assert report["oracle_accuracy"] == 1.0 and report["greedy_accuracy"] == 0.5
    assert set(report["by_steps"]) == {"2", "3"}


class Interrupt(Exception):
    pass


def test_sample_to_file_resumes_to_the_same_file(world_policy, tmp_path):
    problems = generate_problems(10, seed=5)
    kwargs = dict(n=3, batch_problems=3, max_new_tokens=80, seed=1)
    whole = tmp_path / "whole.jsonl"
    sample_to_file(world_policy, problems, ARITH, whole, **kwargs)

    part = tmp_path / "part.jsonl"
    calls = {"n": 0}

    def stop_after_two(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        sample_to_file(world_policy, problems, ARITH, part, on_batch=stop_after_two, **kwargs)
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:30])  # lose a record and tear the last line
    stats = sample_to_file(world_policy, problems, ARITH, part, **kwargs)
    assert stats.batches_skipped == 1 and stats.batches_run == 3
    assert part.read_text() == whole.read_text()
    ids = [t.id for t in read_jsonl(part, Trajectory)]
    assert len(ids) == len(set(ids)) == 30

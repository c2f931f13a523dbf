import pytest
from scripted import CheckerScorer, ScriptedArithPolicy

from stepforge.schema import Problem, Trajectory, read_jsonl
from stepforge.search.base import SearchCost, score_unique, select, whole_sample_search
from stepforge.search.beam import beam_search, dvts
from stepforge.search.mcts import mcts
from stepforge.search.runner import SearchRecord, run_search, summarize
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.problems import ArithConfig, ArithProblem, generate_problems

P = ArithProblem(start=10, ops=(("+", 1), ("+", 2), ("*", 2), ("-", 3)))
PROBLEMS = [P.to_problem("p0"), ArithProblem(start=7, ops=(("+", 3), ("*", 2), ("-", 1))).to_problem("p1")]


def samples(answers, correct):
    return [Trajectory(id=str(i), problem_id="p", question="q", steps=["s"], final_answer=a, correct=c)
            for i, (a, c) in enumerate(zip(answers, correct, strict=True))]


def test_selection_rules_by_hand():
    p = Problem(id="p", question="q", answer="1")
    s = samples(["2", "1", "2"], [False, True, False])
    scores = [[0.9, 0.2], [0.8, 0.7], [0.6, 0.4]]
    assert select(p, s, scores, ARITH, "majority") == ("2", None)
    assert select(p, s, scores, ARITH, "bon", "min") == ("1", 1)  # mins 0.2, 0.7, 0.4
    assert select(p, s, scores, ARITH, "bon", "mean") == ("1", 1)  # means .55 .75 .5
    assert select(p, s, scores, ARITH, "weighted", "min") == ("1", None)  # "2": .2 + .4 = .6 < "1": .7
    assert select(p, s, scores, ARITH, "oracle") == ("1", 1)
    with pytest.raises(ValueError, match="unknown selection rule"):
        select(p, s, scores, ARITH, "vibes")


def test_score_unique_scores_each_distinct_prefix_once():
    scorer = CheckerScorer()
    t = Trajectory(id="a", problem_id="p0", question=P.question, steps=P.steps[:2])
    cost = SearchCost()
    out = score_unique(scorer, [t, t.model_copy(update={"id": "b"}), t], cost)
    assert out == [[1.0, 1.0]] * 3 and cost.prm_sequences == 1


def test_beam_search_beats_majority_with_a_perfect_prm():
    policy = ScriptedArithPolicy(good=1)  # 1 of every n samples from a right prefix ends right
    scorer = CheckerScorer()
    maj = whole_sample_search(PROBLEMS, policy, None, ARITH, 4, rule="majority")
    assert not any(r.correct for r in maj)
    policy.calls = 0
    beam = beam_search(PROBLEMS, policy, scorer, ARITH, 4, width=2)
    assert all(r.correct for r in beam)
    depth = beam[0].trace["depth"]
    # batched: one backend call and one PRM call per depth, for both problems together
    assert policy.calls == depth and scorer.calls == depth
    assert beam[0].cost.generated_tokens > 0 and beam[0].cost.prm_sequences > 0
    assert beam[0].steps == P.steps


def test_dvts_and_mcts_find_the_answer_with_a_perfect_prm():
    for result in (dvts(PROBLEMS, ScriptedArithPolicy(good=1), CheckerScorer(), ARITH, 4, width=2),
                   mcts(PROBLEMS, ScriptedArithPolicy(good=1), CheckerScorer(), ARITH, 12, children=2)):
        assert all(r.correct for r in result), [r.trace for r in result]


def test_budget_must_be_a_multiple_of_the_width():
    with pytest.raises(ValueError, match="multiple of the width"):
        beam_search(PROBLEMS, ScriptedArithPolicy(1), CheckerScorer(), ARITH, 6, width=4)


class Interrupt(Exception):
    pass


def test_search_runner_resumes_and_summarizes(tmp_path):
    problems = generate_problems(6, ArithConfig(min_steps=2, max_steps=3), seed=4)
    args = (problems, ScriptedArithPolicy(good=2), CheckerScorer(), ARITH, ["majority", "bon", "beam"], [2, 4])
    run_search(*args, tmp_path / "whole.jsonl", batch_problems=4)
    calls = {"n": 0}

    def stop(batch, records):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_search(*args, tmp_path / "part.jsonl", batch_problems=4, on_batch=stop)
    stats = run_search(*args, tmp_path / "part.jsonl", batch_problems=4)
    assert stats.batches_skipped == 3 and stats.batches_run == 9
    whole = read_jsonl(tmp_path / "whole.jsonl", SearchRecord)
    part = read_jsonl(tmp_path / "part.jsonl", SearchRecord)
    assert [(r.id, r.answer) for r in part] == [(r.id, r.answer) for r in whole]
    rows = summarize(part, resamples=100)
    assert {(r["method"], r["n"]) for r in rows} == {(m, n) for m in ["majority", "bon", "beam"] for n in [2, 4]}
    assert all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] for r in rows)
    with pytest.raises(ValueError, match="need a PRM"):
        run_search(problems, ScriptedArithPolicy(1), None, ARITH, ["beam"], [2], tmp_path / "x.jsonl")


@pytest.mark.slow
def test_cli_search_world_and_gsm8k(tmp_path):
    from typer.testing import CliRunner

    from stepforge.cli import app

    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["search", "--limit", "8", "--methods", "majority,bon,beam,dvts,mcts",
                                 "--budgets", "1,4", "--out", str(out), "--min-steps", "3", "--max-steps", "4"])
    assert r.exit_code == 0, r.output
    assert (out / "accuracy_vs_compute.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_jsonl(out / "results.jsonl", SearchRecord)) == 5 * 2 * 8
    again = CliRunner().invoke(app, ["search", "--limit", "8", "--methods", "majority,bon,beam,dvts,mcts",
                                     "--budgets", "1,4", "--out", str(out), "--min-steps", "3", "--max-steps", "4"])
    assert "batches were already done" in again.output
    # GSM8K-format data through the same path (the tiny world policy and PRM are hopeless at it)
    from stepforge.worlds.arith.policy import SHIPPED_PRM

    g = CliRunner().invoke(app, ["search", "--data", "gsm8k:test", "--limit", "2", "--methods", "majority,bon",
                                 "--budgets", "2", "--prm", str(SHIPPED_PRM), "--out", str(tmp_path / "g")])
    assert g.exit_code == 0, g.output

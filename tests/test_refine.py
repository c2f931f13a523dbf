"""Recursive refinement (PRefLexOR's loop): critics, revision from the flagged line, integration."""

import random

import pytest
from scripted import CheckerScorer, FixingPolicy

from stepforge.backends.base import Completion, GenerationCost, GenerationResult
from stepforge.schema import Problem, Trajectory, read_jsonl
from stepforge.search.refine import (
    JudgeCritic,
    NoCritic,
    OracleCritic,
    PRMCritic,
    RefineRecord,
    RefineResult,
    refine,
    refine_to_file,
)
from stepforge.tasks import get_world, prompt_text

WORLD = get_world("arith")
TASK = WORLD.task
PROBLEMS = [Problem(id=f"p{i}", question=q, answer=a) for i, (q, a) in
            enumerate([("40 a-6 b*2 c-4", "64"), ("12 a+3 b*3 c+1", "46")])]


def test_a_round_with_the_oracle_critic_fixes_a_scripted_wrong_line():
    policy = FixingPolicy()
    res = refine(policy, PROBLEMS, TASK, OracleCritic(TASK), rounds=2)
    assert [bool(t.correct) for t in res.rounds[0]] == [False, False]  # drafts: line 2 off by one
    assert [bool(t.correct) for t in res.rounds[1]] == [True, True]
    assert res.rounds[1][0].steps == ["a-6=34", "b*2=68", "c-4=64", "Answer: 64"]
    revisions = policy.prompts[2:4]  # round 1 kept line 1 only: question + one step
    assert revisions == ["40 a-6 b*2 c-4\na-6=34\n", "12 a+3 b*3 c+1\na+3=15\n"]
    assert res.revised == [0, 2, 0] and len(policy.prompts) == 4  # round 2 accepted both
    assert res.tokens[1] - res.tokens[0] == 14 and res.tokens[2] == res.tokens[1]


def test_prm_critic_flags_the_first_line_below_threshold_and_accepts_the_rest():
    class Fixed:
        def score(self, trajectories):
            return [[0.9, 0.4, 0.1], [0.9, 0.8, 0.7]]

    answers = [Trajectory(id=str(i), problem_id="p", question="q", steps=["x", "y", "z"]) for i in range(2)]
    critic = PRMCritic(Fixed(), threshold=0.5)
    assert critic.flag(PROBLEMS, answers, random.Random(0)) == [1, None]
    assert critic.prm_sequences == 2
    assert PRMCritic(Fixed(), threshold=0.95).flag(PROBLEMS, answers, random.Random(0)) == [0, 0]
    # a perfect PRM behaves as the oracle on the scripted drafts
    res = refine(FixingPolicy(), PROBLEMS, TASK, PRMCritic(CheckerScorer(), 0.5), rounds=1)
    assert all(t.correct for t in res.rounds[1])


def test_no_critic_revises_a_random_line_and_never_accepts():
    answers = [Trajectory(id="a", problem_id="p", question="q", steps=["x", "y", "z", "w"])] * 50
    flags = NoCritic().flag(PROBLEMS, answers, random.Random(1))
    assert set(flags) == {0, 1, 2, 3}
    res = refine(FixingPolicy(fix=False), PROBLEMS, TASK, NoCritic(), rounds=2)
    assert res.revised == [0, 2, 2]


def test_integration_is_the_majority_over_rounds():
    def t(answer, correct):
        return Trajectory(id="x", problem_id="p0", question="q", steps=["s"], final_answer=answer, correct=correct)

    res = RefineResult(rounds=[[t("1", False)], [t("2", True)], [t("2", True)]])
    problem = [Problem(id="p0", question="40 a+1", answer="2")]
    # round 1: "1" and "2" tie, the first seen ("1") wins; round 2: "2" twice
    assert [res.integrated(TASK, problem, r) for r in range(3)] == [[False], [False], [True]]


def test_judge_critic_reads_the_judged_step():
    class Judge:
        name = "judge"

        def generate(self, prompts, *, n=1, stop=None, max_new_tokens=256, temperature=1.0, seed=None):
            replies = ["The error is in \\boxed{1}.", "\\boxed{-1}"]
            return GenerationResult([[Completion(r, 4, "stop")] for r in replies[:len(prompts)]],
                                    GenerationCost(0, 4 * len(prompts), 1))

    answers = [Trajectory(id=str(i), problem_id="p", question="q", steps=["x", "y"]) for i in range(2)]
    assert JudgeCritic(Judge(), chat=False).flag(PROBLEMS, answers, random.Random(0)) == [1, None]


def test_refine_to_file_resumes_and_records_every_round(tmp_path):
    path = tmp_path / "r.jsonl"
    policy = FixingPolicy()
    problems = [*PROBLEMS, Problem(id="p2", question="7 a*2 b+5", answer="19")]
    refine_to_file(policy, problems[:2], TASK, OracleCritic(TASK), path, rounds=1, batch_problems=2)
    calls = len(policy.prompts)
    records = refine_to_file(policy, problems, TASK, OracleCritic(TASK), path, rounds=1, batch_problems=2)
    assert len(policy.prompts) - calls == 2  # only p2: its draft and one revision
    assert [r.problem_id for r in records] == ["p0", "p1", "p2"]
    r = records[0]
    assert r.correct == [False, True] and r.revised_from == [None, 1] and r.critic == "oracle"
    assert r.generated_tokens == [7, 7] and r.integrated == [False, False]  # "65" and "64" tie: first wins
    assert read_jsonl(path, RefineRecord) == records


def test_cli_refine_with_the_oracle_and_a_bad_critic(tmp_path):
    from typer.testing import CliRunner

    from stepforge.cli import app

    out = tmp_path / "r.jsonl"
    r = CliRunner().invoke(app, ["refine", "-o", str(out), "--critic", "oracle", "--limit", "12", "--rounds", "2",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    records = read_jsonl(out, RefineRecord)
    assert len(records) == 12 and all(len(x.correct) == 3 for x in records)
    # the oracle only ever keeps right lines, so accuracy never falls from round to round in total
    assert sum(x.correct[2] for x in records) >= sum(x.correct[0] for x in records)
    r = CliRunner().invoke(app, ["refine", "-o", str(tmp_path / "x.jsonl"), "--critic", "mystery"])
    assert r.exit_code != 0 and "unknown critic" in r.output


@pytest.mark.parametrize("critic", ["judge", "prm:"])
def test_cli_refine_critic_needs_its_model(tmp_path, critic):
    from typer.testing import CliRunner

    from stepforge.cli import app

    r = CliRunner().invoke(app, ["refine", "-o", str(tmp_path / "x.jsonl"), "--critic", critic, "--data",
                                 "world", "--limit", "2"])
    if critic == "judge":
        assert r.exit_code != 0 and "judge:MODEL" in r.output
    else:  # prm: with no dir falls back to the world's PRM
        assert r.exit_code == 0, r.output


class GSM8KWriter:
    """A completion-mode model on GSM8K prompts: a wrong second line at first; a continuation
    after the first line is right."""

    name = "writer"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=256, temperature=1.0, seed=None):
        self.prompts.extend(prompts)
        rows = []
        for prompt in prompts:
            if prompt.rstrip().endswith("She has 3 bags of 4 apples, 12 in all."):
                text = "She eats 2, so 12 - 2 = 10 are left.\nThe answer is 10."
            else:
                text = "She has 3 bags of 4 apples, 12 in all.\nShe eats 2, so 12 - 2 = 9 are left.\nThe answer is 9."
            rows.append([Completion(text, 8, "stop", None)])
        return GenerationResult(rows, GenerationCost(0, 8 * len(prompts), len(prompts)))


class StepJudge:
    """A judge that names step 1 while it reads '= 9', else no error."""

    name = "judge"

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=256, temperature=1.0, seed=None):
        texts = ["\\boxed{1}" if "= 9 are left" in prompt_text(p) else "\\boxed{-1}" for p in prompts]
        return GenerationResult([[Completion(t, 3, "stop", None)] for t in texts], GenerationCost(0, 3, 1))


def test_refine_on_gsm8k_through_a_server_with_a_judge_critic():
    from stepforge.backends.openai_backend import OpenAIPolicy
    from stepforge.backends.server import PolicyServer, serve_in_thread
    from stepforge.tasks import get_task

    task = get_task("gsm8k")
    server = PolicyServer(GSM8KWriter())
    serve_in_thread(server)
    try:
        remote = OpenAIPolicy(server.base_url, "stepforge")
        problem = Problem(id="g1", question="Ann has 3 bags of 4 apples and eats 2. How many are left?", answer="10")
        res = refine(remote, [problem], task, JudgeCritic(StepJudge(), chat=False), rounds=2, temperature=0.7)
    finally:
        server.shutdown()
    assert [t.final_answer for t in (res.rounds[0][0], res.rounds[1][0], res.rounds[2][0])] == ["9", "10", "10"]
    assert res.revised == [0, 1, 0]  # round 2: the judge found no error and accepted
    assert res.rounds[1][0].steps[0] == "She has 3 bags of 4 apples, 12 in all."  # the kept line


def test_thinking_prompts_on_real_tasks():
    from stepforge.tasks import THINK_OPEN, get_task

    task = get_task("gsm8k").with_thinking()
    problem = Problem(id="x", question="How many?", answer="1")
    assert task.name == "gsm8k-thinking" and task.build_prompt(problem).startswith(f"Use {THINK_OPEN}")
    chat = task.with_chat(True).prompt(problem)
    assert THINK_OPEN in chat.messages[0]["content"] and chat.messages[-1]["content"] == "How many?"
    steps = task.steps("<|thinking|>\n2 + 2 = 4\n<|/thinking|>\n2 + 2 = 4\nThe answer is 4.")
    assert task.answer_of(steps) == "4" and len(steps) == 5

"""MUSTARD synthesis: concepts and seeds, provers, correction rounds, filters, records, CLI."""

import json

import pytest
from scripted import FixingPolicy

from stepforge.backends.base import Completion, GenerationCost, GenerationResult
from stepforge.backends.openai_backend import OpenAIPolicy
from stepforge.backends.server import PolicyServer, serve_in_thread
from stepforge.data.synthesize import (
    ConceptLibrary,
    PromptedGenerator,
    Seed,
    SynthConfig,
    SynthRecord,
    WorldGenerator,
    draw_seeds,
    equation_prover,
    mark_duplicates,
    records_to_trajectories,
    synthesize_batch,
    synthesize_to_file,
    world_prover,
)
from stepforge.schema import Problem, read_jsonl
from stepforge.tasks import get_world
from stepforge.worlds.arith.problems import LEVELS, parse_question, problem_atoms, sample_seeded_problem

WORLD = get_world("arith")


def test_skill_atoms_and_seeded_problems():
    p = parse_question("18 a+5 b-4 c*3 d-6 e+1")  # 18+5=23 carries, 23-4=19 borrows, 19*3=57, 57-6=51, 51+1=52
    assert problem_atoms(p) == ["add_carry", "sub_borrow", "mul_3", "sub_no_borrow", "add_no_carry"]
    import random

    rng = random.Random(0)
    seeded = [a for _ in range(300) for a in problem_atoms(sample_seeded_problem(rng, LEVELS[2], ["mul_5"]))]
    natural = [a for _ in range(300) for a in problem_atoms(sample_seeded_problem(rng, LEVELS[2], []))]
    assert seeded.count("mul_5") / len(seeded) > 4 * natural.count("mul_5") / len(natural)
    with pytest.raises(ValueError, match="unknown skill atoms"):
        sample_seeded_problem(rng, LEVELS[1], ["divide"])


def test_concept_library_from_yaml_and_its_errors(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("easy:\n  adding: [sums, carries]\n  money: [change]\nhard:\n  algebra: [equations]\n")
    lib = ConceptLibrary.from_yaml(good)
    assert lib.levels["easy"]["adding"] == ("sums", "carries")
    bad = tmp_path / "bad.yaml"
    bad.write_text("easy:\n  adding: sums\n")
    with pytest.raises(ValueError, match=r"bad.yaml: easy/adding must be a non-empty list"):
        ConceptLibrary.from_yaml(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("easy: [\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML"):
        ConceptLibrary.from_yaml(broken)


def test_seeds_follow_the_two_modes():
    lib = ConceptLibrary(WORLD.concepts)
    one = draw_seeds(lib, 200, k=2, mode="one_group", seed=1)
    assert all(len(set(s.concepts)) == 2 and len(set(s.groups)) == 1 for s in one)
    assert all(set(s.concepts) <= set(lib.levels[s.level][s.groups[0]]) for s in one)
    across = draw_seeds(lib, 200, k=2, mode="across_groups", seed=1)
    assert all(len(set(s.groups)) == 2 for s in across)
    assert {s.level for s in across} == {"1", "2", "3"}
    assert draw_seeds(lib, 5, seed=3) == draw_seeds(lib, 5, seed=3) != draw_seeds(lib, 5, seed=4)
    with pytest.raises(ValueError, match="no level"):
        draw_seeds(lib, 1, k=4, mode="across_groups")


def test_world_prover_names_the_line_not_the_value():
    prove = world_prover(WORLD.task)
    p = Problem(id="p", question="40 a-6 b*2", answer="68")
    assert prove(p, ["a-6=34", "b*2=68", "Answer: 68"]).ok
    v = prove(p, ["a-6=34", "b*2=66", "Answer: 66"])
    assert (v.ok, v.line, v.message) == (False, 1, "line 2 is wrong")
    assert "68" not in v.message
    v = prove(p, ["a-6=34"])
    assert (v.ok, v.line) == (False, 1) and "stops before" in v.message


def test_equation_prover_by_hand():
    ok = ["He buys 3*4 = <<3*4=12>>12 apples.", "He eats 2, so 12-2 = <<12-2=10>>10 are left.", "#### 10"]
    assert equation_prover(Problem(id="q", question="", answer=""), ok).ok
    wrong = [ok[0], "He eats 2, so 12-2 = <<12-2=9>>9 are left.", "#### 9"]
    v = equation_prover(Problem(id="q", question="", answer=""), wrong)
    assert (v.ok, v.line) == (False, 1) and v.message.startswith("line 2:") and "10" not in v.message
    v = equation_prover(Problem(id="q", question="", answer=""), [*ok[:2], "#### 12"])
    assert (v.ok, v.line) == (False, 2) and "last computed value" in v.message
    v = equation_prover(Problem(id="q", question="", answer=""), ok[:2])
    assert not v.ok and "####" in v.message


def _seeds(n: int, level: str = "2") -> list[Seed]:
    return [Seed(id=f"s{i}", level=level, concepts=("add_carry",), groups=("addition",)) for i in range(n)]


def test_a_correction_round_keeps_the_right_lines_and_fixes_the_wrong_one():
    policy = FixingPolicy()
    records, cost = synthesize_batch(WorldGenerator(WORLD, policy), world_prover(WORLD.task), _seeds(3),
                                     SynthConfig(rounds=2))
    assert all(r.verified and r.rounds == 1 and r.messages == ["line 2 is wrong"] for r in records)
    corrections = policy.prompts[3:]
    assert len(corrections) == 3 and all(len([x for x in c.split("\n") if x]) == 2 for c in corrections)  # kept line 1
    assert [r.solution[0] for r in records] == [c.split("\n")[1] for c in corrections]
    assert cost.generated_tokens == 6 * 7
    unfixed, _ = synthesize_batch(WorldGenerator(WORLD, FixingPolicy(fix=False)), world_prover(WORLD.task),
                                  _seeds(2), SynthConfig(rounds=2))
    assert all(not r.verified and r.rounds == 2 and len(r.messages) == 3 for r in unfixed)
    none, _ = synthesize_batch(WorldGenerator(WORLD, FixingPolicy()), world_prover(WORLD.task), _seeds(1),
                               SynthConfig(rounds=0))
    assert not none[0].verified and none[0].rounds == 0


def test_invalid_records_never_reach_the_valid_file_and_runs_resume(tmp_path):
    out = tmp_path / "synth.jsonl"
    seeds = _seeds(6)
    kept, rejected = synthesize_to_file(WorldGenerator(WORLD, FixingPolicy(fix=False)), world_prover(WORLD.task),
                                        seeds, out, SynthConfig(rounds=1, batch_size=2))
    assert kept == [] and len(rejected) == 6
    assert read_jsonl(out, SynthRecord) == [] and len(read_jsonl(out.with_name("synth.jsonl.invalid.jsonl"),
                                                                 SynthRecord)) == 6
    out2 = tmp_path / "ok.jsonl"
    policy = FixingPolicy()
    synthesize_to_file(WorldGenerator(WORLD, policy), world_prover(WORLD.task), seeds[:4], out2,
                       SynthConfig(rounds=1, batch_size=2))
    calls = len(policy.prompts)
    kept, _ = synthesize_to_file(WorldGenerator(WORLD, policy), world_prover(WORLD.task), seeds, out2,
                                 SynthConfig(rounds=1, batch_size=2))
    assert len(policy.prompts) - calls == 4  # only the last batch (2 drafts + 2 corrections) ran again
    assert all(r.verified for r in read_jsonl(out2, SynthRecord)) and len(kept) <= 6
    trajectories = records_to_trajectories(kept, WORLD.task)
    assert all(t.correct and t.step_labels == [1.0] * len(t.steps) for t in trajectories)


def test_dedup_keeps_the_first_of_near_identical_problems():
    def rec(i, text, verified=True):
        return SynthRecord(id=f"r{i}", level="1", concepts=[], groups=[], problem=text, answer="1", solution=["x"],
                           verified=verified, rounds=0)

    records = [rec(0, "Tom has 3 apples and buys 4 more."), rec(1, "tom has 3 apples and  buys 4 more."),
               rec(2, "Tom has 3 apples and buys 5 more."), rec(3, "A train leaves at noon."),
               rec(4, "A train leaves at noon.", verified=False)]
    mark_duplicates(records, threshold=0.9)
    assert [r.duplicate_of for r in records] == [None, "r0", "r0", None, None]
    exact_only = [rec(0, "Tom has 3 apples."), rec(1, "Tom has 4 apples.")]
    mark_duplicates(exact_only, threshold=1.0)
    assert [r.duplicate_of for r in exact_only] == [None, None]


class ScriptedWriter:
    """A completion-mode instruct model: writes a problem from the seed's concepts, with a wrong
    computation first; fixes it when shown the checker's messages."""

    name = "writer"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=256, temperature=1.0, seed=None):
        self.prompts.extend(prompts)
        rows = []
        for prompt in prompts:
            if prompt.startswith("Write a new"):
                text = ("Problem: Ann buys 3 bags of 4 pears. How many pears?\nSolution:\n"
                        "3 bags of 4 is 3*4 = <<3*4=13>>13 pears.\n#### 13")
            else:
                assert "1: 3 bags of 4 is 3*4" in prompt and "A checker found: line 1:" in prompt
                text = "3 bags of 4 is 3*4 = <<3*4=12>>12 pears.\n#### 12"
            rows.append([Completion(text, 9, "stop", None)])
        return GenerationResult(rows, GenerationCost(0, 9 * len(prompts), len(prompts)))


def test_prompted_generator_through_an_openai_compatible_server():
    server = PolicyServer(ScriptedWriter())
    serve_in_thread(server)
    try:
        remote = OpenAIPolicy(server.base_url, "stepforge")
        seeds = [Seed(id="g0", level="elementary school", concepts=("multiplication",), groups=("arithmetic",))]
        [record], cost = synthesize_batch(PromptedGenerator(remote, chat=False), equation_prover, seeds,
                                          SynthConfig(rounds=2))
    finally:
        server.shutdown()
    assert record.verified and record.rounds == 1 and record.problem.startswith("Ann buys")
    assert record.solution[-1] == "#### 12" and record.answer == "12"  # the corrected solution's answer
    assert "multiplication" in server.policy.prompts[0] and "elementary school" in server.policy.prompts[0]
    assert cost.generated_tokens == 18


def test_cli_synthesizes_in_the_world_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from stepforge.cli import app

    out = tmp_path / "s.jsonl"
    args = ["synthesize", "--world", "arith", "-o", str(out), "--n", "40", "--batch-size", "16",
            "--trajectories", str(tmp_path / "t.jsonl"), "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    kept = read_jsonl(out, SynthRecord)
    everything = [json.loads(x) for x in out.with_name("s.jsonl.all.jsonl").read_text().splitlines()]
    assert len(everything) == 40 and kept and all(r.verified for r in kept)
    assert {r["id"] for r in everything} >= {r.id for r in kept}
    r = CliRunner().invoke(app, args)  # a re-run resumes: nothing left to do, same files
    assert r.exit_code == 0, r.output and len(read_jsonl(out, SynthRecord)) == len(kept)
    r = CliRunner().invoke(app, ["synthesize", "-o", str(tmp_path / "x.jsonl"), "--concepts",
                                 str(tmp_path / "missing.yaml")])
    assert r.exit_code != 0


def test_world_synthesis_through_stepforge_serve(world_policy):
    """The world path with the solver behind an OpenAI-compatible server (`stepforge serve`)."""
    server = PolicyServer(world_policy)
    serve_in_thread(server)
    try:
        remote = OpenAIPolicy(server.base_url, "stepforge")
        seeds = draw_seeds(ConceptLibrary(WORLD.concepts), 8, seed=5)
        records, cost = synthesize_batch(WorldGenerator(WORLD, remote), world_prover(WORLD.task), seeds,
                                         SynthConfig(rounds=2))
    finally:
        server.shutdown()
    assert len(records) == 8 and cost.generated_tokens > 0
    prove = world_prover(WORLD.task)
    for r in records:  # the verdict stored is the prover's on the stored solution
        assert r.verified == prove(Problem(id=r.id, question=r.problem, answer=r.answer), r.solution).ok
        assert r.rounds <= 2 and len(r.messages) == r.rounds + (not r.verified)

"""Step expansion (MathFimer): the detailed world style, FIM layout, filters, the runner."""

import random
import re

import pytest

from stepforge.backends.base import Completion, GenerationCost, GenerationResult
from stepforge.backends.openai_backend import OpenAIPolicy
from stepforge.backends.server import PolicyServer, serve_in_thread
from stepforge.data.expand import ExpandConfig, expand_batch, expand_to_file, insertion_is_right
from stepforge.data.fim import (
    FimTokens,
    drop_reason,
    fim_examples,
    fim_prompt,
    fim_tokens_of,
    insert_steps,
    similarity,
)
from stepforge.schema import Trajectory, read_jsonl
from stepforge.tasks import GSM8K, get_world
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.problems import detail_line, first_error, parse_question, step_operations
from stepforge.worlds.arith.tokenizer import FIM_TOKENS, build_tokenizer, build_tokenizer_with

TOKENS = FimTokens(*FIM_TOKENS)


# --- the detailed style and its checker -------------------------------------------------------

def test_detailed_style_adds_a_partial_product_line_before_each_multiplication_of_ten_or_more():
    p = parse_question("40 a-6 b*2 c-4 d+3 e*3")
    assert p.detailed_steps == ["a-6=34", "b 34*2=60+8", "b*2=68", "c-4=64", "d+3=67", "e 67*3=180+21",
                                "e*3=201", "Answer: 201"]
    assert detail_line("c", 7, 3) is None  # below ten there is nothing to decompose
    assert parse_question("7 a*3 b+1").detailed_steps == ["a*3=21", "b+1=22", "Answer: 22"]


def test_checker_accepts_both_styles_and_labels_a_partial_product_line_on_its_own():
    p = parse_question("40 a-6 b*2 c-4")
    assert first_error(p.question, p.steps) is None
    assert first_error(p.question, p.detailed_steps) is None
    wrong_partial = ["a-6=34", "b 34*2=60+9", "b*2=68", "c-4=64", "Answer: 64"]
    assert first_error(p.question, wrong_partial) == 1
    wrong_value = ["a-6=34", "b 35*2=70+10", "b*2=68"]  # right products of the wrong running value
    assert first_error(p.question, wrong_value) == 1
    misplaced = ["a-6=34", "b*2=68", "c 68*2=120+16", "c-4=64"]  # before a subtraction
    assert first_error(p.question, misplaced) == 2
    twice = ["a-6=34", "b 34*2=60+8", "b 34*2=60+8", "b*2=68"]
    assert first_error(p.question, twice) == 2
    # a wrong terse step after a right partial-product line keeps the terse semantics
    assert first_error(p.question, ["a-6=34", "b 34*2=60+8", "b*2=69"]) == 2
    assert step_operations(p.question, ["a-6=34", "b 34*2=60+8", "b*2=69", "c-4=65"]) == [0, 1, 1, None]


def test_world_reference_steps_in_both_styles():
    world = get_world("arith")
    problem = parse_question("40 a-6 b*2").to_problem("p")
    assert world.reference_steps(problem, "terse") == ["a-6=34", "b*2=68", "Answer: 68"]
    assert world.reference_steps(problem, "detailed") == ["a-6=34", "b 34*2=60+8", "b*2=68", "Answer: 68"]
    assert "detailed" in world.styles


# --- FIM text layout ----------------------------------------------------------------------------

def test_fim_prompt_layout_is_prefix_suffix_middle():
    prompt = fim_prompt(TOKENS, "40 a-6 b*2\n", ["a-6=34"], ["b*2=68", "Answer: 68"])
    assert prompt == "<fim_prefix>40 a-6 b*2\na-6=34\n<fim_suffix>b*2=68\nAnswer: 68<fim_middle>"
    first_gap = fim_prompt(TOKENS, "40 a-6 b*2", [], ["a-6=34", "b*2=68", "Answer: 68"])
    assert first_gap == "<fim_prefix>40 a-6 b*2\n<fim_suffix>a-6=34\nb*2=68\nAnswer: 68<fim_middle>"


def test_spm_order_puts_the_prefix_next_to_the_middle():
    prompt = fim_prompt(TOKENS, "40 a-6 b*2\n", ["a-6=34"], ["b*2=68", "Answer: 68"], order="spm")
    assert prompt == "<fim_suffix>b*2=68\nAnswer: 68<fim_prefix>40 a-6 b*2\na-6=34\n<fim_middle>"
    with pytest.raises(ValueError, match="FIM order"):
        fim_prompt(TOKENS, "q", [], ["s"], order="pms")


def test_fim_examples_cut_distinct_steps_and_the_middle_is_the_cut_step():
    steps = ["a-6=34", "b 34*2=60+8", "b*2=68", "Answer: 68"]
    examples = fim_examples("40 a-6 b*2", steps, TOKENS, random.Random(0), draws=3)
    assert len(examples) == 3 and len({m for _, m in examples}) == 3
    for prompt, middle in examples:
        i = steps.index(middle)
        assert prompt == fim_prompt(TOKENS, "40 a-6 b*2", steps[:i], steps[i + 1:])


def test_world_fim_tokens_are_found_in_the_tokenizer_and_encode_to_single_ids():
    tok = build_tokenizer_with(FIM_TOKENS)
    assert fim_tokens_of(tok) == TOKENS
    assert fim_tokens_of(build_tokenizer()) is None  # never assumed
    qwen_style = build_tokenizer_with(("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    assert fim_tokens_of(qwen_style) == FimTokens("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
    partial = build_tokenizer_with(("<fim_prefix>", "<fim_suffix>"))  # no middle token: not FIM-capable
    assert fim_tokens_of(partial) is None
    ids = tok(fim_prompt(TOKENS, "40 a-6", [], ["a-6=34"])).input_ids
    assert ids[:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<fim_prefix>")]
    assert tok.decode(ids, skip_special_tokens=True) == "40 a-6\na-6=34"


# --- filters ------------------------------------------------------------------------------------

def test_drop_reasons_in_order():
    final = ARITH.is_final_step
    assert drop_reason("  ", "b*2=68") == "empty"
    assert drop_reason("Answer: 68", "b*2=68", is_final_step=final) == "answer_line"
    assert similarity("b*2=68", "b*2=68") == 1.0
    assert drop_reason("b*2=68", "b*2=68") == "redundant"
    assert drop_reason("b 34*2=60+8", "b*2=68", is_right=lambda: True) is None
    assert drop_reason("b 34*2=60+8", "b*2=68", eta=0.2) == "redundant"  # eta is the threshold


def test_a_wrong_insertion_is_dropped_by_the_check_and_a_right_one_is_kept():
    problem = parse_question("40 a-6 b*2").to_problem("p")
    steps = ["a-6=34", "b*2=68", "Answer: 68"]
    assert insertion_is_right(ARITH, problem, steps, 1, "b 34*2=60+8") is True
    assert insertion_is_right(ARITH, problem, steps, 1, "b 34*2=60+9") is False
    assert insertion_is_right(ARITH, problem, steps, 1, "a-6=34") is False  # a repeat breaks the chain
    check = lambda: insertion_is_right(ARITH, problem, steps, 1, "b 34*2=60+9")  # noqa: E731
    assert drop_reason("b 34*2=60+9", "b*2=68", is_right=check) == "wrong"
    # without an exact checker the equations of the step are checked; None when there are none
    assert insertion_is_right(GSM8K, None, ["x"], 0, "3 * 4 = 13 apples") is False
    assert insertion_is_right(GSM8K, None, ["x"], 0, "<<3*4=12>>12 apples") is True
    assert insertion_is_right(GSM8K, None, ["x"], 0, "Let us think.") is None


def test_insert_steps_places_lines_before_their_gap():
    assert insert_steps(["a", "b", "c"], {0: "x", 2: " y "}) == (["x", "a", "b", "y", "c"], [0, 3])


# --- the runner -----------------------------------------------------------------------------------

class ScriptedExpander:
    """Answers FIM prompts of the world: before a multiplication of a value >= 10 its
    partial-product line (off by one in the units product when ``wrong`` picks that tag),
    elsewhere a copy of the next step; before the answer line, an answer line."""

    name = "scripted-expander"

    def __init__(self, wrong: str = "") -> None:
        self.wrong = wrong
        self.prompts: list[str] = []

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=256, temperature=1.0, seed=None):
        rows = []
        for prompt in prompts:
            self.prompts.append(prompt)
            head, tail = prompt.removeprefix("<fim_prefix>").split("<fim_suffix>")
            question, *prefix = [x for x in head.split("\n") if x]
            nxt = tail.removesuffix("<fim_middle>").split("\n")[0]
            problem = parse_question(question)
            j = len([s for s in prefix if not re.match(r"^[a-p] ", s)])
            value = problem.values[j - 1] if j else problem.start
            text = nxt
            if j < len(problem.ops) and problem.ops[j][0] == "*" and value >= 10:
                text = detail_line(nxt[0], value, problem.ops[j][1])
                if nxt[0] in self.wrong:
                    text = text[:-1] + str((int(text[-1]) + 1) % 10)
            rows.append([Completion(text + "\n", 3, "stop", "\n")])
        return GenerationResult(rows, GenerationCost(0, 3 * len(prompts), len(prompts)))


def _terse(question: str, pid: str = "p") -> Trajectory:
    p = parse_question(question)
    return Trajectory(id=pid, problem_id=pid, question=question, steps=p.steps, final_answer=str(p.answer),
                      correct=True)


def test_expansion_inserts_checked_lines_keeps_the_answer_and_records_what_it_did():
    t = _terse("40 a-6 b*2 c-4 d*3")  # 34*2 (detail), 64*3 (detail, made wrong)
    policy = ScriptedExpander(wrong="d")
    [plain], cost = expand_batch(policy, [t], ARITH, ExpandConfig(), TOKENS)
    assert cost.generated_tokens == 3 * 5  # one call, all five gaps
    assert plain.steps == ["a-6=34", "b 34*2=60+8", "b*2=68", "c-4=64", "d 64*3=180+13", "d*3=192", "Answer: 192"]
    info = plain.meta["expand"]
    assert info["inserted_at"] == [1, 4] and info["inserted_right"] == [True, False]
    assert info["rounds"][0]["dropped"] == {"empty": 0, "answer_line": 1, "redundant": 2, "wrong": 0,
                                                  "answer_risk": 0}
    assert plain.first_error == 4 and plain.step_labels[:4] == [1.0, 1.0, 1.0, 1.0]
    [checked], _ = expand_batch(ScriptedExpander(wrong="d"), [t], ARITH, ExpandConfig(check=True), TOKENS)
    assert checked.steps == ["a-6=34", "b 34*2=60+8", "b*2=68", "c-4=64", "d*3=192", "Answer: 192"]
    assert checked.meta["expand"]["rounds"][0]["dropped"]["wrong"] == 1 and checked.first_error is None
    for record in (plain, checked):  # original steps untouched, so the answer is too
        assert [s for i, s in enumerate(record.steps) if i not in record.meta["expand"]["inserted_at"]] == t.steps
        assert ARITH.answer_of(record.steps) == t.final_answer


def test_a_second_round_sees_the_first_rounds_lines():
    t = _terse("40 a-6 b*2")
    [out], _ = expand_batch(ScriptedExpander(), [t], ARITH, ExpandConfig(rounds=2, check=True), TOKENS)
    assert out.steps == ["a-6=34", "b 34*2=60+8", "b*2=68", "Answer: 68"]
    assert [r["gaps"] for r in out.meta["expand"]["rounds"]] == [3, 4]
    assert out.meta["expand"]["rounds"][1]["inserted"] == 0


def test_expand_to_file_resumes_without_redoing_batches(tmp_path):
    records = [_terse("40 a-6 b*2", "p0"), _terse("12 a*2 b+1", "p1"), _terse("30 a+5 b*3", "p2")]
    path = tmp_path / "out.jsonl"
    first = ScriptedExpander()
    stats = expand_to_file(first, records[:2], ARITH, path, ExpandConfig(batch_trajectories=1), TOKENS)
    assert stats.batches_run == 2
    second = ScriptedExpander()
    stats = expand_to_file(second, records, ARITH, path, ExpandConfig(batch_trajectories=1), TOKENS)
    assert (stats.batches_run, stats.batches_skipped) == (1, 2)
    assert all("30 a+5 b*3" in p for p in second.prompts)
    assert [t.id for t in read_jsonl(path, Trajectory)] == ["p0", "p1", "p2"]


def test_fim_mode_needs_fim_tokens():
    with pytest.raises(ValueError, match="FIM tokens"):
        expand_batch(ScriptedExpander(), [_terse("40 a-6")], ARITH, ExpandConfig(), None)


class PromptedExpander:
    """Any instruct model: reads the 'Next step' of the instruction and answers a fixed line."""

    name = "prompted"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=256, temperature=1.0, seed=None):
        self.prompts.extend(prompts)
        rows = []
        for prompt in prompts:
            nxt = prompt.split("Next step:\n")[1].split("\n")[0]
            text = "So 2 * 3 = 6 first." if "+" in nxt else nxt
            rows.append([Completion(text, 5, "stop", None)])
        return GenerationResult(rows, GenerationCost(10 * len(prompts), 5 * len(prompts), len(prompts)))


def test_prompted_mode_through_an_openai_compatible_server():
    server = PolicyServer(PromptedExpander())
    serve_in_thread(server)
    try:
        remote = OpenAIPolicy(server.base_url, "stepforge")
        t = Trajectory(id="g", problem_id="g", question="Tom has 2 bags of 3 apples and 1 more. How many?",
                       steps=["He has 2 * 3 = 6 apples in bags.", "6 + 1 = 7", "#### 7"], final_answer="7")
        [out], cost = expand_batch(remote, [t], GSM8K, ExpandConfig(mode="prompt", check=True))
    finally:
        server.shutdown()
    assert out.steps == ["He has 2 * 3 = 6 apples in bags.", "So 2 * 3 = 6 first.", "6 + 1 = 7", "#### 7"]
    assert out.meta["expand"]["inserted_at"] == [1] and cost.generated_tokens == 15
    assert all(p.startswith("Below is a problem") for p in server.policy.prompts)
    assert sum("Solution so far:\n(none yet)" in p for p in server.policy.prompts) == 1  # the first gap


# --- the CLI path on real (tiny, trained-here) models -------------------------------------------

def test_cli_trains_an_expander_expands_with_its_fim_tokens_and_trains_on_the_result(tmp_path):
    from typer.testing import CliRunner

    from stepforge.cli import app
    from stepforge.schema import write_jsonl

    runner = CliRunner()
    expander = tmp_path / "expander"
    result = runner.invoke(app, ["train-expander", "--out", str(expander), "--problems", "64", "--steps", "20"])
    assert result.exit_code == 0, result.output
    from transformers import AutoTokenizer

    assert fim_tokens_of(AutoTokenizer.from_pretrained(expander)) == TOKENS  # saved with the model
    data = tmp_path / "terse.jsonl"
    write_jsonl(data, [_terse("40 a-6 b*2 c-4", "p0"), _terse("12 a*2 b+1", "p1")])
    out = tmp_path / "expanded.jsonl"
    args = ["expand", "-i", str(data), "-o", str(out), "--model", str(expander), "--max-new-tokens", "12",
            "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expanded = read_jsonl(out, Trajectory)
    assert [t.id for t in expanded] == ["p0", "p1"]
    import json

    manifest = json.loads(out.with_name(out.name + ".run.json").read_text())
    assert "'fim_order': 'spm'" in str(manifest)  # read from the expander's training record
    for t, steps in zip(expanded, (["a-6=34", "b*2=68", "c-4=64", "Answer: 64"], ["a*2=24", "b+1=25", "Answer: 25"]),
                        strict=True):
        assert [s for i, s in enumerate(t.steps) if i not in t.meta["expand"]["inserted_at"]] == steps
        assert sum(r["gaps"] for r in t.meta["expand"]["rounds"]) == len(steps)
    checked = runner.invoke(app, ["expand", "-i", str(data), "-o", str(tmp_path / "mc.jsonl"), "--model",
                                  str(expander), "--max-new-tokens", "12", "--mc-rollouts", "2", "--solver", "world"])
    assert checked.exit_code == 0, checked.output
    assert all("answer_risk" in t.meta["expand"]["rounds"][0]["dropped"]
               for t in read_jsonl(tmp_path / "mc.jsonl", Trajectory))
    again = runner.invoke(app, [*args, "--eta", "0.5"])  # another run's settings: refused, file kept
    assert again.exit_code == 2 and "eta" in again.output
    # a model without FIM tokens is refused in fim mode, naming the fix
    plain = runner.invoke(app, ["expand", "-i", str(data), "-o", str(tmp_path / "x.jsonl"), "--backend", "world"])
    assert plain.exit_code == 2 and "--mode prompt" in plain.output
    policy = tmp_path / "policy"
    result = runner.invoke(app, ["train-world", "--out", str(policy), "--steps", "3", "--corpus", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((policy / "stepforge_train.json").read_text())
    assert record["corpus"]["file"] == str(out) and record["config"]["steps"] == 3


class CheckingSolver:
    """Finishes a world prefix with the right answer unless the prefix holds a wrong step."""

    name = "solver"

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=256, temperature=1.0, seed=None):
        rows = []
        for prompt in prompts:
            question, *steps = [x for x in prompt.split("\n") if x]
            p = parse_question(question)
            answer = p.answer if first_error(question, steps) is None else p.answer + 1
            rows.append([Completion(f"Answer: {answer}", 3, "stop", None)] * n)
        return GenerationResult(rows, GenerationCost(0, 3 * n * len(prompts), len(prompts)))


def test_answer_preservation_by_rollouts_drops_a_step_that_derails_the_solver():
    t = _terse("40 a-6 b*2 c-4 d*3")
    config = ExpandConfig(mc_rollouts=4)
    [out], cost = expand_batch(ScriptedExpander(wrong="d"), [t], ARITH, config, TOKENS, CheckingSolver())
    assert out.steps == ["a-6=34", "b 34*2=60+8", "b*2=68", "c-4=64", "d*3=192", "Answer: 192"]
    assert out.meta["expand"]["rounds"][0]["dropped"]["answer_risk"] == 1
    assert cost.generated_tokens == 3 * 5 + 3 * 4 * 4  # the expander's five gaps, 4 rollouts x 4 prefixes
    with pytest.raises(ValueError, match="solver"):
        expand_batch(ScriptedExpander(), [t], ARITH, config, TOKENS)

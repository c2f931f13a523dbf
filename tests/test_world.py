import random

import pytest

from stepforge.worlds.arith.problems import (
    ArithConfig,
    ArithProblem,
    check_line,
    extract_answer,
    first_error,
    generate_problems,
    is_check_line,
    parse_question,
    sample_problem,
    step_is_consistent,
    step_operations,
)
from stepforge.worlds.arith.tokenizer import build_tokenizer


def test_design_example():
    p = ArithProblem(start=40, ops=(("-", 6), ("*", 2), ("-", 4), ("+", 3)))
    assert p.question == "40 a-6 b*2 c-4 d+3"
    assert p.solution == "a-6=34\nb*2=68\nc-4=64\nd+3=67\nAnswer: 67"
    assert parse_question(p.question) == p


def test_generator_respects_knobs_and_is_deterministic():
    cfg = ArithConfig(min_steps=3, max_steps=5, max_start=20, max_value=60, max_addend=4, max_factor=3,
                      operators="+*")
    rng = random.Random(0)
    for _ in range(300):
        p = sample_problem(rng, cfg)
        assert 3 <= len(p.ops) <= 5 and 1 <= p.start <= 20
        assert all(0 <= v <= 60 for v in p.values)
        assert all(op in "+*" and (k <= 4 if op == "+" else 2 <= k <= 3) for op, k in p.ops)
    assert generate_problems(5, cfg, seed=3) == generate_problems(5, cfg, seed=3)
    assert generate_problems(5, cfg, seed=3) != generate_problems(5, cfg, seed=4)


def test_bad_knobs():
    with pytest.raises(ValueError, match="min_steps"):
        ArithConfig(min_steps=5, max_steps=2)
    with pytest.raises(ValueError, match="operators"):
        ArithConfig(operators="/")


def test_first_error_against_the_true_path():
    q = "40 a-6 b*2 c-4 d+3"
    assert first_error(q, ["a-6=34", "b*2=68", "c-4=64", "d+3=67", "Answer: 67"]) is None
    # step 1 is wrong; step 2 is consistent with it but still off the correct path
    assert first_error(q, ["a-6=34", "b*2=66", "c-4=62", "d+3=65", "Answer: 65"]) == 1
    assert first_error(q, ["a-6=34", "c-4=30"]) == 1  # skipped a step
    assert first_error(q, ["a-6=34", "b*2=68", "c-4=64", "d+3=67", "Answer: 68"]) == 4
    assert first_error(q, ["a-6=34", "b*2=68", "c-4=64", "d+3=67", "Answer: 67", "e+1=68"]) == 5
    assert first_error(q, ["a-6=34", "b*2=68"]) is None  # incomplete, not wrong
    assert step_is_consistent("c-4=62", 66) and not step_is_consistent("c-4=62", 68)


def test_check_lines_are_right_only_when_they_restate_the_running_value():
    q = "40 a-6 b*2 c-4 d+3"
    padded = ["check 40", "a-6=34", "check 34", "check 34", "b*2=68", "c-4=64", "d+3=67", "check 67", "Answer: 67"]
    assert first_error(q, padded) is None
    assert first_error(q, ["check 34", "a-6=34"]) == 0  # restates a value the chain has not reached
    assert first_error(q, ["a-6=34", "check 40"]) == 1  # the old value
    assert first_error(q, ["a-6=34", "b*2=68", "c-4=64", "d+3=67", "Answer: 67", "check 67"]) == 5  # after the answer
    # a check line before a multiplication keeps the partial-product line allowed
    assert first_error("34 a*3", ["check 34", "a 34*3=90+12", "check 34", "a*3=102", "Answer: 102"]) is None
    assert step_operations(q, ["check 40", "a-6=34", "check 34", "b*2=68"]) == [0, 0, 1, 1]
    assert is_check_line("check 7") and not is_check_line("check") and check_line(7) == "check 7"


def test_padded_style_draws_check_lines_and_is_fixed_per_problem():
    p = parse_question("40 a-6 b*2 c-4 d+3")
    drawn = [p.padded_steps(random.Random(s), rate=0.5) for s in range(50)]
    assert all(first_error(p.question, steps) is None for steps in drawn)
    assert all([s for s in steps if not is_check_line(s)] == p.steps for steps in drawn)  # terse steps unchanged
    counts = {sum(map(is_check_line, steps)) for steps in drawn}
    assert 0 in counts and max(counts) >= 4  # any number of them, repeats too
    assert all(not is_check_line(steps[-2]) or steps[-2] == "check 67" for steps in drawn)
    assert p.solution_in("padded") == p.solution_in("padded")  # seeded by the question
    assert p.padded_steps(random.Random(0), rate=0.0) == p.steps
    tok = build_tokenizer()
    assert tok.decode(tok("check 67", add_special_tokens=False).input_ids) == "check 67"


def test_parse_question_names_bad_token():
    with pytest.raises(ValueError, match=r"token 2 'c\*2'"):
        parse_question("5 a+1 c*2")


def test_extract_answer():
    assert extract_answer("a+1=5\nAnswer: 5") == "5"
    assert extract_answer("a+1=5\nAnswer 5") is None


def test_tokenizer_round_trip_and_whole_operator_tokens():
    tok = build_tokenizer()
    text = "40 a-6 b*2\na-6=34\nb*2=68\nAnswer: 68"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    pieces = tok.convert_ids_to_tokens(ids)
    assert "-6" in pieces and "*2" in pieces and "Answer:" in pieces and tok.unk_token not in pieces
    assert len(tok) == 64


def test_impossible_knobs_fail_clearly():
    cfg = ArithConfig(min_steps=12, max_steps=12, max_start=9, max_value=10, operators="+")
    with pytest.raises(ValueError, match="no 12-step chain fits"):
        sample_problem(random.Random(0), cfg, max_tries=50)

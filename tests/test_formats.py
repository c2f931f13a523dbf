import json

import pytest
from typer.testing import CliRunner

from stepforge import formats
from stepforge.cli import app
from stepforge.loaders import find_data_file
from stepforge.schema import RecordError, Trajectory, read_jsonl

SHEPHERD = {
    "input": "Janet has 3 apples and buys 2. How many? Step 1: 3 + 2 = 5 ки\nStep 2: She has 6. The answer is: 6 ки",
    "label": "Janet has 3 apples and buys 2. How many? Step 1: 3 + 2 = 5 +\nStep 2: She has 6. The answer is: 6 -",
    "task": "GSM8K",
}
PRM800K = {
    "question": {"problem": "What is 2+3?", "ground_truth_answer": "5"},
    "label": {"steps": [
        {"completions": [{"text": "We add 2 and 3.", "rating": 1}], "chosen_completion": 0},
        {"completions": [{"text": "That is 4.", "rating": -1}, {"text": "That is 5.", "rating": 1}],
         "chosen_completion": None},
        {"completions": [{"text": "never rated", "rating": 1}], "chosen_completion": 0},
    ], "finish_reason": "found_error"},
}


def test_processbench_from_the_fixture():
    trajs = formats.import_file(find_data_file("processbench/gsm8k.json"), "processbench")
    assert len(trajs) == 30
    wrong = [t for t in trajs if t.first_error is not None]
    assert 0 < len(wrong) < 30
    t = wrong[0]
    assert t.step_labels[t.first_error] == 0.0 and all(v == 1.0 for v in t.step_labels[:t.first_error])
    assert formats.to_processbench(t)["label"] == t.first_error


def test_math_shepherd_round_trip(tmp_path):
    path = tmp_path / "ms.jsonl"
    path.write_text(json.dumps(SHEPHERD) + "\n")
    [t] = formats.import_file(path, "math-shepherd")
    assert t.question == "Janet has 3 apples and buys 2. How many?"
    assert t.steps == ["Step 1: 3 + 2 = 5", "Step 2: She has 6. The answer is: 6"]
    assert t.step_labels == [1.0, 0.0] and t.first_error == 1
    back = formats.to_math_shepherd(t)
    assert back["input"] == SHEPHERD["input"] and back["label"] == SHEPHERD["label"]


def test_prm800k_ratings(tmp_path):
    path = tmp_path / "prm800k.jsonl"
    path.write_text(json.dumps(PRM800K) + "\n")
    [t] = formats.import_file(path, "prm800k")
    assert t.steps == ["We add 2 and 3.", "That is 4."]  # stops at the first -1, first completion when unchosen
    assert t.step_labels == [1.0, 0.0] and t.first_error == 1 and t.meta["ground_truth_answer"] == "5"


def test_trl_round_trip_and_soft_label_warning_by_threshold(tmp_path):
    t = Trajectory(id="x", problem_id="p", question="Q", steps=["a", "b"], step_labels=[0.75, 0.25])
    row = formats.to_trl(t)
    assert row == {"prompt": "Q", "completions": ["a", "b"], "labels": [True, False]}
    path = tmp_path / "trl.jsonl"
    path.write_text(json.dumps(row) + "\n")
    [back] = formats.import_file(path, "trl")
    assert back.step_labels == [1.0, 0.0] and back.first_error == 1


@pytest.mark.parametrize(("fmt", "row", "message"), [
    ("processbench", {"id": "a", "problem": "q", "steps": ["s"], "label": 3}, "label 3 is not -1 or a step index"),
    ("math-shepherd", {"input": "no tags", "label": "no tags"}, "no 'ки' step tags"),
    ("trl", {"prompt": "q", "completions": ["a"], "labels": [True, False]}, "2 labels for 1 completions"),
    ("prm800k", {"question": "q"}, "missing field"),
])
def test_bad_records_name_the_line(tmp_path, fmt, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n" + json.dumps(row) + "\n")
    with pytest.raises(RecordError, match=rf"bad\.jsonl:2: .*{message}"):
        formats.import_file(path, fmt)


def test_cli_convert(tmp_path):
    out = tmp_path / "pb.jsonl"
    result = CliRunner().invoke(app, ["convert", str(find_data_file("processbench/math.json")), "--from",
                                      "processbench", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out, Trajectory)) == 30
    trl = tmp_path / "trl.jsonl"
    result = CliRunner().invoke(app, ["convert", str(out), "--from", "trl", "-o", str(trl)])
    assert result.exit_code == 2 and "missing field" in result.output

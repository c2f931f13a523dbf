import json

import pytest

from stepforge.loaders import load_gsm8k, load_problems, reference_trajectories, strip_annotations
from stepforge.schema import RecordError
from stepforge.verify.equations import step_is_arithmetically_valid


def test_gsm8k_test_split_from_the_fixture():
    problems = load_gsm8k("test")
    assert len(problems) == 40  # tests/data/gsm8k: the first 40 of the 1,319
    first = problems[0]
    assert first.answer == "18" and first.id == "gsm8k-test-0"
    assert first.meta["reference_steps"][0] == "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day."
    assert strip_annotations(first.meta["reference_steps"][0]) == "Janet sells 16 - 3 - 4 = 9 duck eggs a day."
    refs = reference_trajectories(problems[:3])
    assert refs[0].step_labels == [1.0, 1.0] and refs[0].label_source == "human"


def test_equation_checker_on_real_gsm8k_references():
    steps = [s for p in load_gsm8k("test") for s in p.meta["reference_steps"]]
    verdicts = [step_is_arithmetically_valid(s) for s in steps]
    checked = [v for v in verdicts if v is not None]
    assert len(checked) > 100
    assert sum(not v for v in checked) <= 1  # reference steps are right up to a few typos in the data
    assert not step_is_arithmetically_valid("So, Suzzane has $32 - $20 = $300 left.")  # one of those typos


def test_generic_jsonl_with_field_mapping(tmp_path):
    path = tmp_path / "math.jsonl"
    rows = [{"problem": "1+1?", "solution": "2", "level": 1}, {"problem": "2+2?", "solution": "4", "level": 2}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems = load_problems(str(path), fields={"question": "problem", "answer": "solution"})
    assert [p.question for p in problems] == ["1+1?", "2+2?"]
    assert problems[1].answer == "4" and problems[1].meta == {"level": 2} and problems[0].id == "math-0"


def test_generic_loader_names_the_line_of_a_missing_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: missing field 'answer'"):
        load_problems(str(path))


def test_saved_hf_dataset_and_parquet(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list([{"q": "x?", "a": "1"}, {"q": "y?", "a": "2"}])
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    for source in (tmp_path / "saved", tmp_path / "d.parquet"):
        problems = load_problems(str(source), fields={"question": "q", "answer": "a"})
        assert [p.answer for p in problems] == ["1", "2"]


def test_gsm8k_answer_without_final_line(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(RecordError, match=r"g\.jsonl:1: GSM8K answer has no '#### N' line"):
        load_gsm8k(str(path))

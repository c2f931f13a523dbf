import json

import pytest

from stepforge.schema import (
    Problem,
    RecordError,
    Trajectory,
    read_jsonl,
    read_records,
    repair_jsonl_tail,
    write_jsonl,
    write_records,
)


def traj(i: int = 0, **kw) -> Trajectory:
    base = dict(id=f"t{i}", problem_id="p", question="q", steps=["a", "b"], step_labels=[1.0, 0.25],
                label_source="mc", first_error=1, correct=False, final_answer="3", meta={"k": i})
    base.update(kw)
    return Trajectory(**base)


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "t.jsonl"
    records = [traj(i) for i in range(3)]
    write_jsonl(path, records)
    assert read_jsonl(path, Trajectory) == records


def test_parquet_round_trip_keeps_soft_labels_and_free_form_meta(tmp_path):
    path = tmp_path / "t.parquet"
    records = [traj(0, meta={"a": 1}), traj(1, meta={"b": [1, "x"]}, step_labels=[None, 0.5])]
    write_records(path, records)
    back = read_records(path, Trajectory)
    assert back == records
    assert back[0].step_labels == [1.0, 0.25]


def test_unlabeled_trajectory_gets_all_none_labels():
    t = Trajectory(id="t", problem_id="p", question="q", steps=["a", "b", "c"])
    assert t.step_labels == [None, None, None]


def test_label_count_mismatch_names_file_line_and_record(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = traj(0).model_dump()
    bad = traj(1).model_dump() | {"step_labels": [1.0]}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:3: .*'t1'.*1 step_labels for 2 steps"):
        read_jsonl(path, Trajectory)


def test_label_outside_unit_interval(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(traj(0).model_dump() | {"step_labels": [1.0, 1.5]}) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:1: .*step_labels\[1\] = 1.5 is outside"):
        read_jsonl(path, Trajectory)


def test_malformed_json_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(traj(0).model_dump()) + "\n{not json\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: malformed JSON"):
        read_jsonl(path, Trajectory)


def test_missing_field_names_the_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "p1", "question": "q"}) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:1: invalid Problem: answer: Field required"):
        read_jsonl(path, Problem)


def test_first_error_must_index_a_step():
    with pytest.raises(ValueError, match="first_error 5 is not a step index"):
        traj(0, first_error=5)


def test_parquet_error_names_row(tmp_path):
    path = tmp_path / "p.parquet"
    from datasets import Dataset

    Dataset.from_list([{"id": "a", "question": "q", "answer": "1", "meta": "{}"},
                       {"id": "b", "question": "q", "answer": "2", "meta": "{oops"}]).to_parquet(str(path))
    with pytest.raises(RecordError, match=r"p\.parquet: row 1: column 'meta' is not valid JSON"):
        read_records(path, Problem)


def test_repair_drops_partial_last_line(tmp_path):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [traj(0), traj(1)])
    with path.open("a") as f:
        f.write('{"id": "t2", "probl')  # a writer killed mid-line
    assert repair_jsonl_tail(path) > 0
    assert [t.id for t in read_jsonl(path, Trajectory)] == ["t0", "t1"]
    assert repair_jsonl_tail(path) == 0

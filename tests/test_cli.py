import json

from typer.testing import CliRunner

from stepforge.cli import app
from stepforge.schema import Trajectory, read_jsonl

runner = CliRunner()


def test_demo_writes_trajectories_and_summary(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--problems", "12", "--n", "4", "--no-search"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    trajs = read_jsonl(out / "trajectories.jsonl", Trajectory)
    assert len(trajs) == 48 and summary["problems"] == 12 and summary["n"] == 4
    for key in ("greedy_accuracy", "majority_accuracy", "oracle_accuracy", "step_error_rate"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["oracle_accuracy"] >= summary["sample_accuracy"]
    assert "majority vote" in result.output and "per-step error rate" in result.output


def test_sample_world_then_rerun_resumes(tmp_path):
    out = tmp_path / "s"
    args = ["sample", "--data", "world", "--limit", "6", "--n", "2", "--out", str(out), "--batch-problems", "3"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    before = (out / "trajectories.jsonl").read_text()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "2 batches were already done" in again.output
    assert (out / "trajectories.jsonl").read_text() == before


def test_sample_gsm8k_format_with_the_world_policy(tmp_path):
    # any backend on GSM8K-format data: the tiny policy is hopeless at it, but the pipeline runs
    data = tmp_path / "short.jsonl"
    data.write_text('{"question": "What is 2+3?", "answer": "5"}\n{"question": "What is 4*2?", "answer": "8"}\n')
    out = tmp_path / "g"
    result = runner.invoke(app, ["sample", "--data", str(data), "--task", "gsm8k", "--n", "2", "--out", str(out),
                                 "--max-new-tokens", "16", "--no-greedy"])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out / "trajectories.jsonl", Trajectory)) == 4


def test_prompts_longer_than_the_context_are_refused_before_generation(tmp_path):
    # real GSM8K questions + the few-shot block exceed the world policy's 512 positions
    out = tmp_path / "g"
    result = runner.invoke(app, ["sample", "--data", "gsm8k:test", "--limit", "2", "--n", "2", "--out", str(out),
                                 "--max-new-tokens", "16", "--no-greedy"])
    assert result.exit_code == 2
    assert "problem 'gsm8k-test-0': too long" in result.output.replace("\n", "") and not out.exists()
    skipped = runner.invoke(app, ["sample", "--data", "gsm8k:test", "--limit", "2", "--n", "2", "--out", str(out),
                                  "--max-new-tokens", "16", "--no-greedy", "--skip-too-long"])
    assert skipped.exit_code == 0, skipped.output
    summary = json.loads((out / "summary.json").read_text())
    assert "gsm8k-test-0" in summary["skipped_too_long"]
    assert all(t.problem_id not in summary["skipped_too_long"]
               for t in read_jsonl(out / "trajectories.jsonl", Trajectory))


def test_sample_bad_data_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": \n')
    result = runner.invoke(app, ["sample", "--data", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "bad.jsonl:2: malformed JSON" in result.output.replace("\n", "")


def test_sample_unreachable_server(tmp_path):
    result = runner.invoke(app, ["sample", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
                                 "--limit", "1", "--n", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "server unreachable" in result.output

"""Issue #17: outputs are never lost and never silently reused; inputs are guarded."""

import json
import os

import pytest
from typer.testing import CliRunner

from stepforge.cli import app
from stepforge.jobs import Batch, run_resumable
from stepforge.runs import RunMismatchError, atomic_write_text, claim_output, identity_diff
from stepforge.schema import RecordError, Trajectory, read_jsonl, write_jsonl
from stepforge.worlds.arith.problems import generate_problems

runner = CliRunner()


def _flat(output: str) -> str:
    return output.replace("\n", " ")


def _world_trajectories(path, n_problems=3, seed=1):
    """Reference solutions of world problems (all correct) as a trajectory file."""
    from stepforge.worlds.arith.problems import parse_question

    trajs = []
    for p in generate_problems(n_problems, seed=seed):
        steps = parse_question(p.question).steps
        trajs.append(Trajectory(id=f"{p.id}/r", problem_id=p.id, question=p.question, steps=steps,
                                final_answer=p.answer, correct=True))
    write_jsonl(path, trajs)
    return trajs


def test_an_empty_input_never_touches_an_existing_output(tmp_path):
    src, keep, empty = tmp_path / "in.jsonl", tmp_path / "keep.jsonl", tmp_path / "empty.jsonl"
    _world_trajectories(src)
    assert runner.invoke(app, ["label", "-i", str(src), "-o", str(keep), "--method", "truth"]).exit_code == 0
    before = keep.read_text()
    empty.write_text("")
    result = runner.invoke(app, ["label", "-i", str(empty), "-o", str(keep), "--method", "truth"])
    assert result.exit_code == 2 and "no records" in _flat(result.output)
    assert keep.read_text() == before


def test_labeling_another_input_into_the_same_output_is_refused(tmp_path):
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "out.jsonl"
    _world_trajectories(a, seed=1)
    _world_trajectories(b, seed=2)
    assert runner.invoke(app, ["label", "-i", str(a), "-o", str(out), "--method", "truth"]).exit_code == 0
    before = out.read_text()
    result = runner.invoke(app, ["label", "-i", str(b), "-o", str(out), "--method", "truth"])
    assert result.exit_code == 2 and "input.sha256_ends" in result.output and out.read_text() == before


def test_a_rerun_with_another_method_names_the_field_and_overwrite_starts_afresh(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "lab.jsonl"
    _world_trajectories(src, n_problems=2)
    base = ["label", "-i", str(src), "-o", str(out), "--k", "2", "--max-new-tokens", "64"]
    assert runner.invoke(app, [*base, "--method", "mc"]).exit_code == 0
    before = out.read_text()
    result = runner.invoke(app, [*base, "--method", "binary"])
    assert result.exit_code == 2
    assert "method: 'mc' -> 'binary'" in result.output and "--overwrite" in result.output
    assert out.read_text() == before
    again = runner.invoke(app, [*base, "--method", "mc"])  # same settings: resumes, nothing to do
    assert again.exit_code == 0 and "already labeled" in again.output and out.read_text() == before
    fresh = runner.invoke(app, [*base, "--method", "binary", "--overwrite"])
    assert fresh.exit_code == 0
    assert {t.label_source for t in read_jsonl(out, Trajectory)} == {"binary"}


def test_sample_rerun_with_another_seed_or_temperature_is_refused(tmp_path):
    out = tmp_path / "s"
    base = ["sample", "--data", "world", "--limit", "3", "--n", "2", "--out", str(out), "--no-greedy",
            "--max-new-tokens", "64"]
    assert runner.invoke(app, [*base, "--seed", "0"]).exit_code == 0
    before = (out / "trajectories.jsonl").read_text()
    seed = runner.invoke(app, [*base, "--seed", "1"])
    assert seed.exit_code == 2 and "seed: 0 -> 1" in seed.output
    temp = runner.invoke(app, [*base, "--seed", "0", "--temperature", "0"])
    assert temp.exit_code == 2 and "temperature: 1.0 -> 0.0" in temp.output
    assert (out / "trajectories.jsonl").read_text() == before
    assert json.loads((out / "summary.json").read_text())["temperature"] == 1.0


def test_demo_with_another_n_is_refused(tmp_path):
    out = tmp_path / "demo"
    base = ["demo", "--out", str(out), "--problems", "3", "--no-search"]
    assert runner.invoke(app, [*base, "--n", "2"]).exit_code == 0
    result = runner.invoke(app, [*base, "--n", "4"])
    assert result.exit_code == 2 and "n: 2 -> 4" in result.output
    assert json.loads((out / "summary.json").read_text())["n"] == 2


def test_rl_with_another_credit_is_refused(tmp_path):
    out = tmp_path / "rl"
    base = ["rl", "--out", str(out), "--steps", "1", "--problems-per-step", "2", "--samples-per-problem", "2"]
    assert runner.invoke(app, [*base, "--credit", "outcome"]).exit_code == 0, "first run"
    result = runner.invoke(app, [*base, "--credit", "min"])
    assert result.exit_code == 2 and "credit: 'outcome' -> 'min'" in result.output


def test_claim_output_rules(tmp_path):
    out = tmp_path / "x.jsonl"
    assert claim_output(out, {"a": 1, "cfg": {"k": 8}}) is False  # fresh
    out.write_text("{}\n")
    assert claim_output(out, {"a": 1, "cfg": {"k": 8}}) is True  # same identity: resume
    with pytest.raises(RunMismatchError, match=r"cfg\.k: 8 -> 4"):
        claim_output(out, {"a": 1, "cfg": {"k": 4}})
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("{}\n")
    with pytest.raises(RunMismatchError, match="no run manifest"):
        claim_output(foreign, {"a": 1})
    assert claim_output(foreign, {"a": 1}, overwrite=True) is False and not foreign.exists()
    assert identity_diff({"a": 1}, {"b": 2}) == ["a: 1 -> '(absent)'", "b: '(absent)' -> 2"]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_job_never_drops_records_it_does_not_own(tmp_path):
    out = tmp_path / "out.jsonl"
    trajs = _world_trajectories(tmp_path / "in.jsonl")
    write_jsonl(out, [trajs[0].model_copy(update={"id": "someone-else"})])
    batches = [Batch(0, trajs, [t.id for t in trajs])]
    with pytest.raises(RecordError, match="someone-else"):
        run_resumable(out, batches, Trajectory, lambda b: b.items, id_of=lambda t: t.id)
    assert read_jsonl(out, Trajectory)[0].id == "someone-else"


class CountingPolicy:
    """Wraps a policy and counts generate calls (none may happen for refused inputs)."""

    def __init__(self, inner):
        self.inner, self.calls, self.name = inner, 0, "counting"
        self.max_context = inner.max_context
        self.count_tokens = inner.count_tokens

    def generate(self, *args, **kwargs):
        self.calls += 1
        return self.inner.generate(*args, **kwargs)


def test_an_over_long_step_is_reported_by_name_before_any_generation(tmp_path, world_policy):
    from stepforge.label.runner import LabelConfig, label_file
    from stepforge.worlds.arith import ARITH

    trajs = _world_trajectories(tmp_path / "in.jsonl", n_problems=3)
    long = trajs[1].model_copy(update={"steps": [*trajs[1].steps[:-1], "a+1=" + "1" * 4200, trajs[1].steps[-1]],
                                       "step_labels": []})
    write_jsonl(tmp_path / "in.jsonl", [trajs[0], long, trajs[2]])
    policy = CountingPolicy(world_policy)
    with pytest.raises(RecordError, match=rf"trajectory '{long.id}': too long for"):
        label_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", ARITH, LabelConfig(method="mc", k=2), policy)
    assert policy.calls == 0 and not (tmp_path / "out.jsonl").exists()
    label_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", ARITH, LabelConfig(method="mc", k=2, max_new_tokens=64),
               policy, skip_too_long=True)
    out = read_jsonl(tmp_path / "out.jsonl", Trajectory)
    assert "too long" in out[1].meta["skipped"] and all(v is None for v in out[1].step_labels)
    assert out[0].label_source == "mc" and out[2].label_source == "mc"


class RefusingTokenizer:
    """A tokenizer that fails the test if it is ever asked to tokenize a huge text."""

    def __init__(self, inner):
        self.inner = inner
        self.pad_token_id = inner.pad_token_id

    def __call__(self, text, *args, **kwargs):
        assert len(text) < 1_000_000, "a multi-megabyte text reached the tokenizer"
        return self.inner(text, *args, **kwargs)


def test_a_50mb_step_is_refused_before_tokenizing():
    from stepforge.prm.model import ProcessRewardModel
    from stepforge.tasks import get_world

    prm = ProcessRewardModel.from_pretrained(get_world().prm_dir)
    prm.tokenizer = RefusingTokenizer(prm.tokenizer)
    huge = Trajectory(id="huge", problem_id="p", question="1 a+1", steps=["a+1=" + "2" * 50_000_000])
    with pytest.raises(RecordError, match=r"huge.*cannot fit the PRM's max_length"):
        prm.score([huge])

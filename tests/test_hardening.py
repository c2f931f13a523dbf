"""Issue #16: real servers, real data, bad input, one source of truth."""

import json
import time

import pytest
from scripted import CheckerScorer, flaky_server
from typer.testing import CliRunner

from stepforge import formats
from stepforge.backends.base import BackendError
from stepforge.backends.openai_backend import OpenAIPolicy
from stepforge.backends.server import CompletionsHandler, PolicyServer, serve_in_thread
from stepforge.cli import app
from stepforge.loaders import find_data_file
from stepforge.sample import sample_trajectories
from stepforge.schema import Trajectory, read_jsonl, write_jsonl
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.problems import generate_problems

runner = CliRunner()
PROMPTS = ["40 a-6 b*2 c-4 d+3\n", "12 a+7 b*3\n", "5 a*4 b-2 c+9\n"]


def _server(policy, handler):
    srv = PolicyServer(policy, handler=handler)
    serve_in_thread(srv)
    return srv


class _Rewriting(CompletionsHandler):
    """Rewrites our server's JSON reply like a different (spec-following) server would."""

    def rewrite(self, body: dict, reply: dict) -> dict:
        return reply

    def send_json(self, status, body):
        if status == 200 and "choices" in body:
            body = self.rewrite(self._request, body)
        super().send_json(status, body)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._request = json.loads(raw or b"{}")
        self.rfile = __import__("io").BytesIO(raw)
        super().do_POST()


class IgnoresListPrompts(_Rewriting):
    """Answers a list prompt as if it were its first prompt alone (n choices, not n·len)."""

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        if isinstance(body.get("prompt"), list):
            body["prompt"] = body["prompt"][0]
        data = json.dumps(body).encode()
        self.headers.replace_header("Content-Length", str(len(data)))
        self.rfile = __import__("io").BytesIO(data)
        self._request = body
        CompletionsHandler.do_POST(self)


class UsageOnly(_Rewriting):
    """Per-choice token counts and stop reasons removed: only ``usage`` says what was spent."""

    def rewrite(self, body, reply):
        for ch in reply["choices"]:
            ch.pop("completion_tokens", None)
            ch.pop("stop_reason", None)
        return reply


def test_a_server_that_ignores_list_prompts_is_detected_and_sent_one_prompt_each(world_policy, caplog):
    srv = _server(world_policy, IgnoresListPrompts)
    try:
        remote = OpenAIPolicy(srv.base_url, "stepforge", prompts_per_request=8)
        with caplog.at_level("WARNING"):
            res = remote.generate(PROMPTS, n=2, max_new_tokens=40, temperature=0.0)
        local = world_policy.generate(PROMPTS, n=2, max_new_tokens=40, temperature=0.0)
        assert res.texts() == local.texts() and remote.list_prompts_ok is False
        assert "ignores a list 'prompt'" in caplog.text
    finally:
        srv.shutdown()


def test_token_costs_come_from_usage_when_choices_do_not_say(world_policy):
    srv = _server(world_policy, UsageOnly)
    try:
        res = OpenAIPolicy(srv.base_url, "stepforge").generate(PROMPTS, n=3, max_new_tokens=40, seed=1)
        local = world_policy.generate(PROMPTS, n=3, max_new_tokens=40, seed=1)
        assert res.cost.generated_tokens == local.cost.generated_tokens > 0
        assert sum(c.tokens for row in res.completions for c in row) == res.cost.generated_tokens
        assert all(c.stop_reason is None for row in res.completions for c in row)
    finally:
        srv.shutdown()


def test_a_truncated_200_reply_is_retried_like_a_5xx(world_policy):
    srv, attempts = flaky_server(world_policy, failures=2, body=b'{"id": "cmpl-1", "choices": [{"te')
    try:
        res = OpenAIPolicy(srv.base_url, "stepforge", max_retries=3).generate(PROMPTS[:1], n=2, max_new_tokens=20,
                                                                              seed=0)
        assert attempts["n"] == 3 and len(res.completions[0]) == 2
    finally:
        srv.shutdown()


class Slow(CompletionsHandler):
    def do_POST(self):
        time.sleep(1.5)
        super().do_POST()


def test_a_timeout_says_timed_out(world_policy):
    srv = _server(world_policy, Slow)
    try:
        with pytest.raises(BackendError, match=r"timed out after 0\.3 s, 1 attempts"):
            OpenAIPolicy(srv.base_url, "stepforge", timeout=0.3, max_retries=0).generate(PROMPTS[:1])
    finally:
        srv.shutdown()


def test_an_unknown_model_name_gets_a_404(world_policy):
    srv = _server(world_policy, CompletionsHandler)
    try:
        with pytest.raises(BackendError, match="does not serve model 'gpt-9'"):
            OpenAIPolicy(srv.base_url, "gpt-9", max_retries=0).generate(PROMPTS[:1], max_new_tokens=4)
        assert OpenAIPolicy(srv.base_url).model == "stepforge"  # no --model: the server's only one
    finally:
        srv.shutdown()


def test_same_seed_same_samples_served_and_local_at_any_batch_size(world_policy):
    problems = generate_problems(5, seed=3)

    def texts(policy, batch):
        return [t.steps for b in sample_trajectories(policy, problems, ARITH, n=3, seed=7, max_new_tokens=60,
                                                     batch_problems=batch) for t in b.trajectories]

    srv = _server(world_policy, CompletionsHandler)
    try:
        local_2, local_5 = texts(world_policy, 2), texts(world_policy, 5)
        served = texts(OpenAIPolicy(srv.base_url, "stepforge", concurrency=3), 4)
    finally:
        srv.shutdown()
    assert local_2 == local_5 == served
    assert texts(world_policy, 5) != [t.steps for b in sample_trajectories(
        world_policy, problems, ARITH, n=3, seed=8, max_new_tokens=60) for t in b.trajectories]


def test_the_first_k_of_n_samples_are_the_k_samples():
    from stepforge.backends import make_policy

    policy = make_policy("world")
    problems = generate_problems(3, seed=4)
    four = [t.steps for b in sample_trajectories(policy, problems, ARITH, n=4, seed=2) for t in b.trajectories]
    two = [t.steps for b in sample_trajectories(policy, problems, ARITH, n=2, seed=2) for t in b.trajectories]
    assert two == [s for i in range(3) for s in four[4 * i:4 * i + 2]]


def test_search_rules_share_one_sample_set_per_problem(tmp_path, world_policy):
    from stepforge.search.runner import SearchRecord, run_search

    class Counting:
        name = "counting"

        def __init__(self):
            self.calls = 0

        def generate(self, *args, **kwargs):
            self.calls += 1
            return world_policy.generate(*args, **kwargs)

    policy = Counting()
    problems = generate_problems(4, seed=9)
    run_search(problems, policy, CheckerScorer(), ARITH, ["majority", "bon", "oracle"], [2, 4], tmp_path / "r.jsonl")
    assert policy.calls == 1  # one sampling call at N = 4 serves every rule at N = 2 and 4
    recs = {r.id: r for r in read_jsonl(tmp_path / "r.jsonl", SearchRecord)}
    for p in problems:
        assert recs[f"majority/2/{p.id}"].trace["answers"] == recs[f"bon/4/{p.id}"].trace["answers"][:2]


def test_eval_prm_on_processbench_with_a_scores_file_as_json(tmp_path):
    gold = tmp_path / "pb.jsonl"
    assert runner.invoke(app, ["convert", str(find_data_file("processbench/gsm8k.json")), "--from", "processbench",
                               "-o", str(gold)]).exit_code == 0
    trajs = read_jsonl(gold, Trajectory)
    # a "PRM" that knows the answer except on two solutions: F1 must come out high, not perfect
    scored = []
    for i, t in enumerate(trajs):
        labels = list(t.step_labels) if i % 10 else [1.0] * len(t.steps)
        scored.append(t.model_copy(update={"meta": {**t.meta, "prm_scores": labels}}))
    write_jsonl(tmp_path / "scored.jsonl", scored)
    result = runner.invoke(app, ["eval-prm", "--data", str(gold), "--scores", str(tmp_path / "scored.jsonl"),
                                 "--task", "gsm8k", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert 0.5 < report["f1"] < 1.0 and {"acc_err", "acc_ok", "threshold", "auc"} <= set(report)


def test_processbench_round_trip_is_byte_for_byte(tmp_path):
    src = find_data_file("processbench/math.json")
    mid, back = tmp_path / "mid.jsonl", tmp_path / "back.json"
    assert runner.invoke(app, ["convert", str(src), "--from", "processbench", "-o", str(mid)]).exit_code == 0
    result = runner.invoke(app, ["convert", str(mid), "--from", "stepforge", "--to", "processbench", "-o", str(back)])
    assert result.exit_code == 0, result.output
    assert back.read_bytes() == src.read_bytes()
    for to in ("prm800k", "trl", "math-shepherd"):
        out = tmp_path / f"x.{to}.jsonl"
        args = ["convert", str(mid), "--from", "stepforge", "--to", to, "-o", str(out)]
        assert runner.invoke(app, args).exit_code == 0
        assert len(out.read_text().splitlines()) == 30


def test_prmbench_import_reads_1_based_error_steps(tmp_path):
    row = {"idx": "r1", "modified_question": "Q", "original_question": "Q", "classification": "circular",
           "modified_process": ["1. a", "2. b", "3. c"], "original_process": ["1. a", "2. b'"], "error_steps": [2, 3]}
    past = {**row, "idx": "r2", "error_steps": [7]}  # names no step of the process: skipped
    path = tmp_path / "pb.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(past) + "\n")
    mod, orig = formats.import_file(path, "prmbench")
    assert mod.first_error == 1 and mod.step_labels == [1.0, 0.0, 0.0] and mod.meta["classification"] == "circular"
    assert orig.id == "r1/original" and orig.first_error is None
    assert len(formats.import_file(find_data_file("prmbench/prm800k_test_p1_4o_circular.jsonl"), "prmbench")) == 20


@pytest.mark.parametrize("args, message", [
    (["label", "-i", "{tmp}", "-o", "{tmp}/o.jsonl", "--method", "truth"], "is a directory"),
    (["label", "-i", "{tmp}/latin1.jsonl", "-o", "{tmp}/o.jsonl", "--method", "truth"], "latin1.jsonl:1: not UTF-8"),
    (["label", "-i", "{tmp}/missing.jsonl", "-o", "{tmp}/o.jsonl"], "missing.jsonl: no such file"),
    (["label", "-i", "{tmp}/dup.jsonl", "-o", "{tmp}/o.jsonl", "--method", "truth"],
     "duplicate id 't1' (records 1 and 2)"),
    (["label", "-i", "{tmp}/dup.jsonl", "-o", "{tmp}/o.jsonl", "--min-correct", "99", "--k", "8"],
     "--min-correct 99 can never be reached"),
    (["sample", "--backend", "transformers", "--model", "{tmp}/nope", "--out", "{tmp}/s"], "nope: no such model"),
    (["sample", "--backend", "transformers", "--model", "{tmp}", "--out", "{tmp}/s"], "not a model directory"),
    (["sample", "--data", "world", "--device", "cuda", "--out", "{tmp}/s"], "CUDA is not available"),
    (["search", "--budgets", "abc", "--out", "{tmp}/s"], "--budgets must be a comma list of integers"),
    (["demo", "--min-steps", "9", "--max-steps", "2", "--out", "{tmp}/d"], "--min-steps 9 is more than --max-steps 2"),
    (["score", "--prm", "{tmp}/nope", "-i", "{tmp}/dup.jsonl", "-o", "{tmp}/o.jsonl"], "duplicate id"),
    (["eval-prm", "--data", "{tmp}/dup.jsonl"], "exactly one of --prm DIR and --scores FILE"),
    (["convert", "{tmp}/prm800k.jsonl", "--from", "prm800k", "-o", "{tmp}/o.jsonl"], "chosen_completion 3 is not"),
    (["serve", "--backend", "nope"], "unknown backend 'nope'"),
    (["label-report", "{tmp}/other.jsonl", "--truth", "{tmp}/truth.jsonl"], "shares no trajectory ids"),
])
def test_bad_input_gives_a_clear_error_not_a_traceback(tmp_path, args, message):
    (tmp_path / "latin1.jsonl").write_bytes(b'{"id": "caf\xe9"}\n')
    t = Trajectory(id="t1", problem_id="p", question="1 a+1", steps=["a+1=2", "Answer: 2"])
    write_jsonl(tmp_path / "dup.jsonl", [t, t])
    write_jsonl(tmp_path / "truth.jsonl", [t])
    write_jsonl(tmp_path / "other.jsonl", [t.model_copy(update={"id": "t2"})])
    (tmp_path / "prm800k.jsonl").write_text(json.dumps({"question": {"problem": "Q"}, "label": {"steps": [
        {"completions": [{"text": "a", "rating": 1}], "chosen_completion": 3}]}}) + "\n")
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in _flat(result.output), result.output


@pytest.mark.parametrize("args", [
    ["demo", "--problems", "0"], ["demo", "--n", "0"], ["label", "-i", "x", "-o", "y", "--workers", "0"],
    ["sample", "--limit", "0"], ["train-prm", "--train", "x", "--out", "y", "--epochs", "0"],
    ["label", "-i", "x", "-o", "y", "--k", "0"],
])
def test_impossible_options_are_rejected(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and ("Invalid value" in result.output or "not in the range" in result.output)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_train_prm_defaults_come_from_the_config(tmp_path):
    from stepforge.prm.train import PRMTrainConfig
    from stepforge.schema import truth_labels

    data = [Trajectory(id=f"t{i}", problem_id="p", question="5 a+1 b*2", steps=["a+1=6", "b*2=12", "Answer: 12"],
                       step_labels=truth_labels(3, None if i % 2 else 1), label_source="truth") for i in range(8)]
    write_jsonl(tmp_path / "train.jsonl", data)
    result = runner.invoke(app, ["train-prm", "--train", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "prm"),
                                 "--epochs", "0.5"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "prm" / "stepforge_train.json").read_text())
    defaults = PRMTrainConfig()
    assert (record["readout"], record["lr"], record["freeze_backbone"]) == \
        (defaults.readout, defaults.lr, defaults.freeze_backbone) == ("prefix_min", 3e-3, True)
    again = runner.invoke(app, ["train-prm", "--train", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "prm")])
    assert again.exit_code == 2 and "--overwrite" in again.output

"""Issue #10: one Task seam, chat models, the math task, step completion from text, devices."""

import json

import pytest
import torch
from scripted import CheckerScorer
from typer.testing import CliRunner

from stepforge.backends.chat import render_chat
from stepforge.backends.device import resolve_device, resolve_dtype
from stepforge.backends.openai_backend import OpenAIPolicy
from stepforge.backends.server import CompletionsHandler, PolicyServer, serve_in_thread
from stepforge.cli import app
from stepforge.schema import Problem, Trajectory, read_jsonl
from stepforge.search.beam import beam_search
from stepforge.tasks import MATH, Chat, Task, get_task, get_world, register_task
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.problems import generate_problems

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chat_model_dir(path):
    """A 2-layer Llama over a character tokenizer with a chat template, saved like a hub model."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    vocab = {w: i for i, w in enumerate(special + [chr(c) for c in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(special)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=2048, pad_token_id=0, bos_token_id=1,
                                         eos_token_id=2))
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_user_code_registers_a_task_that_every_command_sees():
    task = register_task(Task(name="echo-test", build_prompt=lambda p: p.question + "\n",
                              extract_answer=lambda text: text.strip().splitlines()[-1] if text.strip() else None,
                              answer_mode="exact"))
    assert get_task("echo-test") is task
    with pytest.raises(ValueError, match="already registered"):
        register_task(Task(name="echo-test", build_prompt=str, extract_answer=str))
    with pytest.raises(ValueError, match=r"unknown task 'nope'; available: .*arith.*gsm8k.*math"):
        get_task("nope")
    assert get_world().task is get_task("arith") is ARITH


def test_step_completion_is_decided_from_the_text():
    assert not ARITH.step_ends_solution("a-6=34", "stop")
    assert ARITH.step_ends_solution("Answer: 67", "stop")
    assert ARITH.step_ends_solution("  ", "stop")  # the model stopped (EOS right away)
    assert ARITH.step_ends_solution("a-6=3", "length")
    assert MATH.step_ends_solution("So the answer is $\\boxed{\\frac{1}{2}}$.", "stop")


class NoStopReason(CompletionsHandler):
    """A spec server: no stop_reason, no per-choice token counts (only what OpenAI's API has)."""

    def send_json(self, status, body):
        for ch in body.get("choices", []):
            ch.pop("stop_reason", None)
            ch.pop("completion_tokens", None)
        super().send_json(status, body)


def test_beam_search_against_a_server_without_stop_reason_searches_as_deep(world_policy):
    problems = generate_problems(3, seed=12)
    results = {}
    for name, handler in (("serve", CompletionsHandler), ("spec", NoStopReason)):
        srv = PolicyServer(world_policy, handler=handler)
        serve_in_thread(srv)
        try:
            policy = OpenAIPolicy(srv.base_url, "stepforge")
            results[name] = beam_search(problems, policy, CheckerScorer(), ARITH, 4, width=2, seed=1)
        finally:
            srv.shutdown()
    serve, spec = results["serve"], results["spec"]
    assert [r.trace["depth"] for r in spec] == [r.trace["depth"] for r in serve]
    assert min(r.trace["depth"] for r in spec) >= 5  # whole solutions, not one step each
    assert [r.steps for r in spec] == [r.steps for r in serve]


def test_chat_rendering_continues_the_assistant_answer(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_model_dir(tmp_path / "m"))
    p = Problem(id="p", question="What is 1/2 + 1/2?", answer="1")
    first = render_chat(tok, MATH.with_chat(True).prompt(p))
    assert first == f"<|system|>{MATH.system_prompt}<|end|><|user|>What is 1/2 + 1/2?<|end|><|assistant|>"
    cont = render_chat(tok, MATH.with_chat(True).prefix_prompt(p, ["We add the halves."]))
    assert cont.endswith("<|assistant|>We add the halves.\n\n")  # no end-of-turn; the separator kept
    plain = MATH.prefix_prompt(p, ["We add the halves."])
    assert isinstance(plain, str) and plain.endswith("Solution:\nWe add the halves.\n\n")
    with pytest.raises(ValueError, match="no chat template"):
        from stepforge.worlds.arith.tokenizer import build_tokenizer

        render_chat(build_tokenizer(), Chat(({"role": "user", "content": "hi"},)))


def test_sample_math500_with_a_chat_model(tmp_path):
    model = chat_model_dir(tmp_path / "m")
    out = tmp_path / "s"
    result = CliRunner().invoke(app, ["sample", "--data", "math500", "--limit", "3", "--backend", "transformers",
                                      "--model", str(model), "--chat", "--n", "2", "--max-new-tokens", "12",
                                      "--out", str(out), "--no-greedy", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    trajs = read_jsonl(out / "trajectories.jsonl", Trajectory)
    summary = json.loads((out / "summary.json").read_text())
    assert len(trajs) == 6 and summary["task"] == "math" and summary["chat"] is True
    assert trajs[0].problem_id.startswith("test/")  # MATH-500's unique_id


def test_chat_through_an_openai_compatible_server(tmp_path):
    from stepforge.backends.transformers_backend import TransformersPolicy

    local = TransformersPolicy.from_pretrained(chat_model_dir(tmp_path / "m"), device="cpu")
    srv = PolicyServer(local, model_name="tiny")
    serve_in_thread(srv)
    try:
        remote = OpenAIPolicy(srv.base_url, "tiny")
        chat = MATH.with_chat(True).prefix_prompt(Problem(id="p", question="1+1?", answer="2"), ["Add them."])
        got = remote.generate([chat], n=2, max_new_tokens=8, seed=3).texts()
        assert got == local.generate([chat], n=2, max_new_tokens=8, seed=3).texts()
    finally:
        srv.shutdown()


def test_math_task_reads_boxed_answers_with_math_verify():
    steps = MATH.steps("We add.\n\nThe sum is $\\frac{2}{4} + \\frac{1}{4}$.\n\nSo $\\boxed{\\frac{3}{4}}$.")
    assert len(steps) == 3 and MATH.is_final_step(steps[-1])
    p = Problem(id="p", question="q", answer="0.75")
    assert MATH.answer_of(steps) == "\\frac{3}{4}" and MATH.solution_correct(p, steps)


def test_devices_and_dtypes():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu:0")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")

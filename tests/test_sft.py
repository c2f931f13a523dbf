"""Supervised fine-tuning on trajectories (TRL SFTTrainer; LoRA through peft)."""

import torch

from stepforge.schema import Trajectory
from stepforge.tasks import GSM8K
from stepforge.train.sft import SFTSettings, sft_rows, train_sft
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.policy import PolicyTrainConfig, build_model
from stepforge.worlds.arith.problems import parse_question
from stepforge.worlds.arith.tokenizer import build_tokenizer_with


def _traj(question: str, style: str = "detailed") -> Trajectory:
    p = parse_question(question)
    steps = p.solution_in(style).split("\n")
    return Trajectory(id=question, problem_id=question, question=question, steps=steps, final_answer=str(p.answer))


def test_sft_rows_use_the_tasks_prompt_and_solution_text():
    [row] = sft_rows([_traj("40 a-6 b*2")], ARITH)
    assert row == {"prompt": "40 a-6 b*2\n", "completion": "a-6=34\nb 34*2=60+8\nb*2=68\nAnswer: 68"}
    [chat] = sft_rows([Trajectory(id="g", problem_id="g", question="1+1?", steps=["1+1=2", "#### 2"])],
                      GSM8K.with_chat(True))
    assert chat["prompt"][-1] == {"role": "user", "content": "1+1?"}
    assert chat["completion"] == [{"role": "assistant", "content": "1+1=2\n#### 2"}]


def _completion_logp(model, tok, prompt: str, completion: str) -> float:
    ids = [*tok(prompt + completion).input_ids, tok.eos_token_id]
    n_prompt = len(tok(prompt).input_ids)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    target = torch.tensor(ids[1:])
    return float(logits[torch.arange(len(target)), target][n_prompt - 1:].sum())


def test_sft_raises_the_likelihood_of_the_trained_solutions_full_and_lora():
    tok = build_tokenizer_with(())
    data = [_traj(q) for q in ("40 a-6 b*2", "31 a*3 b-5", "17 a+4 b*2 c-1")] * 8
    row = sft_rows(data[:1], ARITH)[0]
    for settings in (SFTSettings(lr=3e-3, max_steps=12, batch_size=8),
                     SFTSettings(lr=1e-2, max_steps=12, batch_size=8, lora_rank=4)):
        model = build_model(PolicyTrainConfig(), tok)
        before = _completion_logp(model, tok, row["prompt"], row["completion"])
        trained, history = train_sft(model, tok, data, ARITH, settings)
        after = _completion_logp(trained, tok, row["prompt"], row["completion"])
        assert after > before + 5, (settings, before, after)
        assert type(trained).__name__ == "LlamaForCausalLM"  # LoRA merged back: saves as a plain model
        assert any("loss" in h for h in history)


def test_cli_train_sft_saves_a_policy_that_loads(tmp_path):
    from typer.testing import CliRunner

    from stepforge.backends.device import load_causal_lm
    from stepforge.cli import app
    from stepforge.schema import write_jsonl

    data = tmp_path / "expanded.jsonl"
    write_jsonl(data, [_traj("40 a-6 b*2"), _traj("31 a*3 b-5")])
    out = tmp_path / "sft"
    args = ["train-sft", "-i", str(data), "--out", str(out), "--max-steps", "2", "--batch-size", "2",
            "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model, tok = load_causal_lm(out, "cpu", "float32")
    assert model.config.vocab_size == len(tok)
    again = CliRunner().invoke(app, args)  # never replaces a model without --overwrite
    assert again.exit_code == 2 and "--overwrite" in again.output

"""Policy-training commands: pairs, train-dpo, train-sft, rl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stepforge.cli.common import (
    Backend,
    BaseUrl,
    ChatFlag,
    Device,
    Dtype,
    Model,
    Overwrite,
    Threads,
    TrainDtype,
    comma_list,
    command,
    console,
    data_identity,
    load_data,
    make_cli_policy,
    problems_index,
    progress,
    publish_dir,
    quiet_hf,
    refuse_existing,
    resolve_task,
)


def _policy_dir(policy: str | None, world: str | None = None) -> str:
    from stepforge.tasks import get_world

    if policy:
        return policy
    chosen = get_world(world)
    where = chosen.policy_dir(None)
    if where is None:
        raise FileNotFoundError(f"no trained {chosen.name} policy; run `stepforge train-world --world {chosen.name}`")
    return str(where)


@command()
def pairs(
    input: Annotated[Path, typer.Option("--input", "-i", help="labeled trajectories (first_error set)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="step pairs (JSONL, TRL DPO columns)")],
    candidates: Annotated[int, typer.Option(min=1, help="alternative steps sampled per first error")] = 8,
    k: Annotated[int, typer.Option(min=1, help="rollouts verifying each alternative")] = 4,
    min_value: Annotated[float, typer.Option(min=0.0, max=1.0, help="least MC value of a chosen step")] = 0.5,
    temperature: Annotated[float, typer.Option(min=0.001)] = 1.0,
    task: str = "arith",
    problems: Annotated[str | None, typer.Option(help="problems with answers (e.g. gsm8k:test)")] = None,
    backend: Backend = "world",
    model: Model = None,
    base_url: BaseUrl = None,
    seed: int = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """Step-DPO pairs: rejected = the first wrong step, chosen = a rollout-verified alternative."""
    from stepforge.label.methods import problem_of
    from stepforge.runs import atomic_write_jsonl
    from stepforge.schema import Trajectory, read_records
    from stepforge.tasks import get_task
    from stepforge.train.pairs import step_dpo_pairs

    quiet_hf(threads)
    chosen_task = get_task(task)
    data = [t for t in read_records(input, Trajectory, unique_ids=True) if t.first_error is not None]
    if not data:
        raise ValueError(f"{input}: no trajectory has a first error (label it first: `stepforge label`)")
    refuse_existing(out, overwrite)
    index = problems_index(problems)
    result = step_dpo_pairs(data, [problem_of(t, chosen_task, index) for t in data],
                            make_cli_policy(backend, model, base_url, device, dtype), chosen_task,
                            candidates=candidates, k=k, seed=seed, min_value=min_value, temperature=temperature)
    atomic_write_jsonl(out, result)
    console.print(f"{len(result)} pairs from {len(data)} trajectories with a first error; wrote [bold]{out}[/bold]")


def _save_policy(model, tokenizer, out: Path) -> None:
    """Model and tokenizer into ``out``, published atomically (replacing what is there)."""
    def save(where: Path) -> None:
        model.save_pretrained(where)
        tokenizer.save_pretrained(where)

    publish_dir(save, out, overwrite=True)


def _publish_policy(model, tokenizer, out: Path, what: str) -> None:
    _save_policy(model, tokenizer, out)
    console.print(f"trained on {what}; saved to [bold]{out}[/bold] (use it with --backend transformers --model {out})")


@command("train-dpo")
def train_dpo_cmd(
    pairs_file: Annotated[Path, typer.Option("--pairs", help="step pairs (JSONL)")],
    out: Annotated[Path, typer.Option(help="output policy directory")],
    policy: Annotated[str | None, typer.Option(help="policy dir (default: the world policy)")] = None,
    orpo: Annotated[bool, typer.Option(help="ORPO instead of DPO (no reference model)")] = False,
    beta: Annotated[float, typer.Option(min=0.0, help="DPO β (large: stops pushing once a step is preferred)")] = 0.5,
    lr: Annotated[float, typer.Option(min=0.0, help="constant learning rate; small policies need it small")] = 3e-6,
    epochs: Annotated[float, typer.Option(min=0.01)] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    sft_weight: Annotated[float, typer.Option(min=0.0, help="DPO: weight of an NLL term on the chosen step")] = 0.0,
    device: Device = "auto",
    dtype: TrainDtype = "float32",
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """Train a policy on step pairs with TRL's DPOTrainer (or ORPO) and save it."""
    from stepforge.backends.device import load_causal_lm
    from stepforge.schema import StepPair, read_records
    from stepforge.train.dpo import train_dpo, train_orpo

    quiet_hf(threads)
    refuse_existing(out, overwrite)
    data = read_records(pairs_file, StepPair)
    model, tok = load_causal_lm(_policy_dir(policy), device, dtype)
    if orpo:
        train_orpo(model, tok, data, lr=lr, steps=max(1, int(epochs * len(data) / batch_size)), batch_size=batch_size)
    else:
        train_dpo(model, tok, data, beta=beta, lr=lr, epochs=epochs, sft_weight=sft_weight, batch_size=batch_size)
    _publish_policy(model, tok, out, f"{len(data)} pairs")


@command("train-sft")
def train_sft_cmd(
    input: Annotated[Path, typer.Option("--input", "-i", help="trajectories to imitate (JSONL or Parquet)")],
    out: Annotated[Path, typer.Option(help="output policy directory")],
    policy: Annotated[str | None, typer.Option(help="model dir to start from (default: the world policy)")] = None,
    task: Annotated[str, typer.Option(help="the task whose prompt and solution format to train")] = "arith",
    chat: ChatFlag = None,
    lr: Annotated[float, typer.Option(min=0.0)] = 2e-5,
    epochs: Annotated[float, typer.Option(min=0.01)] = 1.0,
    max_steps: Annotated[int, typer.Option(help="stop after this many steps (-1: the epochs)")] = -1,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    max_length: Annotated[int, typer.Option(min=8, help="tokens of prompt + solution; longer rows are cut")] = 1024,
    lora_rank: Annotated[int, typer.Option(min=0, help="> 0: LoRA of this rank (peft), merged into the saved model")]
    = 0,
    seed: int = 0,
    device: Device = "auto",
    dtype: TrainDtype = "float32",
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """Fine-tune a policy on trajectories (e.g. `stepforge expand` output vs the original) with
    TRL's SFTTrainer, loss on the solution only, and save it."""
    from stepforge.backends.device import load_causal_lm
    from stepforge.schema import Trajectory, read_records
    from stepforge.train.sft import SFTSettings, train_sft

    quiet_hf(threads)
    refuse_existing(out, overwrite)
    data = read_records(input, Trajectory)
    model, tok = load_causal_lm(_policy_dir(policy), device, dtype)
    chosen = resolve_task(task, "", chat if chat is not None else False)
    settings = SFTSettings(lr=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size, max_length=max_length,
                           seed=seed, lora_rank=lora_rank)
    trained, _ = train_sft(model, tok, data, chosen, settings)
    _publish_policy(trained, tok, out, f"{len(data)} trajectories")


@command()
def rl(
    out: Annotated[Path, typer.Option(help="run directory (metrics.jsonl, checkpoint.pt); re-run resumes")],
    credit: Annotated[str, typer.Option(help="outcome | sum | min | min_vr | sum_vr (*_vr: the verifiable reward "
                                             "on the last step of --vr-share of the groups)")] = "min",
    world: Annotated[str | None, typer.Option(help="built-in world the problems, policy and PRM come from "
                                                   "(arith | arith-padded; default: arith)")] = None,
    vr_share: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="*_vr: share of groups given the "
                                                                          "verifiable reward (PURE: 0.1)")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="RL steps (default: RLConfig's)")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Adam learning rate (default: RLConfig's, which suits "
                                                           "--trainable norm)")] = None,
    trainable: Annotated[str | None, typer.Option(help="train only parameters whose names contain one of these "
                                                       "comma-separated parts ('' = all; then use lr ~1e-6)")] = None,
    kl_coef: Annotated[float | None, typer.Option(min=0.0)] = None,
    problems_per_step: Annotated[int | None, typer.Option(min=1)] = None,
    samples_per_problem: Annotated[int | None, typer.Option(min=2)] = None,
    temperature: Annotated[float | None, typer.Option(min=0.001, help="sampling temperature of the RL policy")]
    = None,
    gamma: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="sum-form discount")] = None,
    baseline: Annotated[str | None, typer.Option(help="grpo (group mean/std) | rloo (leave-one-out mean)")] = None,
    prm: Annotated[str | None, typer.Option(help="PRM directory (default: the world's shipped PRM), or 'implicit': "
                                                 "an implicit PRM started from the policy (PRIME)")] = None,
    prm_online_steps: Annotated[int, typer.Option(min=0, help="implicit PRM: refit steps on each batch's "
                                                              "outcomes")] = 0,
    policy: Annotated[str | None, typer.Option(help="policy dir (default: the world policy)")] = None,
    env: Annotated[str | None, typer.Option(help="multi-turn RL in this environment (agent | gsm8k-tool); "
                                                 "--credit oprl | gigpo | outcome | merged")] = None,
    data: Annotated[str | None, typer.Option(help="--env gsm8k-tool: the task pool (gsm8k:train, a JSONL file)")]
    = None,
    limit: Annotated[int | None, typer.Option(min=1, help="--data: at most this many tasks")] = None,
    alpha: Annotated[float | None, typer.Option(help="OPRL: weight of the step advantage")] = None,
    omega: Annotated[float | None, typer.Option(help="GiGPO: weight of the step advantage")] = None,
    beta: Annotated[float | None, typer.Option(min=0.0, help="OPRL: implicit reward scale")] = None,
    pairing: Annotated[str | None, typer.Option(help="OPRL DPO pairs: matched (paper) | all (released code)")]
    = None,
    turn_score: Annotated[str | None, typer.Option(help="OPRL DPO trajectory score: sum (paper) | mean (code)")]
    = None,
    step_baseline: Annotated[str | None, typer.Option(help="OPRL A^S baseline: steps (paper) | trajectories "
                                                           "(code)")] = None,
    score_before_update: Annotated[bool, typer.Option(help="OPRL: score turns before the PRM's DPO step "
                                                           "(released code)")] = False,
    norm_std: Annotated[bool, typer.Option(help="GiGPO / OPRL: normalise advantages by std (else centre only, the "
                                                "iStar code's mean_norm)")] = True,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="--env: per turn")] = None,
    micro_batch: Annotated[int | None, typer.Option(min=1, help="--env: episodes per forward pass (gradients "
                                                                "accumulate; default: the whole batch)")] = None,
    seed: int = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """RL on the built-in world with step-level credit assignment and hacking monitors, or
    (``--env``) multi-turn agent RL with turn-level credit (OPRL, GiGPO, outcome, merged).
    Defaults come from ``RLConfig`` / ``AgentRLConfig``; a re-run with the same settings resumes
    (``--steps`` may grow), a different one is refused unless ``--overwrite``."""
    if env is not None:
        agent = {"alpha": alpha, "omega": omega, "beta": beta, "pairing": pairing, "turn_score": turn_score,
                 "step_baseline": step_baseline, "max_new_tokens": max_new_tokens, "iterations": steps, "lr": lr,
                 "trainable": None if trainable is None else tuple(comma_list(trainable)), "gamma": gamma,
                 "tasks_per_iteration": problems_per_step, "episodes_per_task": samples_per_problem,
                 "temperature": temperature, "baseline": baseline, "micro_batch": micro_batch}
        _agent_rl(out, env, credit, data, limit, policy, seed, device, overwrite, threads,
                  {**{k: v for k, v in agent.items() if v is not None}, "score_before_update": score_before_update,
                   "norm_std": norm_std})
        return
    from dataclasses import asdict, replace

    from stepforge.backends.device import load_causal_lm
    from stepforge.prm.implicit import ImplicitPRM
    from stepforge.prm.model import ProcessRewardModel
    from stepforge.runs import claim_output, fingerprint
    from stepforge.tasks import get_world
    from stepforge.train.rl import RLConfig, train_rl

    quiet_hf(threads)
    given = {"steps": steps, "lr": lr, "kl_coef": kl_coef, "problems_per_step": problems_per_step,
             "samples_per_problem": samples_per_problem, "temperature": temperature, "gamma": gamma,
             "baseline": baseline, "trainable": None if trainable is None else tuple(comma_list(trainable)),
             "vr_share": vr_share, "world": world}
    cfg = replace(RLConfig(credit=credit, seed=seed, prm_online_steps=prm_online_steps),
                  **{k: v for k, v in given.items() if v is not None})
    where = _policy_dir(policy, cfg.world)
    prm_where = None if credit == "outcome" or prm == "implicit" else (prm or get_world(cfg.world).prm_dir)
    identity = {"command": "rl", **{k: v for k, v in asdict(cfg).items() if k != "steps"},
                "policy": fingerprint(where), "prm": "implicit" if prm == "implicit" else fingerprint(prm_where)}
    claim_output(out, identity, overwrite=overwrite)
    model, tok = load_causal_lm(where, device, "float32")
    if credit == "outcome":
        scorer = None
    elif prm == "implicit":
        scorer = ImplicitPRM(load_causal_lm(where, device, "float32")[0], tok)
    else:
        scorer = ProcessRewardModel.from_pretrained(prm_where, device=device)
    with progress() as bar:
        t = bar.add_task(f"RL ({credit})", total=cfg.steps, rate="")

        def on_step(row) -> None:
            bar.update(t, completed=row["step"], rate=f"acc {row['accuracy']:.2f} len {row['mean_tokens']:.0f}")
            for w in row["warnings"]:
                console.print(f"[yellow]step {row['step']}: {w}[/yellow]")

        train_rl(model, tok, out, cfg, scorer, on_step=on_step)

    _save_policy(model, tok, out / "policy")
    console.print(f"metrics in [bold]{out / 'metrics.jsonl'}[/bold]; policy in [bold]{out / 'policy'}[/bold]")


def _agent_rl(out: Path, env: str, credit: str, data: str | None, limit: int | None, policy: str | None, seed: int,
              device: str, overwrite: bool, threads: int, settings: dict) -> None:
    """``stepforge rl --env``: multi-turn RL (stepforge.train.agent_rl)."""
    from dataclasses import asdict

    from stepforge.backends.device import load_causal_lm
    from stepforge.runs import claim_output, fingerprint
    from stepforge.tasks import get_environment
    from stepforge.train.agent_rl import AgentRLConfig, train_agent_rl

    quiet_hf(threads)
    _, _, world = get_environment(env)
    if world is None and data is None:
        raise ValueError(f"--env {env} needs --data: the tasks to train on (e.g. gsm8k:train)")
    if world is None and policy is None:
        raise ValueError(f"--env {env} needs --policy: a causal LM directory (the world policies cannot read it)")
    if world is None:
        settings.setdefault("max_new_tokens", 128)
    cfg = AgentRLConfig(credit=credit, env=env, seed=seed, **settings)
    where = policy if policy is not None else _policy_dir(None, world.name)
    problems = load_data(data, limit, seed) if data is not None else None
    identity = {"command": "rl", **{k: v for k, v in asdict(cfg).items() if k != "iterations"},
                "policy": fingerprint(where), "data": data_identity(data) if data else None, "limit": limit}
    claim_output(out, identity, overwrite=overwrite)
    model, tok = load_causal_lm(where, device, "float32")
    with progress() as bar:
        t = bar.add_task(f"agent RL ({credit})", total=cfg.iterations, rate="")

        def on_iteration(row, _episodes) -> None:
            bar.update(t, completed=row["iteration"],
                       rate=f"success {row['success']:.2f} turns {row['mean_turns']:.1f}")
            for alarm in row["alarms"]:
                console.print(f"[yellow]iteration {row['iteration']}: {alarm}[/yellow]")

        train_agent_rl(model, tok, out, cfg, on_iteration=on_iteration, problems=problems)

    _save_policy(model, tok, out / "policy")
    console.print(f"metrics in [bold]{out / 'metrics.jsonl'}[/bold]; episodes in [bold]{out / 'episodes.jsonl'}"
                  f"[/bold]; policy in [bold]{out / 'policy'}[/bold]")


@command("train-orpo")
def train_orpo_cmd(
    input: Annotated[Path, typer.Option("--input", "-i", help="trajectories whose correct ones are the chosen "
                                                              "answers (one per problem is used)")],
    out: Annotated[Path, typer.Option(help="output policy directory")],
    policy: Annotated[str | None, typer.Option(help="model dir to start from (default: the world policy)")] = None,
    task: Annotated[str, typer.Option(help="the task whose prompts, checker and answers to use")] = "arith",
    regenerate_every: Annotated[int, typer.Option(min=0, help="resample the model's own wrong answers every N "
                                                              "steps (active); 0: once before training")] = 25,
    samples: Annotated[int, typer.Option(min=1, help="answers sampled per problem for rejected")] = 4,
    lam: Annotated[float, typer.Option(min=0.0, help="ORPO λ (0: SFT on the chosen answers only)")] = 0.1,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-5,
    steps: Annotated[int, typer.Option(min=1)] = 150,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    temperature: Annotated[float, typer.Option(min=0.001)] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    thinking: Annotated[bool, typer.Option(help="real data: prompts ask for a <|thinking|> scratchpad first")]
    = False,
    lora_rank: Annotated[int, typer.Option(min=0, help="> 0: LoRA of this rank (peft), merged into the saved model")]
    = 0,
    chat: ChatFlag = None,
    seed: int = 0,
    device: Device = "auto",
    dtype: TrainDtype = "float32",
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """PRefLexOR's Phase I: ORPO of chosen answers against the model's own wrong answers,
    regenerated as it trains (active learning)."""
    from stepforge.backends.device import load_causal_lm
    from stepforge.schema import Problem, Trajectory, read_records
    from stepforge.train.dpo import train_orpo_active

    quiet_hf(threads)
    refuse_existing(out, overwrite)
    data = read_records(input, Trajectory)
    model, tok = load_causal_lm(_policy_dir(policy), device, dtype)
    chosen_task = resolve_task(task, "", chat if chat is not None else False)
    chosen_task = chosen_task.with_thinking() if thinking else chosen_task
    chosen: dict[str, tuple[Problem, str]] = {}
    for t in data:
        if t.correct and t.problem_id not in chosen:
            chosen[t.problem_id] = (Problem(id=t.problem_id, question=t.question, answer=t.final_answer or ""),
                                    chosen_task.solution_text(t.steps))
    if not chosen:
        raise ValueError(f"{input}: no correct trajectory to use as a chosen answer")
    texts = {pid: text for pid, (_, text) in chosen.items()}
    if lora_rank > 0:
        from peft import get_peft_model

        from stepforge.train.sft import lora_config

        model = get_peft_model(model, lora_config(lora_rank))
    history = train_orpo_active(model, tok, chosen_task, [p for p, _ in chosen.values()], lambda p: texts[p.id],
                                regenerate_every=regenerate_every, samples=samples, lam=lam, lr=lr, steps=steps,
                                batch_size=batch_size, temperature=temperature, max_new_tokens=max_new_tokens,
                                seed=seed)
    if lora_rank > 0:
        model = model.merge_and_unload()
    console.print(f"final loss {history[-1]['loss']:.4f}; problems with a rejected answer at the end: "
                  f"{history[-1]['rejected_problems']}")
    _publish_policy(model, tok, out, f"{len(chosen)} chosen answers")

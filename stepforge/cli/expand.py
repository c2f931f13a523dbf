"""Step-expansion commands (MathFimer): expand, train-expander."""

from __future__ import annotations

import time
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
    PromptsPerRequest,
    Retries,
    Threads,
    Timeout,
    TokenizerDir,
    command,
    console,
    make_cli_policy,
    policy_identity,
    progress,
    quiet_hf,
    refuse_existing,
    resolve_task,
)


@command()
def expand(
    input: Annotated[Path, typer.Option("--input", "-i", help="trajectories to expand (JSONL or Parquet)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="expanded trajectories (JSONL, resumable)")],
    mode: Annotated[str, typer.Option(help="fim: the model's own FIM tokens | prompt: an instruction")] = "fim",
    fim_order: Annotated[str | None, typer.Option(help="fim: psm | spm, the order the model was trained in "
                                                       "(default: its train-expander record, else psm)")] = None,
    eta: Annotated[float, typer.Option(min=0.0, max=1.0, help="drop a step this similar to the next one")] = 0.8,
    check: Annotated[bool, typer.Option(help="also drop steps the task's checker rejects (exact in worlds, "
                                             "equations elsewhere)")] = False,
    rounds: Annotated[int, typer.Option(min=1, help="expansion rounds (each sees the last one's steps)")] = 1,
    mc_rollouts: Annotated[int, typer.Option(min=0, help="answer preservation: k rollouts of --solver from "
                                                         "prefix + step must succeed as often as from the prefix")]
    = 0,
    solver: Annotated[str | None, typer.Option(help="the rollout policy of --mc-rollouts: 'world' or a "
                                                    "transformers model dir")] = None,
    task: Annotated[str, typer.Option(help="arith | gsm8k | math | a registered task")] = "arith",
    backend: Backend = "transformers",
    model: Model = None,
    base_url: BaseUrl = None,
    batch_size: Annotated[int, typer.Option(min=1, help="trajectories per batch (one fsync'd append each)")] = 64,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="tokens of one new step")] = 64,
    chat: ChatFlag = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    timeout: Timeout = 60.0,
    retries: Retries = 3,
    prompts_per_request: PromptsPerRequest = 16,
    tokenizer: TokenizerDir = None,
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """Insert new intermediate steps into every trajectory (original steps and answers never
    change); re-running resumes where it stopped."""
    from stepforge.data.expand import ExpandConfig, expand_to_file
    from stepforge.data.fim import fim_tokens_of
    from stepforge.runs import claim_output, fingerprint
    from stepforge.schema import Trajectory, read_records

    quiet_hf(threads)
    fim_order = fim_order or _trained_fim_order(model)
    config = ExpandConfig(mode=mode, fim_order=fim_order, eta=eta, check=check, rounds=rounds,  # type: ignore[arg-type]
                          max_new_tokens=max_new_tokens, batch_trajectories=batch_size, mc_rollouts=mc_rollouts)
    if mc_rollouts and solver is None:
        raise ValueError("--mc-rollouts needs --solver (the policy that rolls out from each prefix)")
    records = read_records(input, Trajectory, unique_ids=True)  # an empty or bad input stops here
    policy = make_cli_policy(backend, model, base_url, device, dtype, timeout, retries, prompts_per_request,
                             tokenizer)
    tokens = None
    if mode == "fim":
        tok = getattr(policy, "tokenizer", None)
        if tok is None:
            raise ValueError("--mode fim needs the model's tokenizer to find its FIM tokens: use --backend "
                             "transformers, or --tokenizer DIR with a server")
        tokens = fim_tokens_of(tok)
        if tokens is None:
            raise ValueError(f"{model or backend}: the tokenizer has no FIM tokens (looked for <|fim_prefix|>... "
                             "and <fim_prefix>...); use --mode prompt with an instruct model")
    solver_policy = None
    if mc_rollouts:
        solver_policy = (make_cli_policy("world", None, None, device, dtype) if solver == "world"
                         else make_cli_policy("transformers", solver, None, device, dtype))
    chosen = resolve_task(task, "", chat, policy) if mode == "prompt" else resolve_task(task, "", False)
    identity = {"command": "expand", "input": fingerprint(input), "mode": mode, "fim_order": fim_order, "eta": eta,
                "check": check,
                "rounds": rounds, "task": chosen.name, "chat": chosen.chat, "max_new_tokens": max_new_tokens,
                "batch_size": batch_size, "policy": policy_identity(backend, model, base_url),
                "mc_rollouts": mc_rollouts, "solver": fingerprint(solver) if mc_rollouts else None}
    claim_output(out, identity, overwrite=overwrite)
    with progress() as bar:
        t = bar.add_task(f"expanding ({mode}{', checked' if check else ''})", total=len(records), rate="")
        start, generated = time.perf_counter(), 0

        def on_batch(done: int, cost) -> None:
            nonlocal generated
            generated += cost.generated_tokens
            bar.update(t, advance=done, rate=f"{generated / max(time.perf_counter() - start, 1e-9):,.0f} tok/s")

        stats = expand_to_file(policy, records, chosen, out, config, tokens, on_batch, solver_policy)
        bar.update(t, completed=len(records))
    if stats.batches_skipped:
        console.print(f"resumed: {stats.batches_skipped} batches were already expanded")
    expanded = read_records(out, Trajectory)
    gaps = sum(r["gaps"] for t in expanded for r in t.meta["expand"]["rounds"])
    inserted = sum(r["inserted"] for t in expanded for r in t.meta["expand"]["rounds"])
    console.print(f"inserted {inserted} steps at {gaps} gaps ({inserted / max(gaps, 1):.1%}); "
                  f"wrote [bold]{out}[/bold]")


def _trained_fim_order(model: str | None) -> str:
    """The FIM order a `stepforge train-expander` model was trained in (its training record),
    else PSM, the order of public FIM models (Qwen2.5, StarCoder)."""
    import json

    from stepforge.runs import TRAIN_RECORD

    record = Path(model) / TRAIN_RECORD if model else None
    if record is not None and record.is_file():
        return json.loads(record.read_text()).get("fim_order", "psm")
    return "psm"


@command("train-expander")
def train_expander(
    out: Annotated[Path, typer.Option("--out", "-o", help="output model dir")],
    problems: Annotated[int, typer.Option(min=1, help="world problems whose solutions give FIM examples")] = 16000,
    style: Annotated[str, typer.Option(help="solution style the expander learns from")] = "detailed",
    draws: Annotated[int, typer.Option(min=1, help="FIM cut points per solution")] = 3,
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps")] = 1500,
    order: Annotated[str, typer.Option(help="spm (prefix next to the middle) | psm (MathFimer's)")] = "spm",
    prompt_loss: Annotated[bool, typer.Option(help="also train on the prefix and suffix tokens, as code FIM "
                                                   "models do (MathFimer: middle only)")] = True,
    init_from: Annotated[Path | None, typer.Option(help="start from this policy's weights (e.g. the world policy) "
                                                        "instead of scratch")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 3e-3,
    seed: Annotated[int, typer.Option(help="problem seed (pick one disjoint from the corpus to expand)")] = 12,
    world: Annotated[str | None, typer.Option(help="built-in world")] = None,
    threads: Threads = 1,
    overwrite: Overwrite = False,
) -> None:
    """Train a FIM step expander for a built-in world from scratch: its policy architecture plus
    three FIM tokens, on FIM examples of reference solutions. The defaults are what worked in
    bench/step_expansion.py (SPM, loss on all tokens); MathFimer's PSM with loss on the middle
    only did not learn partial products at this size (README, "Step expansion")."""
    import random

    from stepforge.cli.sample import train_world_policy
    from stepforge.data.fim import KNOWN_FIM_TOKENS, fim_examples
    from stepforge.tasks import get_world

    quiet_hf(threads)
    chosen = get_world(world)
    if chosen.reference_steps is None or style not in chosen.styles:
        raise ValueError(f"world {chosen.name!r} has no {style!r} reference solutions (styles: {chosen.styles})")
    refuse_existing(out, overwrite)
    tokens = KNOWN_FIM_TOKENS[1]  # <fim_prefix> <fim_suffix> <fim_middle>, added to the world tokenizer
    rng = random.Random(seed)
    sep = chosen.task.step_stop
    corpus = [ex for p in chosen.generate(problems, seed=seed, prefix="fim", min_steps=2, max_steps=12)
              for ex in fim_examples(p.question, chosen.reference_steps(p, style), tokens, rng, draws, sep, order)]
    where = train_world_policy(out, steps, seed, threads, chosen.name, corpus=corpus,
                               special_tokens=(tokens.prefix, tokens.suffix, tokens.middle),
                               prompt_loss=prompt_loss, init_from=str(init_from) if init_from else None,
                               batch_size=batch_size, lr=lr,
                               record={"corpus": f"FIM examples ({draws} cuts, {order}) of {problems} {style} "
                                                 f"solutions, problem seed {seed}", "fim_order": order})
    console.print(f"saved expander to [bold]{where}[/bold] (use: stepforge expand --backend transformers "
                  f"--model {where} --mode fim --fim-order {order})")

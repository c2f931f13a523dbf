"""Concept-seeded synthesis (MUSTARD): synthesize."""

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
)

DEFAULT_CONCEPTS = Path(__file__).resolve().parent.parent / "data" / "concepts.yaml"


@command()
def synthesize(
    out: Annotated[Path, typer.Option("--out", "-o", help="verified, deduplicated records (JSONL); the rest go to "
                                                          "OUT.invalid.jsonl, every attempt to OUT.all.jsonl")],
    n: Annotated[int, typer.Option(min=1, help="seeds (one problem each)")] = 1000,
    world: Annotated[str | None, typer.Option(help="synthesize in a built-in world: its skill atoms are the "
                                                   "concepts, its checker the prover, its policy the solver")] = None,
    concepts: Annotated[Path | None, typer.Option(help="real data: concept library YAML (level -> group -> "
                                                       "concepts; default: a small shipped list)")] = None,
    k: Annotated[int, typer.Option(min=1, help="concepts per seed")] = 1,
    mode: Annotated[str, typer.Option(help="one_group: k concepts of one group | across_groups: one from each of "
                                           "k groups")] = "one_group",
    rounds: Annotated[int, typer.Option(min=0, help="correction rounds after a failed check (MUSTARD: 2)")] = 2,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="generator temperature (default: 1.0 in a "
                                                                    "world, 0.7 otherwise)")] = None,
    dedup: Annotated[float, typer.Option(min=0.01, max=1.0, help="drop a problem more similar than this to a kept "
                                                                 "one (1.0: exact duplicates only)")] = 0.9,
    trajectories: Annotated[Path | None, typer.Option(help="also write the kept records as trajectories "
                                                           "(exact step labels in worlds)")] = None,
    backend: Backend = "world",
    model: Model = None,
    base_url: BaseUrl = None,
    batch_size: Annotated[int, typer.Option(min=1, help="seeds per batch (one fsync'd append each)")] = 64,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="per call (default: 160 in a world, 512)")]
    = None,
    seed: int = 0,
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
    """Seed problems with concepts, have a generator write them with stepwise solutions, keep
    those the prover verifies, with correction rounds (MUSTARD). Re-running resumes."""
    from stepforge.data.synthesize import (
        ConceptLibrary,
        PromptedGenerator,
        SynthConfig,
        WorldGenerator,
        draw_seeds,
        equation_prover,
        records_to_trajectories,
        synthesize_to_file,
        world_prover,
    )
    from stepforge.runs import claim_output, fingerprint
    from stepforge.schema import write_jsonl
    from stepforge.tasks import get_task, get_world

    quiet_hf(threads)
    if mode not in ("one_group", "across_groups"):
        raise ValueError(f"unknown seeding mode {mode!r}; choose one_group or across_groups")
    config = SynthConfig(rounds=rounds, batch_size=batch_size, dedup=dedup, seed=seed)
    if world is not None:
        if concepts is not None:
            raise ValueError("--world brings its own concepts (its skill atoms); drop --concepts")
        chosen = get_world(world)
        if chosen.concepts is None:
            raise ValueError(f"world {chosen.name!r} has no concept library to seed from")
        library = ConceptLibrary(chosen.concepts)
        policy = make_cli_policy(backend, model, base_url, device, dtype, timeout, retries, prompts_per_request,
                                 tokenizer, world=chosen.name)
        generator = WorldGenerator(chosen, policy, temperature=1.0 if temperature is None else temperature,
                                   max_new_tokens=max_new_tokens or 160)
        prover, task = world_prover(chosen.task), chosen.task
    else:
        library = ConceptLibrary.from_yaml(concepts or DEFAULT_CONCEPTS)
        policy = make_cli_policy(backend, model, base_url, device, dtype, timeout, retries, prompts_per_request,
                                 tokenizer)
        use_chat = chat if chat is not None else bool(getattr(getattr(policy, "tokenizer", None), "chat_template",
                                                                      None)) or backend == "openai"
        generator = PromptedGenerator(policy, chat=use_chat, temperature=0.7 if temperature is None else temperature,
                                      max_new_tokens=max_new_tokens or 512)
        prover, task = equation_prover, get_task("gsm8k")
    seeds = draw_seeds(library, n, k, mode, seed)  # type: ignore[arg-type]
    identity = {"command": "synthesize", "world": world, "concepts": fingerprint(concepts) if concepts else "default",
                "n": n, "k": k, "mode": mode, "rounds": rounds, "temperature": temperature, "dedup": dedup,
                "batch_size": batch_size, "max_new_tokens": max_new_tokens, "seed": seed, "chat": chat,
                "policy": policy_identity(backend, model, base_url, world)}
    log = out.with_name(out.name + ".all.jsonl")
    claim_output(out, identity, overwrite=overwrite, also=[log, out.with_name(out.name + ".invalid.jsonl")])
    with progress() as bar:
        t = bar.add_task(f"synthesizing (k={k}, {mode}, {rounds} correction rounds)", total=n, rate="")
        start, generated = time.perf_counter(), 0

        def on_batch(done: int, cost) -> None:
            nonlocal generated
            generated += cost.generated_tokens
            bar.update(t, advance=done, rate=f"{generated / max(time.perf_counter() - start, 1e-9):,.0f} tok/s")

        kept, rejected = synthesize_to_file(generator, prover, seeds, out, config, on_batch)
        bar.update(t, completed=n)
    if trajectories is not None:
        write_jsonl(trajectories, records_to_trajectories(kept, task))
    unverified = sum(not r.verified for r in rejected)
    by_round = [sum(r.verified and r.rounds == i for r in [*kept, *rejected]) for i in range(rounds + 1)]
    console.print(f"kept {len(kept)} of {n} ({len(kept) / n:.1%}); verified after round 0..{rounds}: {by_round}; "
                  f"{unverified} failed every check, {len(rejected) - unverified} near-duplicates; "
                  f"wrote [bold]{out}[/bold]")

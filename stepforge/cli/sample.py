"""Sampling commands: train-world, demo, sample, serve."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    SkipTooLong,
    Threads,
    Timeout,
    TokenizerDir,
    command,
    console,
    data_identity,
    load_data,
    make_cli_policy,
    policy_identity,
    progress,
    quiet_hf,
    resolve_task,
    world_in,
)


def train_world_policy(out: Path, steps: int, seed: int, threads: int, world_name: str | None = None,
                       **options) -> Path:
    """``world.train_policy`` with a progress bar; ``options``: style, corpus, special_tokens, record."""
    from stepforge.tasks import get_world

    world = get_world(world_name)
    if world.train_policy is None:
        raise ValueError(f"world {world.name!r} has no policy trainer")
    with progress() as bar:
        task = bar.add_task(f"training {world.name} policy", total=steps, rate="")

        def tick(step: int, total: int, loss: float) -> None:
            if step % 25 == 0 or step == total:
                bar.update(task, completed=step, rate=f"loss {loss:.3f}")

        return world.train_policy(out, steps=steps, seed=seed, threads=threads, progress=tick, **options)


@command("train-world")
def train_world(
    out: Annotated[Path | None, typer.Option(help="output dir (default: the user cache)")] = None,
    world: Annotated[str | None, typer.Option(help="built-in world (default: arith)")] = None,
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps")] = 2000,
    seed: int = 0,
    style: Annotated[str | None, typer.Option(help="solution style of the drawn problems (arith: terse | "
                                                   "detailed | padded; default: the world's)")] = None,
    corpus: Annotated[Path | None, typer.Option(help="train on these trajectories' steps (e.g. `stepforge "
                                                     "expand` output) instead of fresh problems")] = None,
    hidden_size: Annotated[int | None, typer.Option(min=8, help="model width (default: PolicyTrainConfig's)")]
    = None,
    num_layers: Annotated[int | None, typer.Option(min=1, help="transformer layers")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="peak learning rate")] = None,
    init_from: Annotated[Path | None, typer.Option(help="start from this trained policy's weights (e.g. teach "
                                                        "the shipped policy a new style)")] = None,
    device: Annotated[str, typer.Option(help="cpu (fastest for the default size) | cuda | cuda:N | auto")] = "cpu",
    threads: Threads = 1,
) -> None:
    """Train a built-in world's tiny policy from scratch on CPU (about 2 min on 2 cores)."""
    from stepforge.backends.device import resolve_device
    from stepforge.tasks import get_world

    quiet_hf(threads)
    chosen = get_world(world)
    if style is not None and style not in chosen.styles:
        raise ValueError(f"world {chosen.name!r} has no style {style!r}; choose from {', '.join(chosen.styles)}")
    options: dict = {"style": style} if style is not None else {}
    sizes = {"hidden_size": hidden_size, "num_layers": num_layers, "lr": lr,
             "init_from": str(init_from) if init_from else None,
             "device": str(resolve_device(device)) if device != "cpu" else None}
    options |= {k: v for k, v in sizes.items() if v is not None}
    if hidden_size is not None:  # the MLP keeps the shipped 4x ratio
        options["intermediate_size"] = 4 * hidden_size
    if corpus is not None:
        from stepforge.runs import fingerprint
        from stepforge.schema import Problem, Trajectory, read_records

        task = chosen.task
        options["corpus"] = [(task.build_prompt(Problem(id=t.problem_id, question=t.question, answer="")),
                              task.solution_text(t.steps)) for t in read_records(corpus, Trajectory)]
        options["record"] = {"corpus": {"file": str(corpus), **fingerprint(corpus)}}
    where = train_world_policy(out or chosen.cache_dir(), steps, seed, threads, chosen.name, **options)
    console.print(f"saved policy to [bold]{where}[/bold]")


def sample_with_progress(policy, problems, task, path: Path, n: int, temperature: float, seed: int,
                         max_new_tokens: int, label: str, id_suffix: str, batch_problems: int):
    from stepforge.backends.base import GenerationCost
    from stepforge.sample import sample_to_file

    cost = GenerationCost()
    with progress() as bar:
        t = bar.add_task(label, total=len(problems), rate="")
        start, samples = time.perf_counter(), 0

        def on_batch(batch) -> None:
            nonlocal cost, samples
            cost = cost + batch.cost
            samples += len(batch.trajectories)
            dt = max(time.perf_counter() - start, 1e-9)
            bar.update(t, advance=len(batch.trajectories) // n,
                       rate=f"{samples / dt:,.0f} samples/s {cost.generated_tokens / dt:,.0f} tok/s")

        stats = sample_to_file(policy, problems, task, path, n=n, temperature=temperature, seed=seed,
                               max_new_tokens=max_new_tokens, batch_problems=batch_problems,
                               id_suffix=id_suffix, on_batch=on_batch)
        bar.update(t, completed=len(problems))
    if stats.batches_skipped:
        console.print(f"resumed {path}: {stats.batches_skipped} batches were already done")
    return cost


def report_table(title: str, report: dict) -> Table:
    table = Table(title=title)
    table.add_column("problems")
    cols = [("greedy_accuracy", "greedy"), ("sample_accuracy", "mean sample"),
            ("majority_accuracy", "majority vote"), ("oracle_accuracy", "oracle (any)")]
    for _, name in cols:
        table.add_column(name, justify="right")
    rows = [("all", report)] + [(f"{k} steps", v) for k, v in report.get("by_steps", {}).items()]
    for name, r in rows:
        table.add_row(f"{name} ({r['problems']})",
                      *[f"{r[key]:.1%}" if key in r else "-" for key, _ in cols])
    return table


def run_sampling_report(policy, problems, task, out: Path, n: int, temperature: float, seed: int,
                        max_new_tokens: int, batch_problems: int, greedy: bool, identity: dict,
                        overwrite: bool = False, skip_too_long: bool = False) -> dict:
    """Sample into ``out`` (claimed by ``identity``: a different run there is an error), then
    write the summary atomically."""
    from stepforge.eval.sampling import sampling_report
    from stepforge.runs import atomic_write_json, claim_output
    from stepforge.sample import check_prompt_lengths
    from stepforge.schema import Trajectory, read_jsonl

    if not problems:
        raise ValueError("no problems to sample")
    problems, skipped = check_prompt_lengths(policy, problems, task, max_new_tokens, skip=skip_too_long)
    if not problems:
        raise ValueError(f"no problems to sample: all {len(skipped)} are too long for the model")
    claim_output(out, identity, overwrite=overwrite)
    samples_path, greedy_path = out / "trajectories.jsonl", out / "greedy.jsonl"
    cost = sample_with_progress(policy, problems, task, samples_path, n, temperature, seed,
                                max_new_tokens, f"sampling n={n}", "s", batch_problems)
    greedy_records = []
    if greedy:
        sample_with_progress(policy, problems, task, greedy_path, 1, 0.0, seed, max_new_tokens,
                             "greedy", "g", batch_problems)
        greedy_records = read_jsonl(greedy_path, Trajectory)
    report = sampling_report(problems, read_jsonl(samples_path, Trajectory), task, greedy_records)
    report.update({"backend": getattr(policy, "name", type(policy).__name__), "task": task.name, "chat": task.chat,
                   "n": n, "temperature": temperature, "seed": seed, "generation_cost_this_run": cost.as_dict(),
                   "skipped_too_long": skipped})
    atomic_write_json(out / "summary.json", report)
    return report


def print_report(report: dict, out: Path) -> None:
    console.print(report_table(f"{report['task']}: {report['backend']}", report))
    if report.get("step_error_rate") is not None:
        console.print(f"per-step error rate: [bold]{report['step_error_rate']:.1%}[/bold]  "
                      f"(first errors / steps taken up to the first error)")
    console.print(f"unparseable answers: {report['unparseable_rate']:.1%}   "
                  f"mean generated tokens: {report['mean_generated_tokens']:.1f}")
    if report.get("skipped_too_long"):
        console.print(f"[yellow]skipped {len(report['skipped_too_long'])} problems too long for the model[/yellow]")
    console.print(f"wrote [bold]{out / 'trajectories.jsonl'}[/bold] and [bold]{out / 'summary.json'}[/bold]")


@command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/demo"),
    problems: Annotated[int, typer.Option(min=1, help="number of world problems")] = 200,
    n: Annotated[int, typer.Option(min=1, help="samples per problem")] = 16,
    min_steps: Annotated[int, typer.Option(min=1)] = 4,
    max_steps: Annotated[int, typer.Option(min=1)] = 6,
    seed: int = 0,
    policy: Annotated[Path | None, typer.Option(help="world policy checkpoint dir (default: shipped)")] = None,
    retrain: Annotated[bool, typer.Option(help="train the world policy from scratch first")] = False,
    search: Annotated[bool, typer.Option(help="also compare majority / best-of-N / beam with the world PRM")] = True,
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """The built-in world end to end: policy, N samples per problem, greedy / majority / oracle,
    then PRM-guided search against majority vote."""
    from stepforge.backends import make_policy
    from stepforge.runs import atomic_write_json, fingerprint
    from stepforge.tasks import get_world

    quiet_hf(threads)
    start = time.perf_counter()
    world = get_world()
    world_problems = load_data("world", problems, seed, min_steps=min_steps, max_steps=max_steps, prefix="demo")
    if retrain or world.policy_dir(policy) is None:
        policy = train_world_policy(policy or world.cache_dir(), 2000, seed, threads)
    where = world.policy_dir(policy)
    backend = make_policy("world", str(where), device=device, dtype=dtype)
    identity = {"command": "demo", "world": world.name, "problems": problems, "n": n, "min_steps": min_steps,
                "max_steps": max_steps, "seed": seed, "policy": fingerprint(where)}
    report = run_sampling_report(backend, world_problems, world.task, out, n, 1.0, seed, 128, 64, greedy=True,
                                 identity=identity, overwrite=overwrite)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(out / "summary.json", report)
    print_report(report, out)
    if search and world.prm_dir is not None:
        from stepforge.cli.search import run_search_report
        from stepforge.prm.model import ProcessRewardModel

        lo, hi = world.defaults.get("search_min_steps", 6), world.defaults.get("search_max_steps", 8)
        hard = world.generate(100, seed=30_000 + seed, prefix="demo-search", min_steps=lo, max_steps=hi)
        run_search_report(hard, backend, ProcessRewardModel.from_pretrained(world.prm_dir, device=device, dtype=dtype),
                          world.task, ["majority", "bon", "beam"], [4, 16], out / "search", 64, seed,
                          f"search with the world PRM: 100 problems of {lo}-{hi} steps",
                          identity={**identity, "command": "demo-search", "prm": fingerprint(world.prm_dir)},
                          overwrite=overwrite)
    console.print(f"done in {round(time.perf_counter() - start, 1)} s")


@command()
def sample(
    data: Annotated[str, typer.Option(help="'world', 'gsm8k:<split>', 'math500', or a JSONL/Parquet/dataset "
                                           "path")] = "world",
    backend: Backend = "world",
    model: Model = None,
    base_url: BaseUrl = None,
    task: Annotated[str | None, typer.Option(help="arith | gsm8k | math | a registered task (default: from "
                                                  "--data)")] = None,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/sample"),
    n: Annotated[int, typer.Option(min=1)] = 16,
    limit: Annotated[int | None, typer.Option(min=1, help="first N problems only")] = None,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    batch_problems: Annotated[int, typer.Option(min=1, help="problems per backend call")] = 64,
    field: Annotated[list[str] | None, typer.Option(help="field mapping ours=theirs, e.g. question=problem")] = None,
    greedy: Annotated[bool, typer.Option(help="also decode greedily once per problem")] = True,
    chat: ChatFlag = None,
    seed: int = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    timeout: Timeout = 60.0,
    retries: Retries = 3,
    prompts_per_request: PromptsPerRequest = 16,
    tokenizer: TokenizerDir = None,
    overwrite: Overwrite = False,
    skip_too_long: SkipTooLong = False,
    threads: Threads = 1,
) -> None:
    """Sample N solutions per problem from any backend; writes trajectories (resumable) + summary."""
    quiet_hf(threads)
    items = load_data(data, limit, seed, field)
    policy = make_cli_policy(backend, model, base_url, device, dtype, timeout, retries, prompts_per_request, tokenizer,
                             world_in(data))
    chosen = resolve_task(task, data, chat, policy)
    identity = {"command": "sample", "data": data_identity(data), "limit": limit, "fields": sorted(field or []),
                "task": chosen.name, "chat": chosen.chat, **policy_identity(backend, model, base_url, world_in(data)),
                "n": n,
                "temperature": temperature, "max_new_tokens": max_new_tokens, "greedy": greedy, "seed": seed}
    report = run_sampling_report(policy, items, chosen, out, n, temperature, seed, max_new_tokens, batch_problems,
                                 greedy, identity, overwrite, skip_too_long)
    print_report(report, out)


@command()
def serve(
    backend: Annotated[str, typer.Option(help="world | transformers | vllm")] = "world",
    model: Model = None,
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    name: Annotated[str, typer.Option(help="model name the server answers to")] = "stepforge-world",
    device: Device = "auto",
    dtype: Dtype = "auto",
    threads: Threads = 1,
) -> None:
    """Serve a local policy over OpenAI-compatible /v1/completions and /v1/chat/completions."""
    from stepforge.backends.server import PolicyServer

    if backend == "openai":
        raise ValueError("serve runs a local model: --backend world | transformers | vllm")
    quiet_hf(threads)
    server = PolicyServer(make_cli_policy(backend, model, None, device, dtype), host=host, port=port, model_name=name,
                          verbose=True)
    console.print(f"serving {name} at {server.base_url} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


@command()
def rollout(
    out: Annotated[Path, typer.Option("--out", "-o", help="episodes (JSONL, one per line; re-running resumes)")],
    env: Annotated[str, typer.Option(help="a multi-turn environment: agent (built-in world) | gsm8k-tool "
                                          "(word problems with a calculator)")] = "agent",
    data: Annotated[str | None, typer.Option(help="tasks for a real-data environment: gsm8k:<split>, a JSONL "
                                                  "file or a dataset (default: the world generates them)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="tasks")] = 200,
    n: Annotated[int, typer.Option(min=1, help="episodes per task")] = 4,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    max_turns: Annotated[int, typer.Option(min=1)] = 16,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="per turn (default: 16 in a world, 128 "
                                                                    "otherwise)")] = None,
    backend: Backend = "world",
    model: Model = None,
    base_url: BaseUrl = None,
    batch_problems: Annotated[int, typer.Option(min=1)] = 64,
    seed: int = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """Multi-turn episodes of a policy in an environment, every live episode of a turn in one
    backend call; prints success, turns, invalid actions and the exact per-turn label share
    (progress in the agent world, calculator-checked claims in gsm8k-tool)."""
    from stepforge.env.rollout import episode_summary, rollout_to_file
    from stepforge.runs import claim_output
    from stepforge.tasks import get_environment

    quiet_hf(threads)
    task, make_env, world = get_environment(env)
    if data is None and world is None:
        raise ValueError(f"environment {env!r} needs --data (e.g. gsm8k:test or a JSONL file of problems)")
    problems = (world.generate(limit, seed=50_000 + seed, prefix="rollout") if data is None
                else load_data(data, limit, seed))
    policy = make_cli_policy(backend, model, base_url, device, dtype, world=world.name if world else None)
    identity = {"command": "rollout", "env": env, "data": data_identity(data) if data else None, "limit": limit,
                "n": n, "temperature": temperature, "max_turns": max_turns, "max_new_tokens": max_new_tokens,
                **policy_identity(backend, model, base_url, world.name if world else None), "seed": seed}
    claim_output(out, identity, overwrite=overwrite)
    with progress() as bar:
        t = bar.add_task(f"rollouts ({env})", total=len(problems), rate="")
        episodes = rollout_to_file(policy, problems, task, make_env, out, n=n, temperature=temperature,
                                   max_turns=max_turns, max_new_tokens=max_new_tokens or (16 if world else 128),
                                   seed=seed, batch_problems=batch_problems,
                                   on_batch=lambda k: bar.update(t, advance=k))
        bar.update(t, completed=len(problems))
    s = episode_summary(episodes)
    console.print(f"{s['episodes']} episodes: success {s['success']:.1%}, {s['mean_turns']:.2f} turns, "
                  f"invalid actions {s['invalid_share']:.1%}, labelled turns right {s['progress_share']:.1%}, "
                  f"mean return {s['mean_return']:.3f}, {s['mean_tokens']:.1f} generated tokens per episode; "
                  f"wrote [bold]{out}[/bold]")

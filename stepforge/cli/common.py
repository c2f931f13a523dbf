"""What every command shares: the app, one error handler, common options, and how a command
turns its options into a policy, a task, problems and a run identity."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Step-level supervision of LLM reasoning: sample, label, train PRMs, search, train.")
console = Console()

# --- options shared by several commands ---------------------------------------------------
Threads = Annotated[int, typer.Option(min=1, help="torch CPU threads (1 is fastest for the tiny world model)")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (auto: CUDA when present)")]
Dtype = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16 (auto: bf16 on GPUs that have it, "
                                         "else fp32)")]
TrainDtype = Annotated[str, typer.Option(help="float32 (default for training) | bfloat16 | float16 | auto")]
Overwrite = Annotated[bool, typer.Option(help="replace an existing output (deleting it) instead of refusing")]
ChatFlag = Annotated[bool | None, typer.Option("--chat/--no-chat", help="render prompts with the tokenizer's chat "
                                                                      "template (default: when it has one)")]
Backend = Annotated[str, typer.Option(help="world | transformers | openai | vllm")]
Model = Annotated[str | None, typer.Option(help="model dir (world/transformers/vllm) or served model name (openai)")]
BaseUrl = Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")]
Timeout = Annotated[float, typer.Option(min=0.001, help="openai: seconds per request before it is retried")]
Retries = Annotated[int, typer.Option(min=0, help="openai: retries per request (backoff between them)")]
PromptsPerRequest = Annotated[int, typer.Option(min=1, help="openai: prompts in one request when unseeded")]
TokenizerDir = Annotated[str | None, typer.Option(help="openai: local tokenizer dir of the served model; chat "
                                                       "prompts are then rendered here and sent to /v1/completions")]
SkipTooLong = Annotated[bool, typer.Option(help="skip (and record) items too long for the model instead of failing")]


def _user_errors() -> tuple[type[BaseException], ...]:
    from stepforge.backends.base import BackendError

    # ValueError covers RecordError and RunMismatchError; OSError covers missing files and dirs
    return (ValueError, OSError, BackendError)


def fail(message: str) -> typer.Exit:
    console.print("[red]error:[/red] ", end="")
    console.print(message, soft_wrap=True, highlight=False, markup=False)  # file names may hold [brackets]
    return typer.Exit(code=2)


def command(name: str | None = None, **kwargs) -> Callable:
    """Register a command with the one error handler: a user error (bad file, bad option,
    unreachable server, mismatched run) prints ``error: ...`` and exits 2, never a traceback."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kw):
            try:
                return fn(*args, **kw)
            except _user_errors() as err:
                raise fail(_describe(err)) from None

        app.command(name, **kwargs)(wrapper)
        return fn

    return decorate


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err.args[-1] if err.args else ""):
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


def quiet_hf(threads: int) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def comma_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what} must be a comma list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{what} must be a comma list of positive integers, got {text!r}")
    return values


def comma_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# --- policy, task, data ---------------------------------------------------------------------

def world_in(data: str) -> str | None:
    """The world that ``--data world:NAME`` names (None: the default world, or not a world)."""
    return data.partition(":")[2] or None if data.startswith("world") else None


def make_cli_policy(backend: str, model: str | None, base_url: str | None, device: str = "auto",
                    dtype: str = "auto", timeout: float = 60.0, retries: int = 3, prompts_per_request: int = 16,
                    tokenizer: str | None = None, world: str | None = None):
    """``world``: whose policy ``--backend world`` loads (default: the default world's)."""
    from stepforge.backends import make_policy

    extra: dict[str, Any] = {"world": world} if backend == "world" else {}
    if backend == "openai":
        extra |= {"timeout": timeout, "max_retries": retries, "prompts_per_request": prompts_per_request,
                 "tokenizer": tokenizer}
    return make_policy(backend, model, base_url, device=device, dtype=dtype, **extra)


def policy_identity(backend: str, model: str | None, base_url: str | None, world: str | None = None
                    ) -> dict[str, Any]:
    from stepforge.runs import fingerprint

    if backend == "world" and model is None:
        from stepforge.tasks import get_world

        model = str(get_world(world).policy_dir(None))
    return {"backend": backend, "model": fingerprint(model), "base_url": base_url}


def resolve_task(name: str | None, data: str, chat: bool | None = None, policy=None):
    """The task named, else the one the data implies; chat mode from the flag or the policy."""
    from stepforge.tasks import get_task, get_world

    if name is None:
        if data == "world" or data.startswith("world:"):
            name = get_world(data.partition(":")[2] or None).task.name
        elif data.startswith("math"):
            name = "math"
        else:
            name = "gsm8k"
    task = get_task(name)
    if chat is None:
        chat = bool(getattr(policy, "has_chat_template", False)) if policy is not None else False
    if chat and policy is not None and not getattr(policy, "has_chat_template", True) and \
            getattr(policy, "tokenizer", None) is not None:
        raise ValueError(f"--chat: {getattr(policy, 'name', 'the model')} has no chat template")
    return task.with_chat(chat)


def load_data(data: str, limit: int | None, seed: int, fields: list[str] | None = None, min_steps: int | None = None,
              max_steps: int | None = None, prefix: str = "world", seed_offset: int = 10_000):
    """Problems from 'world[:NAME]' (generated), 'gsm8k:<split>', 'math500', or a file/dataset."""
    from stepforge.loaders import load_problems
    from stepforge.tasks import get_world

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if data == "world" or data.startswith("world:"):
        world = get_world(data.partition(":")[2] or None)
        if min_steps is not None and max_steps is not None and min_steps > max_steps:
            raise ValueError(f"--min-steps {min_steps} is more than --max-steps {max_steps}")
        return world.generate(limit or 200, seed=seed_offset + seed, prefix=prefix, min_steps=min_steps,
                              max_steps=max_steps)
    mapping = {}
    for f in fields or []:
        ours, sep, theirs = f.partition("=")
        if not sep or not ours or not theirs:
            raise ValueError(f"--field takes ours=theirs (e.g. question=problem), got {f!r}")
        mapping[ours] = theirs
    return load_problems(data, fields=mapping, limit=limit)


def data_identity(data: str) -> Any:
    from stepforge.runs import fingerprint

    return fingerprint(data) if Path(data).exists() else data


def problems_index(problems: str | None) -> dict | None:
    if not problems:
        return None
    from stepforge.loaders import load_problems

    return {p.id: p for p in load_problems(problems)}


# --- outputs --------------------------------------------------------------------------------

def refuse_existing(out: Path, overwrite: bool) -> None:
    """Outputs that are not resumable are replaced only with --overwrite."""
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it, or choose another output")


def publish_dir(save: Callable[[Path], None], out: Path, overwrite: bool) -> Path:
    """Write a directory (a model) next to ``out`` and rename it into place, so an interrupted
    save never leaves half a model and an existing one is replaced only with --overwrite."""
    refuse_existing(out, overwrite)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def command_line() -> str:
    return " ".join(["stepforge", *sys.argv[1:]])

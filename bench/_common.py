"""Shared set-up of the benchmark scripts: one torch thread (fastest for the tiny world
models on these CPUs) and quiet transformers."""

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging


def quiet_cpu(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def paired_sign_test(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Problems ``a`` gets right and ``b`` wrong (fixed) and the reverse (broken), with the
    two-sided exact binomial sign test of fixed vs broken (ties dropped)."""
    fixed = sum(x and not y for x, y in zip(a, b, strict=True))
    broken = sum(y and not x for x, y in zip(a, b, strict=True))
    n = fixed + broken
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(fixed, broken) + 1)) / 2 ** n) if n else 1.0
    return {"fixed": fixed, "broken": broken, "p": p}


def save_figure(fig, axes, path: str) -> None:
    """Grid and legend on every panel, tight layout, and the figure written to ``path``."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)

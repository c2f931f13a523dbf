"""Devices and dtypes: one place that decides where a model runs and in what precision.

``--device auto`` is CUDA when present, else CPU; ``--dtype auto`` is bfloat16 on a GPU that
supports it (float16 on older GPUs) and float32 on CPU. Code that runs a model moves its
inputs to :func:`model_device` (never assumes CPU).
"""

from __future__ import annotations

from pathlib import Path

import torch

DEVICES = "auto | cpu | cuda | cuda:N"
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None → cuda if available else cpu; ``cuda``/``cuda:N`` must exist."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}; use {DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but CUDA is not available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {spec!r}; use {DEVICES}")
    return device


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` → bf16 on a GPU that supports it, fp16 on other GPUs, fp32 on CPU (bf16 on these
    CPUs is far slower than fp32)."""
    if isinstance(spec, torch.dtype):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if spec not in DTYPES:
        raise ValueError(f"unknown dtype {spec!r}; choose from {', '.join(DTYPES)}")
    return getattr(torch, spec)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights live (inputs go there)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def check_model_dir(path: str | Path, what: str = "model") -> Path:
    """A local model directory that exists and has a ``config.json``; a clear error otherwise
    (instead of transformers taking the path for a hub repo id)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such {what} directory")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: is a file, but a {what} directory (with config.json) is needed")
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{p}: not a {what} directory (no config.json)")
    return p


def load_causal_lm(path: str | Path, device: str | torch.device | None = "auto",
                   dtype: str | torch.dtype | None = "auto", **kwargs):
    """A local causal LM and its tokenizer, placed on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = check_model_dir(path)
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(p, dtype=resolve_dtype(dtype, dev), **kwargs).to(dev)
    return model.eval(), AutoTokenizer.from_pretrained(p)

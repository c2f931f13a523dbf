"""Generation backends behind one :class:`Policy` protocol.

Heavy imports (torch/transformers, openai, vllm) happen only in :func:`make_policy`.
"""

from __future__ import annotations

from stepforge.backends.base import (
    BackendError,
    Completion,
    GenerationCost,
    GenerationResult,
    Policy,
)

BACKENDS = ("world", "transformers", "openai", "vllm")


def make_policy(backend: str, model: str | None = None, base_url: str | None = None, *, device: str = "auto",
                dtype: str = "auto", world: str | None = None, **kwargs) -> Policy:
    """Build a backend by name.

    - ``world``: a built-in world's policy (``model`` = optional checkpoint dir; ``world``
      defaults to the arithmetic world)
    - ``transformers``: a local HF causal LM dir (``model``)
    - ``openai``: an OpenAI-compatible server (``base_url``, ``model`` = served model name,
      default: the server's only model)
    - ``vllm``: a vLLM engine (``model``; GPU, extra ``stepforge[vllm]``)

    ``device`` / ``dtype`` (``auto`` = CUDA + bf16 when present) apply to local models.
    """
    if backend == "world":
        from stepforge.backends.device import resolve_device, resolve_dtype
        from stepforge.backends.transformers_backend import TransformersPolicy
        from stepforge.tasks import get_world

        w = get_world(world)
        m, tok = w.load_policy(model)
        dev = resolve_device(device)
        return TransformersPolicy(m.to(device=dev, dtype=resolve_dtype(dtype, dev)), tok, name=f"world:{w.name}",
                                  **kwargs)
    if backend == "transformers":
        if not model:
            raise ValueError("the transformers backend needs --model (a local model directory)")
        from stepforge.backends.transformers_backend import TransformersPolicy

        return TransformersPolicy.from_pretrained(model, device=device, dtype=dtype, **kwargs)
    if backend == "openai":
        if not base_url:
            raise ValueError("the openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        from stepforge.backends.openai_backend import OpenAIPolicy

        return OpenAIPolicy(base_url, model, **kwargs)
    if backend == "vllm":
        if not model:
            raise ValueError("the vllm backend needs --model")
        from stepforge.backends.vllm_backend import VLLMPolicy

        return VLLMPolicy(model, device=device, dtype=dtype, **kwargs)
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "BackendError", "Completion", "GenerationCost", "GenerationResult", "Policy", "make_policy"]

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


def make_policy(backend: str, model: str | None = None, base_url: str | None = None, **kwargs) -> Policy:
    """Build a backend by name.

    - ``world``: the built-in arithmetic policy (``model`` = optional checkpoint dir)
    - ``transformers``: a local HF causal LM dir (``model``)
    - ``openai``: an OpenAI-compatible server (``base_url``, ``model`` = served model name)
    - ``vllm``: a vLLM engine (``model``; GPU, extra ``stepforge[vllm]``)
    """
    if backend == "world":
        from stepforge.backends.transformers_backend import TransformersPolicy
        from stepforge.worlds.arith.policy import load_policy

        m, tok = load_policy(model)
        return TransformersPolicy(m, tok, name="world:arith", **kwargs)
    if backend == "transformers":
        if not model:
            raise ValueError("the transformers backend needs --model (a local model directory)")
        from stepforge.backends.transformers_backend import TransformersPolicy

        return TransformersPolicy.from_pretrained(model, **kwargs)
    if backend == "openai":
        if not base_url:
            raise ValueError("the openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        from stepforge.backends.openai_backend import OpenAIPolicy

        return OpenAIPolicy(base_url, model, **kwargs)
    if backend == "vllm":
        if not model:
            raise ValueError("the vllm backend needs --model")
        from stepforge.backends.vllm_backend import VLLMPolicy

        return VLLMPolicy(model, **kwargs)
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "BackendError", "Completion", "GenerationCost", "GenerationResult", "Policy", "make_policy"]

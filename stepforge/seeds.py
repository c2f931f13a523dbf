"""The one place seeds are derived.

Every random draw in stepforge is seeded by ``derive_seed(run_seed, *parts)`` where the parts
name *what* is drawn (problem id, sample index, purpose), never *where* it sits in a batch.
So results do not depend on batch sizes, on the order of work, on resuming, or on the
backend: the same run seed gives the same samples locally and through ``stepforge serve``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SEED_BITS = 63  # fits torch.Generator.manual_seed and every server's integer seed field


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and any parts (str/int/float/tuples), stable across runs,
    processes and Python versions (BLAKE2b of their repr, not ``hash()``)."""
    h = hashlib.blake2b(repr((int(seed), *parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big") >> (64 - SEED_BITS)


def prompt_seeds(seed: int | Sequence[int] | None, n_prompts: int) -> list[int] | None:
    """Per-prompt seeds of one generate call: a list is taken as is (one per prompt); an int
    seeds prompt i with ``derive_seed(seed, "prompt", i)``; None means unseeded."""
    if seed is None:
        return None
    if isinstance(seed, int):
        return [derive_seed(seed, "prompt", i) for i in range(n_prompts)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n_prompts:
        raise ValueError(f"got {len(seeds)} seeds for {n_prompts} prompts")
    return seeds


def sample_seed(prompt_seed: int, sample_index: int) -> int:
    """Seed of sample j of a prompt whose seed is ``prompt_seed`` (every backend uses this)."""
    return derive_seed(prompt_seed, "sample", sample_index)

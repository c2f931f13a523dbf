"""Consensus filtering and label-quality reports against ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stepforge.schema import Trajectory


@dataclass
class ConsensusResult:
    kept: list[Trajectory]
    total: int
    compared: int  # present and labeled in both sources

    @property
    def report(self) -> dict[str, Any]:
        return {"total": self.total, "compared": self.compared, "kept": len(self.kept),
                "kept_share": round(len(self.kept) / self.compared, 4) if self.compared else 0.0}


def _has_labels(t: Trajectory) -> bool:
    return bool(t.steps) and all(v is not None for v in t.step_labels)


def consensus(primary: Sequence[Trajectory], other: Sequence[Trajectory]) -> ConsensusResult:
    """Keep trajectories whose first error (None = no error) is the same in both sources
    ("The Lessons of Developing PRMs", Zhang et al. 2025). Kept records carry the primary
    source's labels, ``label_source = "consensus"`` and ``meta.consensus_of``."""
    by_id = {t.id: t for t in other}
    kept, compared = [], 0
    for t in primary:
        o = by_id.get(t.id)
        if o is None or not _has_labels(t) or not _has_labels(o):
            continue
        compared += 1
        if t.first_error == o.first_error:
            kept.append(t.model_copy(update={"label_source": "consensus",
                                             "meta": {**t.meta, "consensus_of": [t.label_source, o.label_source]}}))
    return ConsensusResult(kept, len(primary), compared)


def label_quality(labeled: Sequence[Trajectory], truth: Sequence[Trajectory], threshold: float = 0.5
                  ) -> dict[str, Any]:
    """How well one label source matches ground truth, over trajectories present in both.

    - first_error_accuracy: same first error (None = none) as the truth
    - bad-step precision / recall: a step is "bad" when its label is < ``threshold`` (truth:
      the first error and every later step, i.e. off the correct path)
    - step_agreement: share of steps whose good/bad call matches
    - tokens / rollouts per trajectory; unlabeled: records whose labels are missing
    """
    truth_by = {t.id: t for t in truth}
    n = same_first = tp = fp = fn = agree = steps = unlabeled = 0
    tokens = rollouts = 0
    for t in labeled:
        g = truth_by.get(t.id)
        if g is None:
            continue
        n += 1
        tokens += t.cost.generated_tokens
        rollouts += t.cost.rollouts
        if not _has_labels(t):
            unlabeled += 1
            continue
        same_first += t.first_error == g.first_error
        for pred, gold in zip(t.step_labels, g.step_labels, strict=True):
            p_bad, g_bad = pred < threshold, (gold if gold is not None else 1.0) < threshold
            tp += p_bad and g_bad
            fp += p_bad and not g_bad
            fn += g_bad and not p_bad
            agree += p_bad == g_bad
            steps += 1
    labeled_n = n - unlabeled
    return {
        "source": labeled[0].label_source if labeled else None,
        "trajectories": n, "unlabeled": unlabeled,
        "first_error_accuracy": round(same_first / labeled_n, 4) if labeled_n else None,
        "bad_step_precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "bad_step_recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "step_agreement": round(agree / steps, 4) if steps else None,
        "tokens_per_trajectory": round(tokens / n, 1) if n else None,
        "rollouts_per_trajectory": round(rollouts / n, 2) if n else None,
    }

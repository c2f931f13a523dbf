"""Label a trajectory file, batch by batch, resumably (see :mod:`stepforge.jobs`).

Every rollout is seeded by its prefix and the run seed (:mod:`stepforge.seeds`) and each batch
gets a fresh estimator, so a run killed at any point
(even SIGKILL mid-write) and restarted produces the same file as an uninterrupted run, with
no duplicate ids. OmegaPRM's rollout tree lives per batch: keep a problem's samples
together (files written by ``stepforge sample`` already are) so they share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stepforge.backends.base import Policy
from stepforge.jobs import Batch, JobStats, run_resumable
from stepforge.label.judge import label_judge
from stepforge.label.methods import label_binary, label_mc, label_truth, problem_of
from stepforge.label.omegaprm import OmegaConfig, search_tree
from stepforge.label.rollouts import RolloutEstimator
from stepforge.sample import prompts_too_long
from stepforge.schema import Problem, Trajectory, read_records
from stepforge.tasks import Task

Method = Literal["mc", "binary", "omegaprm", "truth", "judge"]
METHODS: tuple[str, ...] = ("mc", "binary", "omegaprm", "truth", "judge")


@dataclass
class LabelConfig:
    method: Method
    k: int = 8
    hard: bool = False
    early_stop: bool = False
    min_correct: int = 1
    max_new_tokens: int = 256
    seed: int = 0
    searches: int = 0  # omegaprm: extra Q+U-selected (state, rollout) searches per batch
    balance: bool = False  # omegaprm: keep extras only while they balance good/bad step labels


def label_batch(trajectories: Sequence[Trajectory], problems: Sequence[Problem], task: Task, cfg: LabelConfig,
                policy: Policy | None, seed: int, tag: int = 0) -> list[Trajectory]:
    """Label one batch with ``cfg.method`` (``policy`` rolls out, or judges for "judge");
    ``tag`` (the batch index) names the extra trajectories OmegaPRM's tree search adds."""
    if cfg.method == "truth":
        return label_truth(trajectories, problems, task)
    if policy is None:
        raise ValueError(f"method {cfg.method!r} needs a backend")
    if cfg.method == "judge":
        return label_judge(trajectories, policy, seed=seed, chat=task.chat)
    est = RolloutEstimator(policy, task, cfg.k, max_new_tokens=cfg.max_new_tokens, seed=seed,
                           reuse=cfg.method == "omegaprm")
    if cfg.method == "mc":
        return label_mc(trajectories, problems, est, hard=cfg.hard, early_stop=cfg.early_stop)
    if cfg.method in ("binary", "omegaprm"):
        labeled = label_binary(trajectories, problems, est, min_correct=cfg.min_correct)
        if cfg.method == "omegaprm" and cfg.searches:
            omega = OmegaConfig(searches=cfg.searches, balance=cfg.balance)
            labeled += search_tree(est, omega, id_prefix=f"omega{tag}", existing=labeled)
        return labeled
    raise ValueError(f"unknown label method {cfg.method!r}; choose from {', '.join(METHODS)}")


def label_file(input_path: str | Path, out_path: str | Path, task: Task, cfg: LabelConfig,
               policy: Policy | None = None, problems: Mapping[str, Problem] | None = None,
               batch_size: int = 64,
               on_batch: Callable[[Batch[Trajectory], list[Trajectory]], None] | None = None,
               workers: int = 1, policy_factory: Callable[[], Policy] | None = None,
               skip_too_long: bool = False) -> JobStats:
    """Label ``input_path`` into ``out_path``. With ``workers > 1`` batches are labeled by Ray
    tasks (extra ``stepforge[ray]``; a local Ray instance, or the cluster at $RAY_ADDRESS),
    each building its own backend with the picklable ``policy_factory``; records are written
    in batch order, so the file equals the serial run's for the same seed.

    Before any work, every trajectory's full prompt plus ``max_new_tokens`` is checked against
    the policy's context: an over-long one is an error naming it, or with ``skip_too_long``
    is written unlabeled with ``meta.skipped`` saying why."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown label method {cfg.method!r}; choose from {', '.join(METHODS)}")
    trajectories = read_records(input_path, Trajectory, unique_ids=True)
    resolved = {t.id: problem_of(t, task, problems) for t in trajectories}  # fail before any work
    skipped: dict[str, str] = {}
    if policy is not None and cfg.method != "truth":
        reasons = prompts_too_long(policy, [f"{input_path}: trajectory {t.id!r}" for t in trajectories],
                                   [task.prefix_prompt(resolved[t.id], t.steps) for t in trajectories],
                                   cfg.max_new_tokens if cfg.method != "judge" else 0, skip_too_long)
        skipped = {t.id: r for t, r in zip(trajectories, reasons, strict=True) if r is not None}
    batches = [Batch(b, chunk, [t.id for t in chunk]) for b, chunk in
               enumerate(trajectories[i:i + batch_size] for i in range(0, len(trajectories), batch_size))]

    def todo(batch: Batch[Trajectory]) -> list[Trajectory]:
        return [t for t in batch.items if t.id not in skipped]

    def merge(batch: Batch[Trajectory], labeled: list[Trajectory]) -> list[Trajectory]:
        done = {t.id: t for t in labeled}
        out = [done.pop(t.id) if t.id in done else
               t.model_copy(update={"meta": {**t.meta, "skipped": f"too long: {skipped[t.id]}"}})
               for t in batch.items]
        return out + list(done.values())  # OmegaPRM's extra trajectories follow their batch

    def process(batch: Batch[Trajectory]) -> list[Trajectory]:
        items = todo(batch)
        labeled = label_batch(items, [resolved[t.id] for t in items], task, cfg, policy, seed=cfg.seed,
                              tag=batch.index) if items else []
        return merge(batch, labeled)

    many = None
    if workers > 1:
        if policy_factory is None and cfg.method != "truth":
            raise ValueError("workers > 1 needs a policy_factory (each Ray worker builds its own backend)")

        def many(pending: Sequence[Batch[Trajectory]]) -> Iterator[list[Trajectory]]:
            jobs = [(todo(b), [resolved[t.id] for t in todo(b)], b.index) for b in pending]
            for b, labeled in zip(pending, _ray_map(jobs, task, cfg, policy_factory, workers), strict=True):
                yield merge(b, labeled)

    return run_resumable(out_path, batches, Trajectory, process, id_of=lambda t: t.id, on_batch=on_batch,
                         process_many=many)


_WORKER_POLICY: dict[str, Policy] = {}


def _label_in_worker(items, problems, task, cfg, factory, tag):  # runs inside a Ray worker
    import torch

    torch.set_num_threads(1)
    key = repr(factory)  # e.g. functools.partial(make_policy, 'world', None, None): one backend per worker
    if factory is not None and key not in _WORKER_POLICY:
        _WORKER_POLICY[key] = factory()
    return label_batch(items, problems, task, cfg, _WORKER_POLICY.get(key), cfg.seed, tag)


def _ray_map(jobs, task: Task, cfg: LabelConfig, factory, workers: int) -> Iterator[list[Trajectory]]:
    """Run jobs as Ray tasks, at most 2 per worker in flight, yielding results in job order."""
    try:
        import ray
    except ImportError as err:
        raise ValueError("--workers needs the optional extra: pip install 'stepforge[ray]'") from err
    started = not ray.is_initialized()
    if started:
        import os

        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"])
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(_label_in_worker)
        factory_ref = ray.put(factory)
        refs: dict[int, object] = {}
        nxt = 0
        for i in range(len(jobs)):
            while nxt < len(jobs) and nxt < i + 2 * workers:
                items, probs, tag = jobs[nxt]
                refs[nxt] = remote.remote(items, probs, task, cfg, factory_ref, tag)
                nxt += 1
            yield ray.get(refs.pop(i))
    finally:
        if started:
            ray.shutdown()

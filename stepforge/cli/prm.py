"""PRM commands: train-prm, score, eval-prm."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stepforge.cli.common import (
    Device,
    Dtype,
    Overwrite,
    Threads,
    command,
    command_line,
    console,
    publish_dir,
    quiet_hf,
    refuse_existing,
)

PRMFormat = Annotated[str, typer.Option("--format", help="stepforge | math-shepherd | qwen | rlhflow | "
                                                         "token-classification")]


def load_scorer(prm: Path, fmt: str = "stepforge", device: str = "auto", dtype: str = "auto"):
    """A stepforge PRM dir or a public PRM through its adapter."""
    from stepforge.prm.adapters import load_adapter
    from stepforge.prm.model import ProcessRewardModel

    if fmt == "stepforge":
        return ProcessRewardModel.from_pretrained(prm, device=device, dtype=dtype)
    return load_adapter(fmt, str(prm), device=device, dtype=dtype)


@command("train-prm")
def train_prm_cmd(
    train: Annotated[Path, typer.Option(help="labeled trajectories (JSONL/Parquet)")],
    out: Annotated[Path, typer.Option(help="output PRM directory")],
    backbone: Annotated[str | None, typer.Option(help="HF model dir (default: the world policy)")] = None,
    readout: Annotated[str | None, typer.Option(help="separator | prefix_min (default: PRMTrainConfig's)")] = None,
    logprob_feature: Annotated[bool | None, typer.Option(help="prefix_min: add the backbone's token log-probs")]
    = None,
    freeze_backbone: Annotated[bool | None, typer.Option(help="train only the head")] = None,
    epochs: Annotated[float | None, typer.Option(min=0.01)] = None,
    lr: Annotated[float | None, typer.Option(min=0.0)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    hard: Annotated[bool, typer.Option(help="threshold labels at 0.5 (default: soft labels stay soft)")] = False,
    last_step_only: bool = False,
    seed: int = 0,
    device: Device = "auto",
    dtype: Annotated[str, typer.Option(help="backbone dtype: float32 (default for training) | bfloat16 | "
                                            "float16 | auto")] = "float32",
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """Train a process reward model on step labels (per-step BCE; soft labels stay soft).
    Defaults come from ``PRMTrainConfig`` (the recipe measured in the README)."""
    from dataclasses import asdict, replace

    from stepforge.prm.model import PRMConfig, ProcessRewardModel
    from stepforge.prm.train import PRMTrainConfig, train_prm
    from stepforge.schema import Trajectory, read_records
    from stepforge.tasks import get_world

    quiet_hf(threads)
    start = time.perf_counter()
    refuse_existing(out, overwrite)
    data = read_records(train, Trajectory, unique_ids=True)
    defaults = PRMTrainConfig()
    given = {"readout": readout, "token_logprob_feature": logprob_feature, "freeze_backbone": freeze_backbone,
             "epochs": epochs, "lr": lr, "batch_size": batch_size}
    cfg = replace(defaults, **{k: v for k, v in given.items() if v is not None}, hard=hard,
                  last_step_only=last_step_only, seed=seed)
    prm_cfg = PRMConfig(readout=cfg.readout,
                        token_logprob_feature=cfg.token_logprob_feature and cfg.readout == "prefix_min")
    model = ProcessRewardModel.from_backbone(backbone or str(get_world().policy_dir(None)), prm_cfg, device=device,
                                             dtype=dtype)
    history = train_prm(model, data, cfg)
    losses = [h["loss"] for h in history if "loss" in h]
    record = {"command": command_line(), "train_file": str(train), "trajectories": len(data),
              "train_seconds": round(time.perf_counter() - start, 1), "final_loss": losses[-1] if losses else None,
              **asdict(cfg)}

    def save(where: Path) -> None:
        model.save_pretrained(where)
        (where / "stepforge_train.json").write_text(json.dumps(record, indent=2))

    publish_dir(save, out, overwrite=True)
    console.print(f"trained on {len(data)} trajectories in {time.perf_counter() - start:.0f} s "
                  f"(final loss {losses[-1] if losses else float('nan'):.3f}); saved to [bold]{out}[/bold]")


@command()
def score(
    prm: Annotated[Path, typer.Option(help="PRM directory")],
    input: Annotated[Path, typer.Option("--input", "-i")],
    out: Annotated[Path, typer.Option("--out", "-o")],
    format: PRMFormat = "stepforge",
    skip_too_long: Annotated[bool, typer.Option(help="write over-long trajectories unscored (meta.skipped)")] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """Score every step of every trajectory (one forward pass each); scores go to meta.prm_scores."""
    from stepforge.runs import atomic_write_jsonl
    from stepforge.schema import RecordError, Trajectory, read_records

    quiet_hf(threads)
    data = read_records(input, Trajectory, unique_ids=True)
    refuse_existing(out, overwrite)
    model = load_scorer(prm, format, device, dtype)
    scorable, skipped = [], {}
    encode = getattr(model, "encode", None)
    for t in data:
        try:
            if encode is not None:
                encode(t)  # refuses empty and over-long trajectories before any scoring
            scorable.append(t)
        except RecordError as err:
            if not skip_too_long or ("too long" not in str(err) and "max_length" not in str(err)):
                raise RecordError(f"{input}: {err}") from None
            skipped[t.id] = str(err)
    scores = dict(zip([t.id for t in scorable], model.score(scorable), strict=True))
    rows = [t.model_copy(update={"meta": {**t.meta, "prm_scores": scores[t.id]}}) if t.id in scores else
            t.model_copy(update={"meta": {**t.meta, "skipped": skipped[t.id]}}) for t in data]
    atomic_write_jsonl(out, rows)
    extra = f" ({len(skipped)} skipped as too long)" if skipped else ""
    console.print(f"scored {len(scorable)} trajectories{extra}; wrote [bold]{out}[/bold]")


@command("eval-prm")
def eval_prm(
    data: Annotated[Path, typer.Option(help="trajectories with ground truth: 'truth'/'human' labels (e.g. ProcessBench "
                                            "converted), or any trajectories of a task with an exact checker")],
    prm: Annotated[Path | None, typer.Option(help="PRM directory (stepforge, or public with --format)")] = None,
    format: PRMFormat = "stepforge",
    scores: Annotated[Path | None, typer.Option(help="instead of --prm: a scored file (meta.prm_scores, from "
                                                     "`score`) or any labeled file (its step_labels)")] = None,
    task: str = "arith",
    dev_share: Annotated[float, typer.Option(min=0.0, max=0.95, help="share of problems that calibrate θ")] = 0.3,
    policy: Annotated[str | None, typer.Option(help="policy for the log-prob baselines (default: the task's "
                                                    "world policy, if any)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as one JSON object")] = False,
    out: Annotated[Path | None, typer.Option(help="also write the report as JSON")] = None,
    seed: int = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    threads: Threads = 1,
) -> None:
    """First-error F1 (θ calibrated on a dev split of problems), step AUC, baselines, best-of-N."""
    from stepforge.eval.prm_eval import evaluate_prm
    from stepforge.runs import atomic_write_json

    quiet_hf(threads)
    if (prm is None) == (scores is None):
        raise ValueError("give exactly one of --prm DIR and --scores FILE")
    scorer = load_scorer(prm, format, device, dtype) if prm is not None else None
    report = evaluate_prm(prm, data, task, dev_share=dev_share, policy=policy, seed=seed, scorer=scorer,
                          scores_file=scores, baselines=not as_json)
    if out:
        atomic_write_json(out, report)
    if as_json:
        main = report["first_error"]["prm"]
        print(json.dumps({"f1": main["f1"], "acc_err": main["acc_err"], "acc_ok": main["acc_ok"],
                          "threshold": main["threshold"], "auc": main["auc"], "n_err": main["n_err"],
                          "n_ok": main["n_ok"], "test_trajectories": report["test_trajectories"],
                          "dev_trajectories": report["dev_trajectories"]}))
        return
    table = Table(title=f"first-error F1 on {report['test_trajectories']} held-out trajectories")
    for c in ("scorer", "threshold", "F1", "acc_err", "acc_ok", "step AUC"):
        table.add_column(c, justify="right")
    for name, r in report["first_error"].items():
        table.add_row(name, "-" if r.get("threshold") is None else f"{r['threshold']:.3g}", f"{r['f1']:.3f}",
                      f"{r['acc_err']:.3f}", f"{r['acc_ok']:.3f}", "-" if r.get("auc") is None else f"{r['auc']:.3f}")
    console.print(table)
    if report["best_of_n"]:
        bon = Table(title=f"best-of-N on {report['bon_problems']} problems (N = {report['n']}; 95% bootstrap CI)")
        for c in ("selection", "accuracy", "CI"):
            bon.add_column(c, justify="right")
        for name, r in report["best_of_n"].items():
            bon.add_row(name, f"{r['accuracy']:.1%}", f"{r['ci_low']:.1%} – {r['ci_high']:.1%}")
        console.print(bon)

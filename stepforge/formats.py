"""Import / export of public step-label formats (DESIGN.md §2) as Trajectory records.

| format        | record                                                              | labels                      |
|---------------|---------------------------------------------------------------------|-----------------------------|
| ProcessBench  | ``{id, problem, steps[], final_answer_correct, label}``              | first error index, −1: none |
| PRM800K       | ``{question{problem}, label{steps[{completions[{text, rating}], …}]}}`` | −1 / 0 / +1 |
| Math-Shepherd | ``{input: "... step ки\\n...", label: "... step +\\n..."}``           | "+" / "−" in place of ки     |
| TRL stepwise  | ``{prompt, completions[], labels[bool]}``                             | bool per step               |
| PRMBench      | ``{idx, modified_question, modified_process[], error_steps[]}``       | 1-based error steps         |

PRMBench numbers steps from 1 (its step texts start "1. ", "2. "...), so ``error_steps`` = [3, 4]
means steps with 0-based indices 2 and 3, and ``first_error = min(error_steps) − 1``. Each row
also gives its unmodified process, imported as a second, error-free trajectory
``{idx}/original`` (so first-error F1 has correct samples to score).

ProcessBench export writes ProcessBench's own JSON list (``indent=2``, UTF-8 kept) and restores
every field an import read (``generator`` and any other, in their order), so import → export
is byte-for-byte the original file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stepforge.schema import RecordError, Trajectory, check_input_file, iter_json_lines, truth_labels

FORMATS = ("processbench", "prm800k", "prmbench", "math-shepherd", "trl")
EXPORTS = ("processbench", "prm800k", "math-shepherd", "trl")
_PB_KNOWN = ("id", "problem", "steps", "final_answer_correct", "label")


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Records of a JSON list file or a JSONL file, each with where it came from."""
    try:
        text = check_input_file(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from None
        for i, row in enumerate(rows):
            yield f"{path}: item {i}", row
        return
    for lineno, row in iter_json_lines(path):
        yield f"{path}:{lineno}", row


def _require(row: Any, where: str, *keys: str) -> None:
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object")
    missing = [k for k in keys if k not in row]
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")


def _pid(question: str) -> str:
    return "q-" + hashlib.sha1(question.encode()).hexdigest()[:12]


def from_processbench(row: dict, where: str) -> Trajectory:
    _require(row, where, "id", "problem", "steps", "label")
    label = int(row["label"])
    steps = [str(s) for s in row["steps"]]
    if not -1 <= label < len(steps):
        raise RecordError(f"{where}: label {label} is not -1 or a step index (0..{len(steps) - 1})")
    first = None if label == -1 else label
    extra = {k: v for k, v in row.items() if k not in _PB_KNOWN}
    return Trajectory(id=str(row["id"]), problem_id=str(row["id"]), question=row["problem"], steps=steps,
                      correct=row.get("final_answer_correct"), first_error=first,
                      step_labels=truth_labels(len(steps), first), label_source="human",
                      meta={"generator": row.get("generator"), "format": "processbench",
                            "processbench": {"fields": list(row), "extra": extra}})


def from_prm800k(row: dict, where: str, neutral: float = 1.0) -> Trajectory:
    """One PRM800K sample: the chosen completion of each step (the first one when none was
    chosen, as on a step rated −1); ratings +1 → 1.0, −1 → 0.0, 0 → ``neutral`` (the paper
    counts neutral steps as acceptable). Steps after the first −1 are not rated."""
    _require(row, where, "question", "label")
    question = row["question"].get("problem") if isinstance(row["question"], dict) else None
    steps_in = row["label"].get("steps") if isinstance(row["label"], dict) else None
    if not isinstance(question, str) or not isinstance(steps_in, list):
        raise RecordError(f"{where}: expected question.problem and label.steps")
    steps, labels = [], []
    for k, step in enumerate(steps_in):
        completions = step.get("completions") or []
        chosen = step.get("chosen_completion")
        if step.get("human_completion") and chosen is None and not completions:
            c = step["human_completion"]
        elif completions:
            pick = chosen if isinstance(chosen, int) else 0
            if not 0 <= pick < len(completions):
                raise RecordError(f"{where}: step {k} chosen_completion {pick} is not one of its "
                                  f"{len(completions)} completions")
            c = completions[pick]
        else:
            raise RecordError(f"{where}: step {k} has no completion")
        rating = c.get("rating")
        if rating not in (-1, 0, 1, None):
            raise RecordError(f"{where}: step {k} rating {rating!r} is not -1, 0 or 1")
        steps.append(str(c.get("text", "")))
        labels.append(None if rating is None else {1: 1.0, 0: neutral, -1: 0.0}[rating])
        if rating == -1:
            break
    first = next((i for i, v in enumerate(labels) if v == 0.0), None)
    answer = row["question"].get("ground_truth_answer")
    return Trajectory(id=f"{_pid(question)}/{hashlib.sha1(json.dumps(steps).encode()).hexdigest()[:8]}",
                      problem_id=_pid(question), question=question, steps=steps, first_error=first,
                      step_labels=labels, label_source="human",
                      meta={"format": "prm800k", "ground_truth_answer": answer,
                            "finish_reason": row["label"].get("finish_reason")})


def from_math_shepherd(row: dict, where: str, tag: str = "ки") -> Trajectory:
    """``input`` has a ``ки`` after each step; ``label`` is the same text with "+" or "-"
    in place of each tag. The question is the text before "Step 1:" (or before the first step)."""
    _require(row, where, "input", "label")
    text, labeled = row["input"], row["label"]
    parts = text.split(tag)
    if len(parts) < 2:
        raise RecordError(f"{where}: no {tag!r} step tags in input")
    marks, cursor = [], 0
    for part in parts[:-1]:
        cursor += len(part)
        if cursor >= len(labeled) or labeled[cursor] not in "+-":
            raise RecordError(f"{where}: label text has no +/- where input has tag {len(marks)}")
        marks.append(labeled[cursor] == "+")
        cursor += 1  # the label text has one character where the input has the tag
    head = parts[0]
    split_at = head.find("Step 1")
    if split_at <= 0:
        raise RecordError(f"{where}: cannot tell the question from the first step (no 'Step 1' after it)")
    question = head[:split_at].strip()
    steps = [head[split_at:].strip(), *[p.strip() for p in parts[1:-1]]]
    labels = [1.0 if m else 0.0 for m in marks]
    first = next((i for i, v in enumerate(labels) if v == 0.0), None)
    return Trajectory(id=f"{_pid(question)}/{hashlib.sha1(text.encode()).hexdigest()[:8]}", problem_id=_pid(question),
                      question=question, steps=steps, first_error=first, step_labels=labels, label_source="mc",
                      meta={"format": "math-shepherd", "task": row.get("task")})


def from_trl(row: dict, where: str) -> Trajectory:
    _require(row, where, "prompt", "completions", "labels")
    steps, labels = list(row["completions"]), list(row["labels"])
    if len(steps) != len(labels):
        raise RecordError(f"{where}: {len(labels)} labels for {len(steps)} completions")
    values = [float(v) for v in labels]
    first = next((i for i, v in enumerate(values) if v < 0.5), None)
    question = row["prompt"]
    default_id = f"{_pid(question)}/{hashlib.sha1(json.dumps(steps).encode()).hexdigest()[:8]}"
    return Trajectory(id=str(row.get("id", default_id)),
                      problem_id=_pid(question), question=question, steps=[str(s) for s in steps],
                      first_error=first, step_labels=values, label_source="human", meta={"format": "trl"})


def from_prmbench(row: dict, where: str) -> list[Trajectory]:
    """A PRMBench row: the modified process with its first error, and the original process as
    an error-free trajectory (see the module docstring for the index base). Rows whose error
    steps all lie past the end of the process are skipped (no usable label)."""
    _require(row, where, "idx", "modified_process", "error_steps")
    question = row.get("modified_question") or row.get("question") or row.get("original_question")
    steps = [str(s) for s in row["modified_process"]]
    errors = row["error_steps"]
    if not isinstance(question, str) or not steps or not isinstance(errors, list):
        raise RecordError(f"{where}: expected a question, a non-empty modified_process and an error_steps list")
    if any(not isinstance(e, int) or e < 1 for e in errors):
        raise RecordError(f"{where}: error_steps {errors} must be 1-based step numbers (1..{len(steps)})")
    # 43 of PRMBench's 3,013 rows name a step past the end of the process (4 name only such
    # steps): the ones inside it are kept, the others recorded; a row with none inside is skipped
    inside = [e for e in errors if e <= len(steps)]
    if errors and not inside:
        return []
    first = min(inside) - 1 if inside else None
    pid = _pid(question)
    meta = {"format": "prmbench", "classification": row.get("classification"), "error_steps": errors,
            "reason": row.get("reason")}
    if len(inside) != len(errors):
        meta["error_steps_past_end"] = [e for e in errors if e > len(steps)]
    out = [Trajectory(id=str(row["idx"]), problem_id=pid, question=question, steps=steps, first_error=first,
                      correct=None if first is None else False, step_labels=truth_labels(len(steps), first),
                      label_source="human", meta=meta)]
    original = row.get("original_process")
    if isinstance(original, list) and original:
        out.append(Trajectory(id=f"{row['idx']}/original", problem_id=pid,
                              question=row.get("original_question") or question, steps=[str(s) for s in original],
                              first_error=None, step_labels=[1.0] * len(original), label_source="human",
                              meta={"format": "prmbench", "classification": "original"}))
    return out


_READERS = {"processbench": from_processbench, "prm800k": from_prm800k, "prmbench": from_prmbench,
            "math-shepherd": from_math_shepherd, "trl": from_trl}


def import_file(path: str | Path, fmt: str) -> list[Trajectory]:
    """Trajectories from a file in one of :data:`FORMATS`; errors name the file and item."""
    if fmt not in _READERS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no such file")
    out: list[Trajectory] = []
    for where, row in _rows(path):
        try:
            got = _READERS[fmt](row, where)
            out.extend(got if isinstance(got, list) else [got])
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as err:
            if isinstance(err, RecordError):
                raise
            raise RecordError(f"{where}: not a {fmt} record ({type(err).__name__}: {err})") from None
    return out


def to_trl(t: Trajectory, threshold: float = 0.5) -> dict[str, Any]:
    """TRL stepwise record; TRL wants booleans, so labels are thresholded (soft labels are
    lost here: keep our JSONL for soft-label training)."""
    if any(v is None for v in t.step_labels):
        raise RecordError(f"trajectory {t.id!r}: unlabeled steps cannot be exported to TRL")
    return {"prompt": t.question, "completions": list(t.steps), "labels": [v >= threshold for v in t.step_labels]}


def to_math_shepherd(t: Trajectory, threshold: float = 0.5, tag: str = "ки") -> dict[str, str]:
    if any(v is None for v in t.step_labels):
        raise RecordError(f"trajectory {t.id!r}: unlabeled steps cannot be exported to Math-Shepherd")
    steps = [f"Step {i + 1}: {s}" if not s.startswith("Step ") else s for i, s in enumerate(t.steps)]
    body = "\n".join(f"{s} {tag}" for s in steps)
    label = "\n".join(f"{s} {'+' if v >= threshold else '-'}" for s, v in zip(steps, t.step_labels, strict=True))
    return {"input": f"{t.question} {body}", "label": f"{t.question} {label}"}


def to_processbench(t: Trajectory) -> dict[str, Any]:
    """A ProcessBench record, with the fields (and their order) an import kept in meta."""
    known = {"id": t.id, "problem": t.question, "steps": list(t.steps), "final_answer_correct": t.correct,
             "label": -1 if t.first_error is None else t.first_error}
    kept = t.meta.get("processbench") or {}
    extra = dict(kept.get("extra") or {})
    if "generator" not in extra and t.meta.get("generator") is not None:
        extra["generator"] = t.meta["generator"]
    order = list(kept.get("fields") or ["id", "generator", "problem", "steps", "final_answer_correct", "label"])
    values = {**extra, **known}
    row = {k: values[k] for k in order if k in values}
    row.update({k: v for k, v in values.items() if k not in row})
    return row


def to_prm800k(t: Trajectory, threshold: float = 0.5) -> dict[str, Any]:
    """A PRM800K-style record: one chosen completion per step, rated +1 (label ≥ threshold),
    −1 (below) or null (unlabeled); neutral (0) ratings cannot be recovered from labels."""
    steps = [{"completions": [{"text": s, "rating": None if v is None else (1 if v >= threshold else -1)}],
              "chosen_completion": 0} for s, v in zip(t.steps, t.step_labels, strict=True)]
    return {"question": {"problem": t.question, "ground_truth_answer": t.meta.get("ground_truth_answer")},
            "label": {"steps": steps, "finish_reason": t.meta.get("finish_reason") or "solution"}}


def export(trajectories: list[Trajectory], fmt: str) -> str:
    """The text of a file in ``fmt``: ProcessBench's JSON list, or JSONL for the others."""
    if fmt == "processbench":
        return json.dumps([to_processbench(t) for t in trajectories], indent=2, ensure_ascii=False)
    writers = {"trl": to_trl, "math-shepherd": to_math_shepherd, "prm800k": to_prm800k}
    if fmt not in writers:
        raise ValueError(f"unknown output format {fmt!r}; choose from stepforge, {', '.join(EXPORTS)}")
    return "".join(json.dumps(writers[fmt](t), ensure_ascii=False) + "\n" for t in trajectories)

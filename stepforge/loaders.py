"""Loaders for real problem sets: GSM8K (with its reference steps) and any JSONL / Parquet /
saved HF dataset through a field mapping. Nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stepforge.schema import Problem, RecordError, Trajectory, iter_json_lines

_GSM8K_FINAL = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)
_ANNOTATION = re.compile(r"<<[^<>]*>>")


def data_roots() -> list[Path]:
    """Where shared data is looked for: $STEPFORGE_DATA, then ``shared/data`` beside or above
    the working directory and the source checkout."""
    roots = [Path(p) for p in os.environ.get("STEPFORGE_DATA", "").split(os.pathsep) if p]
    here = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), here):
        roots += [base / "shared" / "data", base.parent / "shared" / "data"]
    return roots


def find_data_file(relative: str) -> Path:
    for root in data_roots():
        if (root / relative).exists():
            return root / relative
    raise FileNotFoundError(f"{relative} not found under any of: {', '.join(map(str, data_roots()))} "
                            "(set STEPFORGE_DATA to the folder holding it)")


def parse_gsm8k_answer(answer: str, where: str) -> tuple[list[str], str]:
    """Reference steps (one a line, calculator annotations kept) and the final answer."""
    m = _GSM8K_FINAL.search(answer)
    if not m:
        raise RecordError(f"{where}: GSM8K answer has no '#### N' line")
    steps = [s.strip() for s in answer[:m.start()].splitlines() if s.strip()]
    return steps, m.group(1).replace(",", "").strip()


def strip_annotations(text: str) -> str:
    """``48/2 = <<48/2=24>>24`` → ``48/2 = 24``."""
    return _ANNOTATION.sub("", text)


def _iter_jsonl_dicts(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, row in iter_json_lines(path):
        if not isinstance(row, dict):
            raise RecordError(f"{path}:{lineno}: expected a JSON object")
        yield lineno, row


def load_gsm8k(split_or_path: str = "test", limit: int | None = None) -> list[Problem]:
    """GSM8K problems; ``meta['reference_steps']`` holds the reference solution's steps."""
    path = Path(split_or_path) if split_or_path.endswith(".jsonl") else find_data_file(f"gsm8k/{split_or_path}.jsonl")
    problems = []
    for lineno, row in _iter_jsonl_dicts(path):
        where = f"{path}:{lineno}"
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str):
                raise RecordError(f"{where}: missing string field {key!r}")
        steps, final = parse_gsm8k_answer(row["answer"], where)
        problems.append(Problem(id=f"gsm8k-{path.stem}-{lineno - 1}", question=row["question"], answer=final,
                                meta={"reference_steps": steps, "source": str(path.name)}))
        if limit is not None and len(problems) >= limit:
            break
    return problems


def reference_trajectories(problems: list[Problem]) -> list[Trajectory]:
    """The human-written reference solutions as labeled trajectories (every step correct)."""
    out = []
    for p in problems:
        steps = p.meta.get("reference_steps")
        if not steps:
            raise RecordError(f"problem {p.id!r} has no meta.reference_steps")
        out.append(Trajectory(id=f"{p.id}/ref", problem_id=p.id, question=p.question, steps=list(steps),
                              final_answer=p.answer, correct=True, step_labels=[1.0] * len(steps),
                              label_source="human", first_error=None))
    return out


def load_gsm8k_model_solutions(path: str | None = None, limit: int | None = None) -> list[Trajectory]:
    """GSM8K's ``example_model_solutions.jsonl``: real solutions by older models, with an
    ``is_correct`` flag, as unlabeled trajectories (problem ids match ``load_gsm8k("test")``);
    ``limit`` counts questions."""
    source = Path(path) if path else find_data_file("gsm8k/example_model_solutions.jsonl")
    out: list[Trajectory] = []
    for lineno, row in _iter_jsonl_dicts(source):
        pid = f"gsm8k-test-{lineno - 1}"
        for key, sol in row.items():
            if not (isinstance(sol, dict) and isinstance(sol.get("solution"), str)):
                continue
            steps = [s.strip() for s in sol["solution"].splitlines() if s.strip()]
            answer = steps[-1].split(":", 1)[1].strip() if steps and steps[-1].startswith("A:") else None
            out.append(Trajectory(id=f"{pid}/{key}", problem_id=pid, question=row["question"], steps=steps,
                                  final_answer=answer, correct=bool(sol.get("is_correct")),
                                  meta={"generator": key, "source": source.name}))
        if limit is not None and lineno >= limit:
            break
    return out


def load_problems(source: str, fields: Mapping[str, str] | None = None, id_prefix: str | None = None,
                  limit: int | None = None, split: str = "train") -> list[Problem]:
    """Problems from JSONL, Parquet, or a saved HF dataset dir, mapping its field names.

    ``fields`` maps our names (``question``, ``answer``, optionally ``id``) to the source's,
    e.g. ``{"question": "problem", "answer": "solution"}``. ``source`` may also be
    ``gsm8k:<split>`` for the shared GSM8K copy or ``math500`` for MATH-500 (``problem`` /
    ``answer`` / ``unique_id``).
    """
    if source.startswith("gsm8k:"):
        return load_gsm8k(source.split(":", 1)[1], limit=limit)
    if source in ("math500", "math500:test"):
        return load_problems(str(find_data_file("math500/test.jsonl")),
                             {"question": "problem", "answer": "answer", "id": "unique_id", **(fields or {})},
                             id_prefix="math500", limit=limit)
    fields = {"question": "question", "answer": "answer", **(fields or {})}
    path = Path(source)
    prefix = id_prefix or path.stem
    rows: Iterator[tuple[str, dict[str, Any]]]
    if path.suffix == ".jsonl":
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        rows = ((f"{path}:{lineno}", row) for lineno, row in _iter_jsonl_dicts(path))
    else:
        rows = _iter_dataset_rows(path, split)
    problems = []
    for i, (where, row) in enumerate(rows):
        values = {}
        for ours, theirs in fields.items():
            if theirs not in row:
                raise RecordError(f"{where}: missing field {theirs!r} (mapped to {ours!r}); "
                                  f"fields present: {', '.join(sorted(row))}")
            values[ours] = row[theirs]
        meta = {k: v for k, v in row.items() if k not in fields.values() and _is_json(v)}
        problems.append(Problem(id=str(values.get("id", f"{prefix}-{i}")), question=str(values["question"]),
                                answer=str(values["answer"]), meta=meta))
        if limit is not None and len(problems) >= limit:
            break
    return problems


def _iter_dataset_rows(path: Path, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    if path.suffix == ".parquet":
        ds = datasets.Dataset.from_parquet(str(path))
    elif path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        ds = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        raise RecordError(f"{path}: expected a .jsonl or .parquet file or a saved dataset directory")
    for i, row in enumerate(ds):
        yield f"{path}: row {i}", dict(row)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True

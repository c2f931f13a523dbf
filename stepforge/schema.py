"""Typed records (DESIGN.md §2) and their JSONL / Parquet IO.

Every reader validates each record and names the file and line (JSONL) or row (Parquet)
of the first bad one. JSONL writers can append and fsync so long jobs never lose work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

LabelSource = Literal["mc", "binary", "omegaprm", "judge", "truth", "human", "consensus"]


class RecordError(ValueError):
    """A bad input record; the message names where it is (file:line or item id)."""


class Cost(BaseModel):
    """Compute spent producing a record."""

    model_config = ConfigDict(extra="allow")
    rollouts: int = 0
    generated_tokens: int = 0


class Problem(BaseModel):
    """A question with a checkable answer."""

    model_config = ConfigDict(extra="forbid")
    id: str
    question: str
    answer: str
    meta: dict[str, Any] = Field(default_factory=dict)


class Trajectory(BaseModel):
    """A solution split into steps, with optional per-step labels.

    ``step_labels[t]`` is P(step t lies on a path to a correct answer), in [0, 1] or None
    when unlabeled; ``first_error`` is the index of the first wrong step (None if none).
    """

    model_config = ConfigDict(extra="forbid")
    id: str
    problem_id: str
    question: str
    steps: list[str]
    final_answer: str | None = None
    correct: bool | None = None
    step_labels: list[float | None] = Field(default_factory=list)
    label_source: LabelSource | None = None
    first_error: int | None = None
    cost: Cost = Field(default_factory=Cost)
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_labels(self) -> Trajectory:
        if not self.step_labels:  # unlabeled: store as all-None so the invariant below always holds
            self.step_labels = [None] * len(self.steps)
        if len(self.step_labels) != len(self.steps):
            raise ValueError(f"trajectory {self.id!r}: {len(self.step_labels)} step_labels "
                             f"for {len(self.steps)} steps")
        for i, label in enumerate(self.step_labels):
            if label is not None and not 0.0 <= label <= 1.0:
                raise ValueError(f"trajectory {self.id!r}: step_labels[{i}] = {label} is outside [0, 1]")
        if self.first_error is not None and not 0 <= self.first_error < len(self.steps):
            raise ValueError(f"trajectory {self.id!r}: first_error {self.first_error} is not a step "
                             f"index (0..{len(self.steps) - 1})")
        return self

    @property
    def text(self) -> str:
        return "\n".join(self.steps)


class StepPair(BaseModel):
    """A preference pair between two candidate next steps (TRL DPO compatible)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    chosen: str
    rejected: str
    problem_id: str
    step_index: int
    meta: dict[str, Any] = Field(default_factory=dict)


def truth_labels(n_steps: int, first_error: int | None) -> list[float]:
    """Hard labels from a known first error: steps before it lie on a correct path (1), it and
    every later step do not (0)."""
    if first_error is None:
        return [1.0] * n_steps
    return [1.0] * first_error + [0.0] * (n_steps - first_error)


Record = TypeVar("Record", bound=BaseModel)


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


def parse_record(data: Any, model: type[Record], where: str) -> Record:
    """Validate one decoded record; errors name ``where`` (e.g. ``file.jsonl:12``)."""
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RecordError(f"{where}: invalid {model.__name__}: {_describe(err)}") from None


def check_input_file(path: str | Path) -> Path:
    """An input that exists and is a regular file; a RecordError naming it otherwise."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no such file")
    if path.is_dir():
        raise RecordError(f"{path}: is a directory, not a file")
    return path


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) for each non-blank line; malformed JSON or text that is not
    UTF-8 raises naming the file and line."""
    path = check_input_file(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RecordError(f"{path}:{lineno}: not UTF-8 text (byte {err.start}: {err.reason})") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None


def iter_jsonl(path: str | Path, model: type[Record]) -> Iterator[Record]:
    """Yield validated records; blank lines are skipped, a bad line raises naming file:line.

    A truncated last line (a write cut off by a crash) is also an error: resumable writers
    call :func:`repair_jsonl_tail` before appending so this never happens to our own files.
    """
    for lineno, data in iter_json_lines(path):
        yield parse_record(data, model, f"{path}:{lineno}")


def read_jsonl(path: str | Path, model: type[Record]) -> list[Record]:
    return list(iter_jsonl(path, model))


def write_jsonl(path: str | Path, records: Iterable[BaseModel], append: bool = False, fsync: bool = False) -> int:
    """Write records one a line; with ``fsync`` the data is on disk when this returns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for rec in records:
            f.write(rec.model_dump_json() + "\n")
            n += 1
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return n


def repair_jsonl_tail(path: str | Path) -> int:
    """Drop a partial last line left by a killed writer; returns the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    cut = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(cut)
    return len(data) - cut


# Parquet goes through `datasets` so files load with load_dataset("parquet", ...). `meta` is
# free-form (heterogeneous keys and types across rows), which Arrow cannot unify, so it is
# stored as a JSON string column and decoded on read.
_JSON_COLUMNS = ("meta",)


def write_parquet(path: str | Path, records: Iterable[BaseModel]) -> int:
    from datasets import Dataset

    rows = []
    for rec in records:
        row = rec.model_dump()
        for col in _JSON_COLUMNS:
            if col in row:
                row[col] = json.dumps(row[col])
        rows.append(row)
    if not rows:
        raise RecordError(f"{path}: refusing to write an empty Parquet file (no records)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))
    return len(rows)


def read_parquet(path: str | Path, model: type[Record]) -> list[Record]:
    from datasets import Dataset

    ds = Dataset.from_parquet(str(path))
    out = []
    for i, row in enumerate(ds):
        row = dict(row)
        for col in _JSON_COLUMNS:
            if isinstance(row.get(col), str):
                try:
                    row[col] = json.loads(row[col])
                except json.JSONDecodeError:
                    raise RecordError(f"{path}: row {i}: column {col!r} is not valid JSON") from None
        out.append(parse_record(row, model, f"{path}: row {i}"))
    return out


def read_records(path: str | Path, model: type[Record], *, allow_empty: bool = False,
                 unique_ids: bool = False) -> list[Record]:
    """Read JSONL (``.jsonl``/``.json`` lines) or Parquet (``.parquet``) by extension. An empty
    file is an error ("no records") unless ``allow_empty``; with ``unique_ids`` a repeated
    ``id`` is an error naming both places."""
    path = check_input_file(path)
    if path.suffix == ".parquet":
        try:
            records = read_parquet(path, model)
        except RecordError:
            raise
        except Exception as err:
            raise RecordError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    else:
        records = read_jsonl(path, model)
    if not records and not allow_empty:
        raise RecordError(f"{path}: no records")
    if unique_ids:
        check_unique_ids(records, str(path))
    return records


def check_unique_ids(records: Iterable[BaseModel], where: str) -> None:
    """Duplicate ids are an error naming both records (1-based positions: JSONL line numbers
    when the file has no blank lines)."""
    seen: dict[str, int] = {}
    for i, rec in enumerate(records, start=1):
        rid = getattr(rec, "id", None)
        if rid is None:
            continue
        if rid in seen:
            raise RecordError(f"{where}: duplicate id {rid!r} (records {seen[rid]} and {i})")
        seen[rid] = i


def write_records(path: str | Path, records: Iterable[BaseModel]) -> int:
    path = Path(path)
    return write_parquet(path, records) if path.suffix == ".parquet" else write_jsonl(path, records)

"""Resumable batch jobs writing JSONL: one fsync'd append per batch, restart skips done work.

A job is a fixed list of batches, each with the ids it must produce. On restart, a batch
whose ids are all in the output file is skipped; records of any other batch (a batch cut
off mid-write) are dropped and the batch is redone, and a torn last line is removed. With
deterministic per-batch work (seeded by batch index) an interrupted-and-resumed job writes
the same file as an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel

from stepforge.schema import RecordError, read_jsonl, repair_jsonl_tail, write_jsonl

Item = TypeVar("Item")
Rec = TypeVar("Rec", bound=BaseModel)


@dataclass
class JobStats:
    batches_run: int
    batches_skipped: int


@dataclass
class Batch(Generic[Item]):
    index: int
    items: list[Item]
    ids: list[str]  # record ids this batch writes (extra records may carry other ids)


def run_resumable(path: str | Path, batches: Sequence[Batch[Item]], record_type: type[Rec],
                  process: Callable[[Batch[Item]], list[Rec]], id_of: Callable[[Rec], str],
                  on_batch: Callable[[Batch[Item], list[Rec]], None] | None = None,
                  process_many: Callable[[Sequence[Batch[Item]]], Iterable[list[Rec]]] | None = None) -> JobStats:
    """Run ``process`` on each batch not already complete in ``path``, appending its records.

    ``process_many`` (e.g. a Ray fan-out) may replace the serial loop: it gets the pending
    batches and must yield their records in the same order, so the file is the serial one.
    """
    path = Path(path)
    done = _complete_batches(path, batches, record_type, id_of)
    pending = [b for b in batches if b.index not in done]
    results = process_many(pending) if process_many else (process(b) for b in pending)
    run = 0
    for batch, records in zip(pending, results, strict=True):
        write_jsonl(path, records, append=True, fsync=True)
        run += 1
        if on_batch:
            on_batch(batch, records)
    return JobStats(run, len(done))


def _complete_batches(path: Path, batches: Sequence[Batch], record_type: type[Rec],
                      id_of: Callable[[Rec], str]) -> set[int]:
    if not path.exists():
        return set()
    repair_jsonl_tail(path)
    existing = read_jsonl(path, record_type)
    present = {id_of(r) for r in existing}
    done = {b.index for b in batches if all(i in present for i in b.ids)}
    # a record belongs to the batch whose ids it was written with; extras follow their batch
    owner: dict[str, int] = {i: b.index for b in batches for i in b.ids}
    kept, current = [], None
    for r in existing:
        current = owner.get(id_of(r), current)
        if current is None:  # not this job's record: never drop what another run wrote
            raise RecordError(f"{path}: holds record {id_of(r)!r}, which this job does not write; "
                              "choose another output (or --overwrite to replace it)")
        if current in done:
            kept.append(r)
    if len(kept) != len(existing):
        tmp = path.with_suffix(path.suffix + ".tmp")
        write_jsonl(tmp, kept, fsync=True)
        os.replace(tmp, path)
    return done

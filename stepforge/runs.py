"""Run identity and safe writes: outputs are never lost and never silently reused.

Every resumable output (a JSONL file, a run directory) has a small manifest recording what
made it: the command's config, model identities and input fingerprints. A re-run resumes
only when its identity equals the manifest's; otherwise :class:`RunMismatchError` names the
differing fields, and only ``overwrite=True`` starts afresh (after which the old output is
gone, on purpose). Files that are rewritten whole (summaries, reports, converted files)
go through :func:`atomic_write_text`: a temporary file renamed into place.

Manifests: ``<file>.run.json`` beside a file output, ``<dir>/run.json`` inside a directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1
_BLOCK = 1 << 16  # bytes hashed at each end of a large file


class RunMismatchError(ValueError):
    """An output exists and was made by a different configuration."""


TRAIN_RECORD = "stepforge_train.json"  # how a model trained by stepforge was made (config, corpus, command)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place, so a reader
    (or a crash) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_jsonl(path: str | Path, records: Iterable[Any]) -> Path:
    """Pydantic records one a line, written atomically (for files rewritten whole)."""
    return atomic_write_text(path, "".join(r.model_dump_json() + "\n" for r in records))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Size and a hash of the first and last 64 KiB (cheap on multi-GB files; any edit that
    changes the size or either end changes it)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(_BLOCK))
        if size > 2 * _BLOCK:
            f.seek(size - _BLOCK)
        h.update(f.read(_BLOCK))
    return {"path": str(path), "size": size, "sha256_ends": h.hexdigest()[:16]}


def dir_fingerprint(path: str | Path) -> dict[str, Any]:
    """A model/PRM directory: hashes of its small config files, names and sizes of the rest."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(f.name.encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        if f.suffix == ".json" and size < 1 << 20:
            h.update(f.read_bytes())
    return {"path": str(path), "sha256": h.hexdigest()[:16]}


def fingerprint(path: str | Path | None) -> dict[str, Any] | None:
    """:func:`file_fingerprint` or :func:`dir_fingerprint`; a name that is no local path
    (e.g. a served model name) is recorded as given."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        return dir_fingerprint(p)
    if p.is_file():
        return file_fingerprint(p)
    return {"name": str(path)}


def manifest_path(output: str | Path) -> Path:
    """``<dir>/run.json`` for a directory output (a path without a suffix), else ``<file>.run.json``."""
    output = Path(output)
    return output / "run.json" if not output.suffix else output.with_name(output.name + ".run.json")


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``field: old -> new`` for every field that differs (nested fields dotted)."""
    a, b = _flatten(_normalise(old)), _flatten(_normalise(new))
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


def _exists(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if p.exists() and (not p.is_dir() or any(p.iterdir()))]


def claim_output(output: str | Path, identity: Mapping[str, Any], *, overwrite: bool = False,
                 also: Iterable[str | Path] = ()) -> bool:
    """Make ``output`` this run's, before any work is written there.

    - nothing there: record the manifest, return False (a fresh run);
    - there with the same identity: return True (resume);
    - there with another identity, or without a manifest: :class:`RunMismatchError`
      naming the differing fields, unless ``overwrite``, which deletes ``output`` (and the
      ``also`` paths that belong to it) and starts afresh.
    """
    output = Path(output)
    is_dir = not output.suffix
    manifest = manifest_path(output)
    targets = [output, *map(Path, also)]
    present = _exists(targets)
    wanted = {"stepforge_run": MANIFEST_VERSION, **_normalise(identity)}
    if present and not overwrite:
        if not manifest.exists():
            raise RunMismatchError(f"{output} exists but has no run manifest ({manifest.name}), so stepforge cannot "
                                   "tell what made it; pass --overwrite to replace it, or choose another output")
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise RunMismatchError(f"{manifest}: unreadable run manifest ({err}); pass --overwrite to start "
                                   "afresh") from None
        diff = identity_diff(old, wanted)
        if diff:
            raise RunMismatchError(f"{output} was made by a different run; differing fields:\n  " + "\n  ".join(diff)
                                   + "\nre-run with the same settings to resume, pass --overwrite to start afresh, "
                                   "or choose another output")
        return True
    if overwrite:
        for p in targets:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        if not is_dir:
            manifest.unlink(missing_ok=True)
    if is_dir:
        output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, wanted)
    return False

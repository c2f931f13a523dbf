"""Data commands: convert between stepforge trajectories and public step-label formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stepforge.cli.common import Overwrite, command, console, refuse_existing


@command()
def convert(
    source: Annotated[Path, typer.Argument(help="a file in a public step-label format, or stepforge trajectories")],
    fmt: Annotated[str, typer.Option("--from", help="stepforge | processbench | prm800k | prmbench | math-shepherd | "
                                                    "trl")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output file (.jsonl or .parquet for stepforge)")],
    to: Annotated[str, typer.Option(help="stepforge | trl | math-shepherd | processbench | prm800k")] = "stepforge",
    overwrite: Overwrite = False,
) -> None:
    """Convert public step-label formats to stepforge trajectories, or stepforge trajectories out
    to them (written atomically)."""
    from stepforge import formats
    from stepforge.runs import atomic_write_jsonl, atomic_write_text
    from stepforge.schema import Trajectory, read_records, write_records

    refuse_existing(out, overwrite)
    records = read_records(source, Trajectory) if fmt == "stepforge" else formats.import_file(source, fmt)
    if not records:
        raise ValueError(f"{source}: no records")
    if to == "stepforge":
        if out.suffix == ".parquet":
            tmp = out.with_name(f".{out.name}.tmp.parquet")
            write_records(tmp, records)
            tmp.replace(out)
        else:
            atomic_write_jsonl(out, records)
    else:
        atomic_write_text(out, formats.export(records, to))
    console.print(f"converted {len(records)} records from {fmt} to {to}: [bold]{json.dumps(str(out))[1:-1]}[/bold]")

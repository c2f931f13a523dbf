"""The ``stepforge`` command line (typer), one module per stage; each command is a thin shell
over a library function."""

from stepforge.cli import data, expand, label, prm, sample, search, synthesize, train  # noqa: F401  (register the commands)
from stepforge.cli.common import app

__all__ = ["app"]


def main() -> None:  # pragma: no cover
    app()

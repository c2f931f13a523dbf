"""``python -m stepforge.cli`` (as the ``stepforge`` script)."""

import os

from stepforge.cli import app

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
app()

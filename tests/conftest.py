import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# real-data tests read the small fixtures shipped in tests/data (never ../shared): a fresh clone
# without the shared folder runs the whole suite
FIXTURES = Path(__file__).parent / "data"
os.environ["STEPFORGE_DATA"] = str(FIXTURES)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def world_policy():
    """The shipped world checkpoint as a transformers Policy."""
    from transformers.utils import logging as hf_logging

    from stepforge.backends import make_policy

    hf_logging.disable_progress_bar()
    return make_policy("world")

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def world_policy():
    """The shipped world checkpoint as a transformers Policy."""
    from transformers.utils import logging as hf_logging

    from stepforge.backends import make_policy

    hf_logging.disable_progress_bar()
    return make_policy("world")

"""Shared set-up of the benchmark scripts: one torch thread (fastest for the tiny world
models on these CPUs) and quiet transformers."""

import torch
from transformers.utils import logging as hf_logging


def quiet_cpu(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

"""Torch stages that run on a loader's own thread (``crop.py``, ``features.py``) use one intra-op thread: the loader's
other threads already fill the cores, and two intra-op threads cost about twice the CPU per crop (measured)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread():
    """torch's intra-op threads set to 1 inside the block, restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

"""Turning a loader's Batch into the model's inputs on the model's device, and the autocast context the forward runs
in (shared by training, evaluation and predict)."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from avdali.data.normalize import prepare_video


AMP_DTYPES: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
"""``train.amp`` (``config.AMP_CHOICES`` once "auto" is resolved) → the autocast dtype, None for full precision."""


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """The forward's autocast context: ``amp_dtype`` on ``device``, or a no-op context for full precision."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def to_device(batch, device: torch.device):
    """The batch with every tensor on ``device`` (no copy when already there; non-blocking from pinned memory)."""
    moved = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor) and value.device != device:
            value = value.to(device, non_blocking=True)
        moved[f.name] = value
    return dataclasses.replace(batch, **moved)


def model_video(video: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 N,T,C,H,W → normalised float on its own device; in channels-last order when asked.

    The frame CNN sees ``video.flatten(0, 1)`` (N·T,C,H,W); storing the 5-D tensor as N,T,H,W,C makes
    that flattened view channels-last without another copy.
    """
    video = prepare_video(video)
    if channels_last and video.dim() == 5:
        video = video.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return video

"""One batch as both loaders hand it to training: fixed shapes, padding marked by ``valid``."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """A batch of clips; every tensor's first dimension is N (the batch size)."""

    video: torch.Tensor
    """N,T,C,H,W: uint8 raw RGB pixels, or float16/float32 ImageNet-normalised (``DataConfig.video_dtype``).
    The DALI loader's is a view of N,T,H,W,C memory (channels-last, what the frame CNN reads); the torch loader's
    is contiguous."""
    audio: torch.Tensor
    """N,F,A float32 log-mel or MFCC, normalised per utterance and bin; frames past ``audio_len`` are zero padding."""
    audio_len: torch.Tensor
    """N int64: valid audio frames (the rest pads clips shorter than the window)."""
    label: torch.Tensor
    """N int64 class ids in the configured label space."""
    index: torch.Tensor
    """N int64: the sample's position in the chosen splits (manifest split order, then tar order; stable)."""
    valid: torch.Tensor
    """N bool: False for padding samples (last batch / rank padding); evaluation counts only valid ones."""
    audio_present: torch.Tensor | None = None
    """N bool: False where the clip has no audio stream (its ``audio`` is a placeholder the model must not read as
    sound; the model puts its learned "missing audio" embedding there). None when made = all True."""
    video_present: torch.Tensor | None = None
    """N bool: False where the clip has no usable video (placeholder frames; the model's "missing video" embedding
    stands in). None when made = all True."""
    crop_box: torch.Tensor | None = None
    """N,4 int32 (top, left, height, width): the window of the stored frame that ``video`` was cropped (and scaled)
    from, by the clip specification; the speaker stage crops the speaker's mean frame the same way. None: unknown."""
    flipped: torch.Tensor | None = None
    """N bool: the clip's frames were mirrored after the crop (training). None: unknown."""

    def __post_init__(self):
        for name in ("audio_present", "video_present"):
            if getattr(self, name) is None:
                setattr(self, name, torch.ones(self.label.shape[0], dtype=torch.bool, device=self.label.device))

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """The batch on ``device`` (non-blocking copies from pinned memory overlap with compute)."""
        return Batch(**{f.name: _to(getattr(self, f.name), device, non_blocking) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.label.shape[0])


def _to(value: torch.Tensor | None, device, non_blocking: bool) -> torch.Tensor | None:
    return None if value is None else value.to(device, non_blocking=non_blocking)

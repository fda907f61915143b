"""Turning uint8 pixels into model input on the model's device, so the loader never spends CPU on it."""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet in [0, 1] (what the ResNet18 backbone was trained with)."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet in [0, 1]."""


def prepare_video(video: torch.Tensor) -> torch.Tensor:
    """uint8 N,T,C,H,W → float32 ImageNet-normalised, computed on ``video``'s own device.

    Float input (already normalised in the pipeline, ``video_dtype`` float16/float32) passes through unchanged.
    """
    if video.is_floating_point():
        return video
    if video.dtype != torch.uint8:
        raise TypeError(f"prepare_video expects uint8 or float video, got {video.dtype}")
    shape = (1,) * (video.dim() - 3) + (3, 1, 1)  # broadcast over N,T and H,W: channel is dim -3
    mean = torch.tensor(IMAGENET_MEAN, device=video.device).view(shape)
    std = torch.tensor(IMAGENET_STD, device=video.device).view(shape)
    return (video.float().div_(255.0) - mean).div_(std)

"""Which streams a model sees: modality dropout in training, and which modalities a checkpoint can serve.

A checkpoint can always serve "both" streams. It can serve "audio" (video removed) only when it was trained with
``train.drop_video > 0``, and "video" only with ``train.drop_audio > 0``: otherwise its learned "missing" embedding
for the removed stream was never trained, and what it predicts from one stream means nothing. The rule reads the
checkpoint's config, so ``avdali eval``, training's test step and ``avdali predict`` all apply the same one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from avdali.errors import AvdaliError

MODALITIES = ("both", "audio", "video")
"""What a model can be asked to use: both streams, audio only (video removed), video only (audio removed)."""

_NEEDS = {"audio": "drop_video", "video": "drop_audio"}
"""Modality → the ``[train]`` key that trains the embedding of the stream it removes."""

SINGLE_STREAM_NAMES = {"audio": "audio_only", "video": "video_only"}
"""A single-stream modality's name in TensorBoard tags and reports (``test/audio_only/acc``)."""


def servable_modalities(config: dict[str, Any]) -> tuple[str, ...]:
    """The modalities (in ``MODALITIES`` order) a checkpoint with run config ``config`` (``RunConfig.to_dict()``, a
    checkpoint's "config") can serve. A config written before modality dropout existed serves "both" only."""
    train = config.get("train", {}) if isinstance(config, dict) else {}
    return tuple(m for m in MODALITIES if m == "both" or float(train.get(_NEEDS[m], 0.0) or 0.0) > 0)


def require_modality(checkpoint: str | Path, config: dict[str, Any], modality: str) -> None:
    """AvdaliError (one line naming the checkpoint, the modality and the ``[train]`` key to set) unless the checkpoint
    with run config ``config`` can serve ``modality``."""
    if modality not in MODALITIES:
        raise AvdaliError(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if modality in servable_modalities(config):
        return
    key = _NEEDS[modality]
    removed = "video" if modality == "audio" else "audio"
    raise AvdaliError(
        f"{checkpoint}: cannot serve --modality {modality}: it was trained with train.{key} = 0, so its "
        f"missing-{removed} embedding never learned anything; train with train.{key} > 0 (e.g. 0.2)"
    )


def unservable_reason(modality: str) -> str:
    """Why a checkpoint cannot serve single-stream ``modality``, in a few words (for tables)."""
    return f"not trained for it (train.{_NEEDS[modality]} = 0)"


def role_tag(role: str, modality: str) -> str:
    """TensorBoard prefix of a role's metrics (``val``, ``test``) for ``modality``: the role itself for both streams (as
    before modality dropout existed), ``<role>/audio_only``, ``<role>/video_only``."""
    return role if modality == "both" else f"{role}/{SINGLE_STREAM_NAMES[modality]}"


def test_tag(modality: str) -> str:
    """TensorBoard prefix of best.pt's test metrics for ``modality``: ``test``, ``test/audio_only``, ``test/video_only``."""
    return role_tag("test", modality)


def hparam_metrics(robustness: dict[str, dict[str, float]]) -> dict[str, float]:
    """TensorBoard hparams metrics of the test results per modality: ``test_acc`` …, ``test_audio_only_acc`` …"""
    return {f"{test_tag(m).replace('/', '_')}_{k}": v for m, scalars in robustness.items() for k, v in scalars.items()}


def presence(modality: str, audio_present: torch.Tensor, video_present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (audio_present, video_present) masks the model gets for ``modality``: the batch's own for "both"; the
    removed stream marked absent for every sample otherwise."""
    if modality == "audio":
        return audio_present, torch.zeros_like(video_present)
    if modality == "video":
        return torch.zeros_like(audio_present), video_present
    if modality != "both":
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    return audio_present, video_present


def dropout_masks(
    audio_present: torch.Tensor,
    video_present: torch.Tensor,
    *,
    drop_audio: float,
    drop_video: float,
    seed: int,
    rank: int,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training's (audio_present, video_present) after modality dropout, on the masks' device without a host sync.

    One uniform draw u per sample: u < drop_audio drops its audio, drop_audio ≤ u < drop_audio + drop_video its
    video, so a sample loses one stream at most; and a stream is never dropped where the other one is already absent
    (a sample with neither stream teaches nothing). The draw comes from a generator seeded by (seed, rank, step)
    alone, so a resumed run draws exactly what the uninterrupted one would have, and no other random stream moves.
    """
    generator = torch.Generator(device=audio_present.device)
    generator.manual_seed(_mix(seed, rank, step))
    u = torch.rand(audio_present.shape, generator=generator, device=audio_present.device)
    dropped_audio = (u < drop_audio) & video_present
    dropped_video = (u >= drop_audio) & (u < drop_audio + drop_video) & audio_present
    return audio_present & ~dropped_audio, video_present & ~dropped_video


def _mix(seed: int, rank: int, step: int) -> int:
    """One 63-bit generator seed per (seed, rank, step) (a SplitMix64 finaliser over the three, so neighbours differ)."""
    x = (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return x >> 1

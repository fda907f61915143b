"""Which frames and which audio window a clip contributes: the one formula both loaders use.

Everything is integer arithmetic so the DALI graph (``dali.py``) computes bit-identical indices:

- frame i of T from a clip of n frames is ``(2*i*n + o_i) // (2*T)`` with ``o_i`` in ``[0, 2n)``.
  That is frame ``floor((i + o_i / 2n) * n / T)``: a position inside the i-th of T equal segments.
  Evaluation takes the segment centre (``o_i = n``); training draws ``o_i`` uniformly (temporal jitter).
  Clips shorter than T frames repeat frames; the largest possible index is n - 1.
- the audio window of W samples from a clip of L samples starts at ``(max(L - W, 0)) // 2`` in evaluation
  (centred) and at a uniform offset in ``[0, max(L - W, 0)]`` in training; shorter clips are padded.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
"""Audio rate of the shards (``avdali.shardformat.AUDIO_RATE``)."""
WINDOW = 400
"""STFT window: 25 ms at 16 kHz."""
NFFT = 512
"""FFT size: the 25 ms window zero-padded to a power of two (DALI's CPU FFT runs 2.4× faster at 512 than at 400;
the power spectrum of the same windowed samples, sampled on a finer grid)."""
HOP = 160
"""STFT hop: 10 ms at 16 kHz."""


def frame_indices(num_frames: int, t: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """T frame indices (int64, non-decreasing) over a clip of ``num_frames``; jittered when ``rng`` is given."""
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    i = np.arange(t, dtype=np.int64)
    if rng is None:
        offset = np.full(t, num_frames, dtype=np.int64)
    else:
        # the same draw as the DALI graph: floor(u * 2n), u uniform in [0, 1)
        offset = np.floor(rng.random(t, dtype=np.float32) * np.float32(2 * num_frames)).astype(np.int64)
        offset = np.minimum(offset, 2 * num_frames - 1)
    return (2 * i * num_frames + offset) // (2 * t)


def window_samples(audio_seconds: float) -> int:
    """W: samples in the fixed audio window."""
    return int(round(audio_seconds * SAMPLE_RATE))


def feature_frames(samples: int) -> int:
    """STFT frames of ``samples`` audio samples with centred windows (what torchaudio and DALI both give)."""
    return 1 + samples // HOP


def audio_start(num_samples: int, window: int, rng: np.random.Generator | None = None) -> int:
    """First sample of the audio window: centred in evaluation, uniform in training (``rng`` given)."""
    slack = max(num_samples - window, 0)
    if rng is None:
        return slack // 2
    return int(rng.integers(0, slack + 1))


def rank_range(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous sample range ``[lo, hi)`` one rank reads (DALI's reader splits shards the same way)."""
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Batches every rank yields per epoch: enough for the largest rank range; smaller ranks pad."""
    largest = -(-num_samples // world_size)
    return -(-largest // batch_size)


def center_crop_box(height: int, width: int, crop: int) -> tuple[int, int, int]:
    """Evaluation crop (top, left, side): a ``crop`` square in the centre, or the largest centred square
    (then resized to ``crop``) when the frame is smaller than ``crop``."""
    side = min(height, width, crop)
    return (height - side) // 2, (width - side) // 2, side

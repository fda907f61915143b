"""The clip specification: what one clip contributes to a batch, written once for every loader.

The DALI pipeline (``dali/graph.py``), the torch loader's per-clip kernel (``decode.py``), ``avdali predict`` and the
decoded-frame cache read a clip by these rules and constants; none keeps a copy of its own. **The rule:** a transform
lives here, or in a stage after the loader (``normalize.prepare_video``, ``speakers.SpeakerNorm``; ``crop.py``, the
torch crop every loader uses on a CPU), never in one loader only.

The formulas take an ``ops`` namespace, so the same lines compute in numpy (``NUMPY``, the torch loader) and inside a
DALI graph (``dali.GRAPH_OPS``, where every value is a DataNode); all arithmetic is integer or float32, so both give
the same numbers for the same uniform draws ``u`` in ``[0, 1)``.

- **Frames.** Frame i of T from a clip of n frames. Evaluation takes the centre of the i-th of T equal segments,
  ``(2*i*n + n) // (2*T)``. Training (temporal jitter) takes a uniform frame of the i-th integer segment
  ``[i*n // T, (i+1)*n // T)``. Both are non-decreasing, at most n - 1, and strictly increasing when n ≥ T, so a
  decoder reading them in order decodes every frame once; a clip of at most T frames uses each of its frames, in
  order (repeating some), with no jitter.
- **Crop.** Evaluation: the centred ``crop`` square (``center_crop_box``), scaled up when the frame is smaller.
  Training: a random resized crop (``random_crop_box``: an integer window of ``CROP_AREA`` of the frame at an aspect
  in ``CROP_ASPECT``), resampled to ``crop`` without antialiasing, then flipped with ``FLIP_PROBABILITY``.
- **Audio.** A window of ``audio_seconds``: centred in evaluation, at a uniform offset in training (``audio_start``);
  shorter clips are padded. Log-mel: ``WINDOW``-sample Hann window, ``NFFT`` FFT, ``HOP`` hop, centred reflect-padded
  frames, power 2, ``N_MELS`` Slaney-scale Slaney-normalised bins from ``F_MIN`` to ``F_MAX``, ``10·log10`` with a
  floor of ``AMIN`` (``DB_FLOOR`` dB); MFCC: orthonormal DCT-II of that. Then each bin is standardised over the
  clip's valid frames (``NORM_EPS``), or by the speaker (``speakers.py``).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

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
F_MIN = 0.0
"""Lowest mel filter edge, Hz."""
F_MAX = SAMPLE_RATE / 2
"""Highest mel filter edge, Hz (Nyquist)."""
AMIN = 1e-10
"""Floor of the mel power before the log (torchaudio's ``AmplitudeToDB`` default)."""
DB_FLOOR = 10.0 * math.log10(AMIN)
"""The same floor in dB (DALI's ``to_decibels(cutoff_db=...)``): -100 dB."""
NORM_EPS = 1e-5
"""Added to a bin's variance before its square root when standardising features (silence would divide by zero)."""

CROP_AREA = (0.35, 1.0)
"""Random resized crop: share of the frame area kept (faces: a mild zoom, never a tiny patch)."""
CROP_ASPECT = (3 / 4, 4 / 3)
"""Random resized crop: aspect ratio (width / height) range of the window, drawn uniformly in log space."""
CROP_ANTIALIAS = False
"""The window is mostly scaled up or barely down; antialiasing cost 13 % of the DALI CPU pipeline's throughput."""
FLIP_PROBABILITY = 0.5
"""Training: chance that a clip's frames are mirrored left to right."""

SPEAKER_OFFSET = 128.0
"""Added to a frame minus its speaker's mean frame so the difference fits uint8 (±127 levels survive)."""
SPEAKER_STD_EPS = 1e-5
"""Added to a speaker's per-bin variance before the square root."""

NUMPY = SimpleNamespace(
    const=lambda values: np.asarray(values),
    floor=np.floor,
    minimum=np.minimum,
    maximum=np.maximum,
    sqrt=np.sqrt,
    exp=np.exp,
    to_int=lambda x: np.asarray(x).astype(np.int64),
    to_float=lambda x: np.asarray(x, dtype=np.float32),
)
"""The formulas' operations on numpy values (float32, like a DALI graph)."""


def frame_indices(num_frames, t: int, u=None, ops=NUMPY):
    """T frame indices (non-decreasing, ≤ n - 1) over a clip of ``num_frames`` (n); ``u``: T uniform draws in
    ``[0, 1)`` for training's jitter, None for evaluation's segment centres."""
    n = num_frames
    i = ops.const(np.arange(t, dtype=np.int32))
    if u is None:
        return (2 * i * n + n) // (2 * t)
    start = i * n // t
    width = ops.maximum((i + 1) * n // t - start, 1)
    return start + ops.minimum(ops.to_int(ops.floor(u * ops.to_float(width))), width - 1)


def draw_frame_indices(num_frames: int, t: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``frame_indices`` in numpy (int64), its draws from ``rng`` (None: evaluation)."""
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    u = None if rng is None else rng.random(t, dtype=np.float32)
    return np.asarray(frame_indices(np.int64(num_frames), t, u), dtype=np.int64)


def draw_batch_frame_indices(num_frames: np.ndarray, t: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """N,T ``draw_frame_indices`` of N clips of ``num_frames`` frames at once: the same draws, clip after clip, from
    ``rng`` (None: evaluation), so the same indices as N calls of it."""
    n = np.asarray(num_frames, dtype=np.int64).reshape(-1, 1)
    if n.size and n.min() < 1:
        raise ValueError(f"a clip needs at least one frame, got {int(n.min())}")
    u = None if rng is None else rng.random((len(n), t), dtype=np.float32)
    return np.asarray(frame_indices(n, t, u), dtype=np.int64).reshape(len(n), t)


def center_crop_box(height: int, width: int, crop: int) -> tuple[int, int, int]:
    """Evaluation crop (top, left, side): a ``crop`` square in the centre, or the largest centred square
    (then resized to ``crop``) when the frame is smaller than ``crop``."""
    side = min(height, width, crop)
    return (height - side) // 2, (width - side) // 2, side


def random_crop_box(u, height: int, width: int, ops=NUMPY):
    """Training's crop window (top, left, h, w) in whole pixels of a ``height`` × ``width`` frame from four uniform
    draws ``u[0..3]``: area share, log-aspect, left, top. The window is clipped to the frame (no rejection loop, so
    both loaders draw the same distribution)."""
    area = float(height * width) * (CROP_AREA[0] + u[0] * (CROP_AREA[1] - CROP_AREA[0]))
    lo, hi = math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])
    aspect = ops.exp(lo + u[1] * (hi - lo))
    w = ops.minimum(ops.to_int(ops.floor(ops.sqrt(area * aspect) + 0.5)), width)
    h = ops.minimum(ops.to_int(ops.floor(ops.sqrt(area / aspect) + 0.5)), height)
    left = ops.minimum(ops.to_int(ops.floor(u[2] * ops.to_float(width - w + 1))), width - w)
    top = ops.minimum(ops.to_int(ops.floor(u[3] * ops.to_float(height - h + 1))), height - h)
    return top, left, h, w


def crop_roi(top, left, h, w, flip):
    """The resampling window of a crop box as (start, end) corners, (y, x) each: mirrored (start > end along x) when
    ``flip`` is 1, which makes a resize of it come out flipped."""
    return (top, left + flip * w), (top + h, left + w - flip * w)


def draw_crop_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``random_crop_box`` in numpy: (top, left, h, w) as Python ints."""
    return tuple(int(v) for v in random_crop_box(rng.random(4, dtype=np.float32), height, width))


def draw_crop_boxes(n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """N,4 int32 ``draw_crop_box`` of ``n`` clips at once (the same draws, clip after clip, so the same boxes)."""
    u = rng.random((n, 4), dtype=np.float32)
    return np.stack(random_crop_box(u.T, height, width), axis=1).astype(np.int32).reshape(n, 4)


def window_samples(audio_seconds: float) -> int:
    """W: samples in the fixed audio window."""
    return int(round(audio_seconds * SAMPLE_RATE))


def feature_frames(samples: int) -> int:
    """STFT frames of ``samples`` audio samples with centred windows (what torchaudio and DALI both give)."""
    return 1 + samples // HOP


def audio_start(num_samples, window: int, u=None, ops=NUMPY):
    """First sample of the audio window: centred in evaluation (``u`` None), at ``u`` ∈ [0, 1) of the slack in
    training."""
    slack = ops.maximum(num_samples - window, 0)
    if u is None:
        return slack // 2
    return ops.minimum(ops.to_int(ops.floor(u * ops.to_float(slack + 1))), slack)


def draw_audio_start(num_samples: int, window: int, rng: np.random.Generator | None = None) -> int:
    """``audio_start`` in numpy, its draw from ``rng`` (None: evaluation)."""
    u = None if rng is None else rng.random(dtype=np.float32)
    return int(audio_start(np.int64(num_samples), window, u))


def draw_audio_starts(num_samples: np.ndarray, window: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """int64 ``draw_audio_start`` of N clips of ``num_samples`` samples at once (the same draws, clip after clip)."""
    counts = np.asarray(num_samples, dtype=np.int64).reshape(-1)
    u = None if rng is None else rng.random(len(counts), dtype=np.float32)
    return np.asarray(audio_start(counts, window, u), dtype=np.int64).reshape(-1)

"""Emotion → expression: the learnable signal every synthetic clip carries, in face and voice.

Each emotion is a point in a small parameter space (mouth, brows, eyes, tint; pitch, contour,
tempo, energy, brightness). Intensity scales the distance from neutral; every actor has a
personal bias and every clip its own jitter, so a class is a cloud, not a point, and neither
stream alone separates the classes perfectly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np


@dataclass(frozen=True)
class Expression:
    """Face and voice parameters of one clip (neutral = all offsets 0, multipliers 1)."""

    mouth_curve: float
    """Corner lift in mouth half-widths: + smile, - frown."""
    mouth_open: float
    """Resting lip gap as a fraction of mouth width (speech adds to it)."""
    brow_tilt: float
    """Inner brow ends: + raised (sad, fearful), - pulled down (angry), in eye heights."""
    brow_raise: float
    """Whole-brow lift in eye heights (surprised, fearful)."""
    eye_open: float
    """Eye height multiplier: < 1 narrowed, > 1 wide."""
    tint_b: float
    """Blue shift of the skin, -1..1 (× 60 grey levels)."""
    tint_g: float
    """Green shift of the skin, -1..1."""
    tint_r: float
    """Red shift of the skin, -1..1."""
    pitch_st: float
    """Pitch level in semitones relative to the speaker's base pitch."""
    pitch_slope_st: float
    """Pitch change over the utterance in semitones (+ rising, - falling)."""
    pitch_wobble_st: float
    """Depth of a fast (7 Hz) pitch tremor in semitones (fear, excitement)."""
    syllable_rate: float
    """Syllables per second."""
    energy: float
    """Linear loudness of the voiced sound (0..1)."""
    brightness: float
    """Spectral tilt: + brighter (more high harmonics), - darker."""
    breathiness: float
    """Share of breath noise in the voiced sound (0 clean … 1 whispery): sad, fearful."""


NEUTRAL = Expression(
    mouth_curve=0.0, mouth_open=0.08, brow_tilt=0.0, brow_raise=0.0, eye_open=1.0,
    tint_b=0.0, tint_g=0.0, tint_r=0.0,
    pitch_st=0.0, pitch_slope_st=-0.5, pitch_wobble_st=0.0, syllable_rate=4.0, energy=0.55, brightness=0.0,
    breathiness=0.1,
)  # fmt: skip

EXPRESSIONS: dict[str, Expression] = {
    "neutral": NEUTRAL,
    "calm": replace(
        NEUTRAL, mouth_curve=0.3, mouth_open=0.03, eye_open=0.5, tint_b=0.6, tint_g=0.6, tint_r=-0.4,
        pitch_st=-1.0, pitch_slope_st=0.0, syllable_rate=2.6, energy=0.35, brightness=-0.4, breathiness=0.0,
    ),
    "happy": replace(
        NEUTRAL, mouth_curve=1.0, mouth_open=0.3, brow_raise=0.25, eye_open=0.85, tint_b=-0.6, tint_g=0.5, tint_r=0.8,
        pitch_st=4.0, pitch_slope_st=3.0, pitch_wobble_st=0.3, syllable_rate=5.2, energy=0.8, brightness=0.6,
    ),
    "sad": replace(
        NEUTRAL, mouth_curve=-0.9, mouth_open=0.04, brow_tilt=0.8, brow_raise=-0.1, eye_open=0.65,
        tint_b=0.9, tint_g=-0.2, tint_r=-0.6,
        pitch_st=-4.0, pitch_slope_st=-4.5, syllable_rate=2.0, energy=0.25, brightness=-1.0, breathiness=0.7,
    ),
    "angry": replace(
        NEUTRAL, mouth_curve=-0.5, mouth_open=0.35, brow_tilt=-1.0, brow_raise=-0.35, eye_open=0.75,
        tint_b=-0.6, tint_g=-0.6, tint_r=1.0,
        pitch_st=2.0, pitch_slope_st=-2.0, syllable_rate=5.5, energy=1.0, brightness=1.0, breathiness=0.0,
    ),
    "fearful": replace(
        NEUTRAL, mouth_curve=-0.35, mouth_open=0.45, brow_tilt=0.9, brow_raise=0.6, eye_open=1.45,
        tint_b=0.6, tint_g=-0.5, tint_r=0.5,
        pitch_st=6.0, pitch_slope_st=1.0, pitch_wobble_st=1.3, syllable_rate=6.5, energy=0.5, brightness=0.2,
        breathiness=0.6,
    ),
    "disgust": replace(
        NEUTRAL, mouth_curve=-0.6, mouth_open=0.15, brow_tilt=-0.5, brow_raise=-0.2, eye_open=0.6,
        tint_b=-0.4, tint_g=0.9, tint_r=-0.3,
        pitch_st=-2.5, pitch_slope_st=-2.0, pitch_wobble_st=0.5, syllable_rate=3.0, energy=0.7, brightness=0.4,
        breathiness=0.3,
    ),
    "surprised": replace(
        NEUTRAL, mouth_curve=0.0, mouth_open=0.85, brow_raise=1.0, eye_open=1.6, tint_b=0.5, tint_g=0.5, tint_r=0.5,
        pitch_st=8.0, pitch_slope_st=8.0, syllable_rate=3.6, energy=0.85, brightness=0.4, breathiness=0.25,
    ),
}  # fmt: skip
"""RAVDESS' 8 emotion names → their full-intensity expression (MELD maps through the unified names)."""

INTENSITY_SCALE = {"normal": 0.65, "strong": 1.0}
"""How far from neutral an intensity goes (RAVDESS field II: 01 normal, 02 strong)."""

# Spread of the per-actor bias and per-clip jitter, per field, in the field's own units.
_SPREAD = Expression(
    mouth_curve=0.12, mouth_open=0.04, brow_tilt=0.12, brow_raise=0.1, eye_open=0.07,
    tint_b=0.12, tint_g=0.12, tint_r=0.12,
    pitch_st=0.8, pitch_slope_st=0.8, pitch_wobble_st=0.1, syllable_rate=0.3, energy=0.07, brightness=0.2,
    breathiness=0.08,
)  # fmt: skip


def expression_for(emotion: str, *, intensity: float, actor_bias: np.ndarray, rng: np.random.Generator) -> Expression:
    """The expression of one clip: the emotion's point scaled by ``intensity`` (0..1) towards it from
    neutral, plus the actor's bias and a fresh per-clip jitter (both in units of ``_SPREAD``)."""
    target = EXPRESSIONS[emotion]
    values = {}
    for i, f in enumerate(fields(Expression)):
        base = getattr(NEUTRAL, f.name)
        value = base + intensity * (getattr(target, f.name) - base)
        spread = getattr(_SPREAD, f.name)
        value += spread * (actor_bias[i] + rng.normal())
        values[f.name] = value
    values["mouth_open"] = max(0.0, values["mouth_open"])
    values["eye_open"] = max(0.3, values["eye_open"])
    values["syllable_rate"] = max(1.5, values["syllable_rate"])
    values["energy"] = float(np.clip(values["energy"], 0.15, 1.2))
    values["pitch_wobble_st"] = max(0.0, values["pitch_wobble_st"])
    values["breathiness"] = float(np.clip(values["breathiness"], 0.0, 1.0))
    return Expression(**values)


def actor_bias(rng: np.random.Generator) -> np.ndarray:
    """A personal expression style: one normal draw per Expression field (scaled by the spread later)."""
    return rng.normal(scale=0.7, size=len(fields(Expression)))

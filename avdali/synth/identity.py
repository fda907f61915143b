"""Who is speaking: the per-actor (RAVDESS) or per-speaker (MELD) look and voice.

An identity is drawn once from a seed and the person's name, so every clip of the same actor
shares a face, a background and a voice, and a held-out actor really is unseen.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from avdali.synth.expression import actor_bias


@dataclass(frozen=True)
class Identity:
    """Face, scene and voice of one person."""

    name: str
    """Actor or speaker name (``Actor_05``, ``Chandler``)."""
    female: bool
    """Decides the voice range (RAVDESS: even actors are female)."""
    skin_bgr: tuple[float, float, float]
    """Base skin colour (BGR, 0-255)."""
    hair_bgr: tuple[float, float, float]
    """Hair colour (BGR, 0-255): a dark cap above the forehead."""
    face_height: float
    """Face height as a fraction of the frame height."""
    face_aspect: float
    """Face width / face height."""
    eye_spacing: float
    """Distance of each eye from the face centre line, as a fraction of face width."""
    centre: tuple[float, float]
    """Resting face centre (x, y) as fractions of the frame: off-centre on purpose."""
    background_seed: int
    """Seed of this person's textured background."""
    background_bgr: tuple[float, float, float]
    """Mean background colour (BGR)."""
    base_pitch_hz: float
    """Speaking pitch at a neutral expression."""
    formant_scale: float
    """Vocal-tract length factor: formant frequencies are multiplied by it (female > 1)."""
    bias: tuple[float, ...]
    """Personal expression style (see ``expression.actor_bias``)."""


def seeded_rng(*parts: object) -> np.random.Generator:
    """A generator that depends only on ``parts`` (ints and strings), stable across runs and processes."""
    words = [p if isinstance(p, int) else zlib.crc32(str(p).encode("utf-8")) for p in parts]
    return np.random.default_rng(np.random.SeedSequence([w & 0xFFFFFFFF for w in words]))


def make_identity(name: str, *, female: bool, seed: int) -> Identity:
    """The identity of ``name`` for this seed."""
    rng = seeded_rng(seed, "identity", name)
    skin_tone = rng.uniform(0.0, 1.0)  # 0 light … 1 dark
    skin = np.array([150, 180, 225]) * (1.0 - 0.45 * skin_tone) + rng.normal(0, 6, 3)
    hair = rng.uniform(15, 70) * np.array([1.0, 1.1, 1.3]) * rng.uniform(0.8, 1.2, 3)
    background = rng.uniform(70, 180, 3)
    base_pitch = rng.uniform(190, 230) if female else rng.uniform(100, 125)
    return Identity(
        name=name,
        female=female,
        skin_bgr=tuple(float(v) for v in np.clip(skin, 40, 245)),
        hair_bgr=tuple(float(v) for v in np.clip(hair, 5, 120)),
        face_height=float(rng.uniform(0.42, 0.55)),
        face_aspect=float(rng.uniform(0.68, 0.8)),
        eye_spacing=float(rng.uniform(0.2, 0.25)),
        centre=(float(rng.choice([-1, 1]) * rng.uniform(0.06, 0.16) + 0.5), float(rng.uniform(0.45, 0.55))),
        background_seed=int(rng.integers(2**31)),
        background_bgr=tuple(float(v) for v in background),
        base_pitch_hz=float(base_pitch),
        formant_scale=float(rng.uniform(1.1, 1.2) if female else rng.uniform(0.92, 1.02)),
        bias=tuple(float(v) for v in actor_bias(rng)),
    )

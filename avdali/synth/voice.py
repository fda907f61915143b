"""A voice-like sound whose pitch level and contour, syllable tempo, loudness and brightness follow the
clip's Expression: a harmonic stack shaped by vowel formants, cut into syllables, after a stretch of
silence, over a faint noise floor.

Synthesised at 16 kHz (everything the packer keeps) and resampled to the container's 48 kHz.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avdali.synth.expression import Expression
from avdali.synth.identity import Identity

SYNTH_RATE = 16_000
OUTPUT_RATE = 48_000

# (F1, F2, F3) in Hz of five vowels of an adult male voice; scaled by the identity's formant_scale.
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])
_FORMANT_GAIN = np.array([1.0, 0.6, 0.3])
_FORMANT_BW = np.array([90.0, 120.0, 170.0])
_CONTROL_HOP = 80  # samples between amplitude updates (5 ms): formants move slowly, sin() stays per sample
_MAX_HARMONIC_HZ = 5_000.0


@dataclass(frozen=True)
class Speech:
    """Where the voiced part sits inside the clip, in seconds."""

    start: float
    """Onset of the first syllable (RAVDESS: after ~0.5-1 s of silence)."""
    end: float
    """End of the last syllable."""


@dataclass
class Voice:
    """The synthesised sound of one clip."""

    samples: np.ndarray
    """Mono float32 at ``OUTPUT_RATE``, peak below 1."""
    envelope: np.ndarray
    """Syllable envelope (0..1) at ``SYNTH_RATE``: drives the drawn mouth so lips move with the voice."""

    def envelope_at(self, times: np.ndarray) -> np.ndarray:
        """Envelope at arbitrary times in seconds (e.g. video frame times)."""
        grid = np.arange(len(self.envelope)) / SYNTH_RATE
        return np.interp(times, grid, self.envelope, left=0.0, right=0.0)


def upsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Band-limited upsampling by zero-padding the spectrum (numpy only; scipy.signal takes ~2 s to import,
    longer than rendering a clip). The signal starts and ends in near-silence, so the FFT's wrap-around is harmless."""
    spectrum = np.fft.rfft(x)
    return np.fft.irfft(spectrum, n=len(x) * factor) * factor


def _syllables(speech: Speech, rate: float, rng: np.random.Generator) -> list[tuple[float, float, int]]:
    """(start, length, vowel) of each syllable, with word gaps now and then."""
    out = []
    t = speech.start
    period = 1.0 / rate
    while t < speech.end - 0.08:
        length = min(period * rng.uniform(0.6, 0.85), speech.end - t)
        out.append((t, length, int(rng.integers(len(_VOWELS)))))
        t += period * rng.uniform(0.9, 1.1)
        if rng.random() < 0.2:  # a short pause between words
            t += period * rng.uniform(0.3, 0.8)
    return out


def synth_voice(identity: Identity, expr: Expression, *, duration: float, speech: Speech, rng: np.random.Generator) -> Voice:
    """The voice of one clip, ``duration`` seconds long."""
    n = int(round(duration * SYNTH_RATE))
    t = np.arange(n) / SYNTH_RATE
    syllables = _syllables(speech, expr.syllable_rate, rng)

    envelope = np.zeros(n)
    vowel_per_hop = np.zeros((n + _CONTROL_HOP - 1) // _CONTROL_HOP, dtype=np.int64)
    accents = np.zeros(n)
    for start, length, vowel in syllables:
        a, b = int(start * SYNTH_RATE), min(n, int((start + length) * SYNTH_RATE))
        if b <= a:
            continue
        envelope[a:b] = np.maximum(envelope[a:b], np.sin(np.linspace(0, np.pi, b - a)) ** 0.7)
        vowel_per_hop[a // _CONTROL_HOP : b // _CONTROL_HOP + 1] = vowel
        accents[a:b] = rng.normal(0, 0.6)  # each syllable a little higher or lower (semitones)

    # Pitch: speaker base x emotion level, a contour over the utterance, tremor, per-syllable accents.
    progress = np.clip((t - speech.start) / max(speech.end - speech.start, 1e-3), 0, 1)
    semitones = (
        expr.pitch_st
        + expr.pitch_slope_st * (progress - 0.5)
        + expr.pitch_wobble_st * np.sin(2 * np.pi * 7.0 * t + rng.uniform(0, 6.3))
        + accents
    )
    f0 = identity.base_pitch_hz * 2.0 ** (semitones / 12.0)
    phase = 2 * np.pi * np.cumsum(f0) / SYNTH_RATE

    # Harmonic amplitudes on a 5 ms control grid: formant resonances x spectral tilt.
    hops = np.arange(len(vowel_per_hop)) * _CONTROL_HOP
    f0_hop = f0[np.minimum(hops, n - 1)]
    formants = _VOWELS[vowel_per_hop] * identity.formant_scale
    tilt = 1.3 - 0.5 * expr.brightness
    voiced = np.zeros(n)
    for k in range(1, int(_MAX_HARMONIC_HZ // f0.min()) + 1):
        fk = k * f0_hop
        resonance = (_FORMANT_GAIN * np.exp(-0.5 * ((fk[:, None] - formants) / _FORMANT_BW) ** 2)).sum(1)
        gain = (0.08 + resonance) * k**-tilt * (fk < _MAX_HARMONIC_HZ)
        if not gain.any():
            continue
        voiced += np.interp(t, hops / SYNTH_RATE, gain) * np.sin(k * phase)
    voiced *= envelope
    loud = envelope > 0.1
    if loud.any():
        voiced /= np.sqrt(np.mean(voiced[loud] ** 2)) + 1e-9
    # Breath: white noise tilted towards high frequencies, gated by the syllables.
    breath = np.diff(rng.normal(0, 1, n + 1)) * envelope * 0.7
    sound = 0.12 * expr.energy * ((1 - 0.5 * expr.breathiness) * voiced + (0.05 + 0.6 * expr.breathiness) * breath)
    sound += rng.normal(0, 10 ** rng.uniform(-3.3, -2.6), n)  # room noise, also in the silence
    sound = np.clip(sound, -0.98, 0.98)
    samples = upsample(sound, OUTPUT_RATE // SYNTH_RATE).astype(np.float32)
    return Voice(samples=np.clip(samples, -0.99, 0.99), envelope=envelope.astype(np.float32))

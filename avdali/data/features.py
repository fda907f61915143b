"""The audio features' last steps (the clip specification's dB, MFCC and per-bin standardisation) as a torch stage.

The torch loader's kernel (``decode.AudioFeatures``) finishes every clip's mel power here, and a decoded-frame cache
training on a CPU standardises here the windows it cuts from whole-track features (``cache.py``). DALI's graph has
the same steps (``dali.graph.audio_features``); the tests hold the two together.
"""

from __future__ import annotations

import torch

from avdali.data import clipspec
from avdali.data.config import DataConfig
from avdali.data.host_threads import one_torch_thread


class FeatureFinish:
    """Mel power (…, ``n_mels``, frames) → the clip specification's features, for one ``DataConfig`` (the DCT matrix
    is built once)."""

    def __init__(self, cfg: DataConfig):
        import torchaudio

        self.cfg = cfg
        mfcc = cfg.features == "mfcc"
        self.dct = torchaudio.functional.create_dct(cfg.n_mfcc, cfg.n_mels, norm="ortho") if mfcc else None

    def raw(self, power: torch.Tensor) -> torch.Tensor:
        """Features of every frame, before any standardisation: ``10·log10`` of the power floored at ``AMIN``
        (torchaudio's ``AmplitudeToDB``, reference 1, no ``top_db``), then its orthonormal DCT-II for MFCC."""
        feats = 10.0 * torch.log10(torch.clamp(power, min=clipspec.AMIN))
        if self.dct is not None:
            feats = torch.matmul(self.dct.T, feats)
        return feats

    def __call__(self, power: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """A batch's features N,A,F from its mel power N,``n_mels``,F, of which sample i's first ``frames[i]`` are
        valid (``standardised``)."""
        return self.standardised(self.raw(power), frames)

    def standardised(self, feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Raw features N,A,F, of which sample i's first ``frames[i]`` are valid: standardised per bin over those
        (``NORM_EPS``; raw with ``data.speaker_norm``, whose stage standardises them by the speaker), zero past them."""
        with one_torch_thread():
            if bool((frames >= feats.shape[-1]).all()):  # every frame valid (the usual batch): no masks
                return feats if self.cfg.speaker_norm else standardise(feats, feats.shape[-1])
            valid = (torch.arange(feats.shape[-1], device=feats.device) < frames[:, None].to(feats.device))[:, None]
            if not self.cfg.speaker_norm:
                feats = standardise(feats, frames.to(feats.device, feats.dtype).clamp(min=1)[:, None, None], valid)
            return torch.where(valid, feats, 0.0)


def standardise(feats: torch.Tensor, count, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Features (…, F) standardised per bin over their first ``count`` frames (those of the mask ``valid``, or all of
    them): mean 0 and variance 1 there (population variance plus ``NORM_EPS``). Each bin is first shifted by its
    first frame, so a constant bin (silence) sums to exactly zero, as in DALI's ``normalize``."""
    shifted = feats - feats[..., :1]
    if valid is not None:
        shifted = torch.where(valid, shifted, 0.0)
    centred = shifted - shifted.sum(-1, keepdim=True) / count
    squares = centred.square() if valid is None else torch.where(valid, centred, 0.0).square()
    return centred * torch.rsqrt(squares.sum(-1, keepdim=True) / count + clipspec.NORM_EPS)

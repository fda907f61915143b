"""The audio features' last steps in torch (``data/features.py``): against DALI's own (``to_decibels``, ``mfcc``,
``normalize`` of the streaming graph), on batches of full and short windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def, types

from avdali.data import clipspec
from avdali.data.config import DataConfig
from avdali.data.dali.graph import audio_features, mel_power, pad_frames
from avdali.data.features import FeatureFinish

FEATURE_TOL = 1e-3
"""The cache's stated tolerance for audio features against the streaming DALI loader's."""


def graph_outputs(windows: list[np.ndarray], cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """DALI's features of ``windows`` (the streaming graph's ``audio_features``) and their padded mel power."""

    @pipeline_def(batch_size=len(windows), num_threads=1, device_id=None, enable_conditionals=False)
    def pipe():
        audio = fn.external_source(source=lambda: windows, batch=True, dtype=types.FLOAT)
        return audio_features(audio, cfg, gpu=False), pad_frames(mel_power(audio, cfg, gpu=False), cfg)

    p = pipe()
    p.build()
    features, power = p.run()
    return torch.from_numpy(features.as_array()), torch.from_numpy(power.as_array())


@pytest.mark.parametrize("features, speaker_norm", [("logmel", False), ("mfcc", False), ("logmel", True),
                                                     ("mfcc", True)])
def test_the_torch_finish_is_dalis(features, speaker_norm):
    """A batch of a full window, short ones (padded) and a silent one: the torch finish of DALI's mel power equals
    DALI's features (standardised over each clip's valid frames, or raw; zeros past them)."""
    cfg = DataConfig(audio_seconds=1.0, n_mels=32, features=features, n_mfcc=13, speaker_norm=speaker_norm)
    window = clipspec.window_samples(cfg.audio_seconds)
    rng = np.random.default_rng(0)
    lengths = [window, window // 2, 1000, window, window - 1]
    windows = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]
    windows[3][:] = 0.0  # silence: the floor, standardised to zeros
    expected, power = graph_outputs(windows, cfg)
    frames = torch.from_numpy(clipspec.feature_frames(np.array(lengths)))
    got = FeatureFinish(cfg)(power, frames)
    assert got.shape == expected.shape == (len(lengths), cfg.n_mfcc if features == "mfcc" else cfg.n_mels,
                                           clipspec.feature_frames(window))
    assert (got - expected).abs().max() <= FEATURE_TOL
    assert frames.tolist()[1] < got.shape[-1] and (got[1, :, frames[1]:] == 0).all()
    if not speaker_norm:  # standardised: the silent clip is all zeros, the others have unit variance
        assert got[3].abs().max() == 0
        valid = got[0, :, : frames[0]]
        torch.testing.assert_close(valid.var(1, unbiased=False), torch.ones(valid.shape[0]), atol=1e-3, rtol=0)

"""FLOP counting (torch.utils.flop_counter) against hand counts, the peak table and the MFU arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avdali.bench.flops import PEAK_BF16_TFLOPS, achieved_tflops, mfu, model_flops_per_clip, peak_tflops, train_step_flops


def test_linear_forward_backward_is_counted_as_the_hand_count():
    m, k, n = 6, 5, 3
    layer = nn.Linear(k, n, bias=False)
    # forward x·Wᵀ: 2·m·n·k; backward, x needs no gradient: only dW = gᵀ·x, another 2·m·n·k
    assert train_step_flops(layer, torch.randn(m, k)) == 2 * (2 * m * n * k)
    # and with dx = g·W as well: three products
    assert train_step_flops(layer, torch.randn(m, k, requires_grad=True)) == 3 * (2 * m * n * k)


def test_two_layer_mlp_on_meta_matches_the_hand_count():
    m, k, h, n = 4, 8, 16, 2
    with torch.device("meta"):
        mlp = nn.Sequential(nn.Linear(k, h, bias=False), nn.ReLU(), nn.Linear(h, n, bias=False))
        x = torch.empty(m, k)
    # first layer: forward + dW; second layer: forward + dW + dx (its input needs a gradient)
    assert train_step_flops(mlp, x) == 2 * (2 * m * h * k) + 3 * (2 * m * n * h)


def test_model_flops_grow_with_frames_and_need_no_weights():
    from avdali.models.config import ModelConfig

    cfg = ModelConfig(audio_features=16, backbone_weights="imagenet")  # never downloaded: counted on meta with "none"
    two, four, six = (model_flops_per_clip(cfg, frames=t, crop=64, audio_frames=40) for t in (2, 4, 6))
    assert 0 < two < four < six
    # the frame CNN and the LSTM run per frame: each 2 more frames add about the same
    assert six - four == pytest.approx(four - two, rel=0.05)


def test_mfu_arithmetic_and_peak_table():
    # 46 GFLOP per clip at 2,000 clips/s = 92 TFLOP/s; on a 989.4 TFLOP/s part that is 9.3 %
    assert achieved_tflops(46e9, 2000) == pytest.approx(92.0)
    assert mfu(46e9, 2000, 989.4) == pytest.approx(92.0 / 989.4)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0)
    assert peak_tflops("NVIDIA H200") == peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0 and peak_tflops("NVIDIA H200 NVL") == 835.5
    assert peak_tflops("Some GPU") is None
    assert all(peak > 0 for _, peak in PEAK_BF16_TFLOPS)

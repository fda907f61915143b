"""FLOPs of a training step, counted by ``torch.utils.flop_counter`` (never written by hand), and MFU.

The count runs on the ``meta`` device: shapes only, no arithmetic, so it costs seconds on any machine and does not
depend on which kernels a device picks (on CUDA, cuDNN's fused LSTM is one op the counter has no formula for and
would count as zero; on ``meta`` the LSTM decomposes into the matrix products it is made of). Only matrix products
and convolutions are counted (what FlopCounterMode has formulas for): the FLOPs a tensor core can do, which is
what MFU compares with.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.5),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.0),
    ("H200", 989.4),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
)
"""Dense bf16 tensor-core peak in TFLOP/s by substring of ``torch.cuda.get_device_name()``, first match wins (so the
PCIe/NVL parts come before their SXM names)."""
PEAK_SOURCE = ("NVIDIA data sheets (H100/H200 SXM: 1,979 TFLOP/s bf16 'with sparsity', i.e. 989.4 dense; A100 312 "
               "dense; L40S 362; L4 121)")
"""Where ``PEAK_BF16_TFLOPS`` comes from: reported beside every MFU figure."""


def train_step_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward and backward of ``model(*inputs)`` (loss = sum of the outputs), counted by FlopCounterMode.

    Gradients are left in the parameters' ``.grad`` (the caller's model is a throwaway).
    """
    with FlopCounterMode(display=False) as counter:
        model(*inputs).float().sum().backward()
    return counter.get_total_flops()


def model_flops_per_clip(model_cfg, frames: int, crop: int, audio_frames: int) -> float:
    """Forward + backward FLOPs per clip of the AVFusion model ``model_cfg`` at ``frames`` frames of ``crop``² and
    ``audio_frames`` audio feature frames (counted for one clip on the ``meta`` device; no weights are loaded)."""
    import dataclasses

    from avdali.models.avfusion import build_model

    if hasattr(model_cfg, "backbone_weights"):  # shapes are all the count needs: never download weights for it
        model_cfg = dataclasses.replace(model_cfg, backbone_weights="none")
    with torch.device("meta"):
        model = build_model(model_cfg)
        video = torch.empty(1, frames, 3, crop, crop)
        audio = torch.empty(1, model_cfg.audio_features, audio_frames)
        audio_len = torch.full((1,), audio_frames, dtype=torch.int64)
    model.train()
    return float(train_step_flops(model, video, audio, audio_len))


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU (``PEAK_BF16_TFLOPS``), else None."""
    for name, peak in PEAK_BF16_TFLOPS:
        if name.lower() in device_name.lower():
            return peak
    return None


def achieved_tflops(flops_per_clip: float, clips_per_s: float) -> float:
    """Model FLOPs done per second, in TFLOP/s."""
    return flops_per_clip * clips_per_s / 1e12


def mfu(flops_per_clip: float, clips_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved TFLOP/s over the peak TFLOP/s (a share, 0…1)."""
    if peak <= 0:
        raise ValueError(f"peak TFLOP/s must be > 0, got {peak}")
    return achieved_tflops(flops_per_clip, clips_per_s) / peak


def run_flops_per_clip(cfg) -> float:
    """``model_flops_per_clip`` for a run config (``RunConfig``): its model at its data's frames, crop and audio window."""
    from avdali.data import clipspec

    audio_frames = clipspec.feature_frames(clipspec.window_samples(cfg.data.pipeline.audio_seconds))
    return model_flops_per_clip(cfg.model, cfg.data.pipeline.frames, cfg.data.pipeline.crop, audio_frames)


def throughput_figures(flops_per_clip: float, clips_per_s: float, peak: float | None) -> dict:
    """What a training benchmark reports beside clips/s: GFLOP per clip, achieved TFLOP/s and MFU (None without a peak)."""
    achieved = achieved_tflops(flops_per_clip, clips_per_s)
    return {
        "gflop_per_clip": _significant(flops_per_clip / 1e9),
        "achieved_tflops": _significant(achieved),
        "mfu": None if not peak else _significant(achieved / peak),
    }


def _significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (tiny test models and H200 runs both stay readable)."""
    return float(f"{value:.{digits}g}")

"""Training's random resized crop (``clipspec``'s window, resampled to ``crop``, then the flip) as a torch stage.

The torch loader's kernel crops every clip here. On a CPU the DALI loader and the decoded-frame cache crop here too,
after their graphs (``crops_on_host``): torch's vectorised uint8 channels-last bilinear kernel costs about a seventh
of DALI's CPU resize (``tools/dali_cpu_profile.py``). On CUDA the graph's GPU resize does it. Evaluation's centre
crop stays in each loader's graph or kernel.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from avdali.data import clipspec
from avdali.data.config import DataConfig
from avdali.data.host_threads import one_torch_thread
from avdali.data.normalize import prepare_video


def crops_on_host(device: str) -> bool:
    """Whether a DALI loader on ``device`` leaves training's crop to this module (every device but CUDA)."""
    return device != "cuda"


def draw_windows(n: int, frame_size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` clips' crop windows (top, left, h, w; int32 N,4; ``clipspec.draw_crop_boxes``), then their flips (bool N)."""
    boxes = clipspec.draw_crop_boxes(n, *frame_size, rng)
    flips = rng.random(n, dtype=np.float32) < clipspec.FLIP_PROBABILITY
    return boxes, flips


def resized_crop(video: torch.Tensor, box, flipped: bool, cfg: DataConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """T,C,H,W uint8 frames → the ``box`` window (top, left, h, w) resampled to ``cfg.crop`` with
    ``cfg.crop_interp`` (torchvision's ``resized_crop``, no antialiasing), mirrored when ``flipped``; written into
    ``out`` (T,C,crop,crop) when given."""
    top, left, h, w = (int(v) for v in box)
    if cfg.crop_interp == "nearest":
        video = nearest_resized_crop(video, top, left, h, w, cfg.crop)
    else:  # the aten op under torchvision's bilinear resize (a vectorised uint8 channels-last kernel), without the
        # wrappers' cost per call, and straight into ``out`` when nothing follows it
        resize = torch.ops.aten._upsample_bilinear2d_aa if clipspec.CROP_ANTIALIAS else torch.ops.aten.upsample_bilinear2d
        window, size = video[..., top : top + h, left : left + w], [cfg.crop, cfg.crop]
        if out is not None and not flipped:
            return resize.out(window, size, False, None, None, out=out)
        video = resize(window, size, False, None, None)
    video = video.flip(-1) if flipped else video
    return video if out is None else out.copy_(video)


def crop_batch(video: torch.Tensor, boxes: np.ndarray, flips: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """N,T,C,H,W uint8 frames → N,T,C,crop,crop in ``cfg.video_dtype`` (ImageNet-normalised floats unless uint8),
    its memory channels-last, as the DALI graph hands its crops over."""
    windows = [video[i, ..., top : top + h, left : left + w] for i, (top, left, h, w) in enumerate(boxes.tolist())]
    return resize_windows(windows, flips, cfg)


def resize_windows(windows: list[torch.Tensor], flips: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """``crop_batch`` of clips already cut to their windows (T,C,h,w uint8 each, views or copies): each resampled to
    ``cfg.crop``, mirrored when flipped."""
    n, t = len(windows), windows[0].shape[0]
    pixels = np.empty((n, t, cfg.crop, cfg.crop, 3), dtype=np.uint8)
    out = torch.from_numpy(pixels).permute(0, 1, 4, 2, 3)
    with one_torch_thread():
        for i, window in enumerate(windows):
            resized_crop(window, (0, 0, *window.shape[-2:]), False, cfg, out=out[i])
            if flips[i]:  # in place, a third of the CPU of torch's flip and copy back
                for frame in pixels[i]:
                    cv2.flip(frame, 1, dst=frame)
    if cfg.video_dtype != "uint8":
        out = prepare_video(out).to(getattr(torch, cfg.video_dtype))
    return out


def crop_gathered(frames: np.ndarray, picks: np.ndarray, boxes: np.ndarray, flips: np.ndarray,
                  cfg: DataConfig) -> torch.Tensor:
    """``crop_batch`` of clips gathered from a store of frames (F,H,W,C uint8; clip i is the frames ``picks[i]``):
    only each clip's window is copied out (numpy's gather), then resampled."""
    windows = [torch.from_numpy(frames[p, top : top + h, left : left + w]).permute(0, 3, 1, 2)
               for p, (top, left, h, w) in zip(picks, boxes.tolist())]
    return resize_windows(windows, flips, cfg)


def nearest_resized_crop(video: torch.Tensor, top: int, left: int, height: int, width: int, size: int) -> torch.Tensor:
    """torchvision's ``resized_crop(..., NEAREST)`` of a T,C,H,W tensor as a row and a column gather of its T,H,W,C
    view (the same pixels; on channels-last frames about 2× faster than torch's nearest interpolation, which has no
    vectorised uint8 channels-last kernel, unlike bilinear)."""
    def source(start: int, extent: int) -> torch.Tensor:  # ATen's nearest: floor(i * float32(in / out)), clamped
        scale = torch.tensor(extent / size, dtype=torch.float32)
        return start + (torch.arange(size, dtype=torch.float32) * scale).floor().long().clamp_(max=extent - 1)

    pixels = video.permute(0, 2, 3, 1)  # T,H,W,C: whole pixels move in each gather
    return pixels.index_select(1, source(top, height)).index_select(2, source(left, width)).permute(0, 3, 1, 2)

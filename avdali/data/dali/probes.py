"""Probes for ``avdali doctor`` and the native-load check (``avdali.machine.libraries``): tiny pipelines, nothing
read from disk."""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, pipeline_def


@pipeline_def(enable_conditionals=False)
def _probe_pipeline(*, gpu: bool):
    values = fn.external_source(source=lambda: np.arange(8, dtype=np.float32), batch=False)
    return (values.gpu() if gpu else values) * 2.0 + 1.0


def probe_pipeline(device_id: int | None = None) -> None:
    """Build and run a one-sample pipeline (CPU when ``device_id`` is None, else its GPU ops on that device) and
    check the arithmetic: DALI's backend (and its CUDA side) loads and computes."""
    pipe = _probe_pipeline(gpu=device_id is not None, batch_size=1, num_threads=1, device_id=device_id,
                           prefetch_queue_depth=1)
    pipe.build()
    (out,) = pipe.run()
    got = np.asarray((out.as_cpu() if device_id is not None else out).at(0))
    if not np.array_equal(got, np.arange(8, dtype=np.float32) * 2 + 1):
        raise RuntimeError(f"DALI probe pipeline computed {got.tolist()}")


def probe_cpu_pipeline() -> None:
    probe_pipeline(None)


@pipeline_def(enable_conditionals=False)
def _probe_video_pipeline(*, encoded: np.ndarray, device: str):
    data = fn.external_source(source=lambda: encoded, batch=False)
    return fn.decoders.video(data, device=device)


def probe_video_decode(encoded: bytes, device_id: int | None = 0) -> np.ndarray:
    """Decode one in-memory video with DALI: the ``mixed`` (NVDEC) decoder on ``device_id``, or the CPU decoder when
    ``device_id`` is None. Frames F,H,W,C uint8."""
    pipe = _probe_video_pipeline(encoded=np.frombuffer(encoded, dtype=np.uint8), device="cpu" if device_id is None else "mixed",
                                 batch_size=1, num_threads=1, device_id=device_id, prefetch_queue_depth=1)
    pipe.build()
    (out,) = pipe.run()
    return np.asarray((out if device_id is None else out.as_cpu()).at(0))

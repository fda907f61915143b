"""Running a built DALI pipeline: its batches as torch tensors through DALI's public scheduling API, the cache's
fed pipeline, and the cache's first pass over the shards."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from nvidia.dali.tensors import TensorGPU

from avdali.data.config import DataConfig
from avdali.data.dali.graph import cached_clip_pipeline, decode_all_pipeline
from avdali.data.shards import ShardSet


def offset_lookup(files) -> dict[tuple[str, int], int]:
    """(tar, video member offset) → sample index (``Batch.index``) for ``files``' samples."""
    return {(f.tar, off): f.first + j for f in files for j, off in enumerate(f.video_offsets)}


def source_index(info, lookup: dict[tuple[str, int], int]) -> int:
    """The sample index of one padded ``source_info`` ("tar:offset:name", NUL-padded bytes) via ``offset_lookup``."""
    tar, offset, _name = np.asarray(info).tobytes().rstrip(b"\0").decode().rsplit(":", 2)
    return lookup[(tar, int(offset))]


def decode_all(shardset: ShardSet, wanted: set[int], threads: int, batch_size: int = 8,
               features: DataConfig | None = None):
    """(index, frames, audio, audio samples, meta.i32 bytes) of every sample in ``wanted``, each once, decoded on
    ``threads`` CPU threads from the tars that hold them; with ``features`` the audio is its whole track's
    ``raw_features`` (A,F)."""
    files = [f for f in shardset.files if any(f.first + j in wanted for j in range(f.count))]
    lookup = offset_lookup(files)
    total = sum(f.count for f in files)
    pipe = decode_all_pipeline(paths=[f.tar for f in files], index_paths=[f.idx for f in files],
                               info_len=info_length(shardset), features=features, batch_size=batch_size,
                               num_threads=threads, device_id=None, prefetch_queue_depth=2)
    pipe.build()
    seen: set[int] = set()
    for _ in range(-(-total // batch_size)):
        frames, audio, samples, meta, info = pipe.run()
        for i in range(len(frames)):
            index = source_index(info[i], lookup)
            if index in wanted and index not in seen:  # the last batch repeats a sample (pad_last_batch)
                seen.add(index)
                yield (index, np.asarray(frames[i]), np.asarray(audio[i]), int(np.asarray(samples[i])[0]),
                       np.asarray(meta[i]).tobytes())


def cached_runs(cfg: DataConfig, *, device: str, jitter: bool, frame_size: tuple[int, int], inputs_on_gpu: bool,
                batches: int) -> PipelineRuns:
    """The built ``cached_clip_pipeline`` for one cached loader, fed batch by batch (``feed_cached``)."""
    device_id = torch.cuda.current_device() if device == "cuda" else None
    pipe = cached_clip_pipeline(cfg=cfg, gpu=device == "cuda", inputs_on_gpu=inputs_on_gpu, jitter=jitter,
                                frame_size=frame_size, batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                                device_id=device_id, prefetch_queue_depth=min(cfg.prefetch, batches), seed=0)
    return PipelineRuns(pipe, min(cfg.prefetch, batches))


def feed_cached(pipe, frames, windows: list, roi: tuple[np.ndarray, np.ndarray] | None) -> None:
    """One batch of the cache's inputs into ``cached_clip_pipeline``: frames N,T,H,W,C, audio windows (one 1-D array per clip), the crop windows' (start, end) corners N,2 each (training).
    Host inputs are numpy arrays; CUDA tensors are read on torch's current stream."""
    on_gpu = isinstance(frames, torch.Tensor) and frames.is_cuda
    stream = torch.cuda.current_stream().cuda_stream if on_gpu else None
    pipe.feed_input("frames", frames, layout="FHWC", cuda_stream=stream)
    pipe.feed_input("audio", windows, cuda_stream=stream)
    if roi is not None:
        pipe.feed_input("roi_start", roi[0])
        pipe.feed_input("roi_end", roi[1])


def pipeline_seed(seed: int, rank: int, epoch: int) -> int:
    """A distinct, reproducible DALI seed per (run seed, rank, epoch)."""
    return (seed * 1_000_003 + rank * 10_007 + epoch * 101 + 1) % (2**31 - 1)


def info_length(shardset: ShardSet) -> int:
    """Bytes to pad ``source_info`` to: the longest "tar:offset:name.webm" of these shards (+ room)."""
    longest = max(len(f.tar) + 1 + len(str(max(f.video_offsets))) + 1 + max(map(len, f.keys)) for f in shardset.files)
    return longest + 16


class PipelineRuns:
    """A built pipeline's batches as torch tensors, through DALI's public scheduling API (``schedule_run`` /
    ``share_outputs`` / ``release_outputs``, as DALI's PyTorch iterator drives it), ``prefetch`` runs ahead.

    ``epoch(batches)`` yields one epoch. With ``run_ahead`` (an evaluation pipeline, read again next epoch) it keeps
    ``prefetch`` runs in flight past the epoch's end, as DALI's iterator does; without it (a training pipeline,
    dropped after its epoch, or one fed by the caller) it schedules no run past the epoch's last batch: the
    iterator's run-ahead would decode the next epoch's first batches only to throw them away, and dropping the
    pipeline would wait for them (~350 ms of CPU per epoch on 2 cores). ``feed``, for pipelines with external
    sources, is called once before each run is scheduled (it ``feed_input``s that run's inputs) and returns what
    the caller wants back with that run's outputs."""

    def __init__(self, pipe, prefetch: int):
        self.pipe, self.depth = pipe, prefetch
        pipe.build()
        self.ahead = 0  # runs scheduled, not yet taken
        self.primed = False  # DALI's first schedule_run schedules ``prefetch_queue_depth`` runs at once
        self.fed: deque = deque()

    def _schedule(self, feed) -> None:
        runs = 1 if self.primed else self.depth
        for _ in range(runs if feed is not None else 0):
            self.fed.append(feed())
        self.pipe.schedule_run()
        self.primed = True
        self.ahead += runs

    def epoch(self, batches: int, names: tuple[str, ...], *, run_ahead: bool = False, feed=None):
        """``batches`` (outputs as a dict ``names`` → torch tensor on the pipeline's device, what ``feed`` returned
        for that run or None)."""
        for taken in range(batches):
            while self.ahead < self.depth and (run_ahead or taken + self.ahead < batches):
                self._schedule(feed)
            outputs = self.pipe.share_outputs()
            batch = {name: _to_torch(out, self.pipe.exec_dynamic) for name, out in zip(names, outputs)}
            self.pipe.release_outputs()
            self.ahead -= 1
            yield batch, (self.fed.popleft() if self.fed else None)


def _to_torch(out, zero_copy: bool) -> torch.Tensor:
    """A DALI output (TensorList) as one torch tensor: a DLPack view when DALI keeps released buffers valid (its
    dynamic executor, the default), else a copy."""
    tensor = out.as_tensor()
    if isinstance(tensor, TensorGPU):
        with torch.cuda.device(tensor.device_id):
            view = torch.from_dlpack(tensor)
    else:
        view = torch.from_dlpack(tensor)
    return view if zero_copy else view.clone()

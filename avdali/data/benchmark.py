"""Loader throughput: clips/s of each loader on the same shards and cores, and the VP9 decode ceiling.

Every figure is taken after a warm-up (worker start-up, pipeline build and the first batches are excluded)
and over whole batches, walking epochs as needed. The decode ceiling is the pure decode of the same frames
(DALI's decoder alone in a pipeline, and PyAV in one process per core), the faster of the two.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from avdali import native
from avdali.data import sampling
from avdali.data.config import DataConfig
from avdali.data.shards import ShardSet, resolve


@dataclass
class Throughput:
    """One measured configuration."""

    name: str
    """Loader or decoder name (``dali``, ``torch``, ``naive``, ``ceiling-dali``, ``ceiling-pyav``)."""
    clips: int
    """Clips timed (after warm-up)."""
    seconds: float
    """Wall time of the timed part."""
    frames_per_clip: int
    """Frames each clip contributes (T)."""

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds

    @property
    def frames_per_s(self) -> float:
        return self.clips_per_s * self.frames_per_clip


def _epochs(make_epoch: Callable[[int], Iterable]) -> Iterable:
    for epoch in itertools.count():
        yield from make_epoch(epoch)


def time_batches(name: str, batches: Iterable, size_of: Callable, count: int, warmup: int, frames: int) -> Throughput:
    """Consume ``warmup`` batches, then time ``count`` more."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    clips = 0
    start = time.perf_counter()
    for _ in range(count):
        clips += size_of(next(it))
    return Throughput(name, clips, time.perf_counter() - start, frames)


def bench_loader(cfg: DataConfig, splits: list[str], count: int, warmup: int) -> Throughput:
    """A training loader (shuffle + augmentation) from ``build_loader``."""
    from avdali.data.build import build_loader

    loader = build_loader(cfg, splits, train=True)

    def epoch(e):
        loader.set_epoch(e)
        return loader

    return time_batches(cfg.loader, _epochs(epoch), len, count, warmup, cfg.frames)


def bench_naive(cfg: DataConfig, dataset: str | None, src: str, splits: list[str] | None, count: int, warmup: int) -> Throughput:
    """The notebook-style loader over the raw tree's clips that the shards hold (``dataset`` None: the shards')."""
    from avdali.data.naive import naive_loader
    from avdali.shardformat.manifest import read_manifest

    native.require(("pyav-h264", "torchaudio"))  # the raw clips' decoder and the MFCC, before the workers start
    manifest = read_manifest(cfg.shards)
    loader = naive_loader(dataset or manifest.dataset, src, splits, cfg, manifest)
    return time_batches("naive", _epochs(lambda e: loader), lambda b: len(b["label"]), count, warmup, cfg.frames)


def bench_dali_decode(cfg: DataConfig, shardset: ShardSet, count: int, warmup: int, threads: int) -> Throughput:
    """DALI's CPU video decoder alone on the frames the training loaders pick: reader → decoders.video."""
    from avdali.data.dali import decode_only_pipeline

    pipe = decode_only_pipeline(
        paths=[f.tar for f in shardset.files], index_paths=[f.idx for f in shardset.files], frames=cfg.frames,
        jitter=cfg.augment, batch_size=cfg.batch_size, num_threads=threads, device_id=None,
        prefetch_queue_depth=cfg.prefetch, seed=1,
    )
    pipe.build()
    runs = (pipe.run() for _ in itertools.count())
    return time_batches("ceiling-dali", runs, lambda out: len(out[0]), count, warmup, cfg.frames)


def _pyav_decode(job: tuple[str, int, int, int, int, int | None]) -> int:
    """Decode one clip's T frames (``job``: tar, webm offset, webm size, frame count n, T, jitter seed or None)."""
    from avdali.data.torch_loader import decode_frames

    tar, offset, size, n, t, seed = job
    rng = None if seed is None else np.random.default_rng(seed)
    return len(decode_frames(_read(tar, offset, size), sampling.frame_indices(n, t, rng)))


def _read(tar: str, offset: int, size: int) -> bytes:
    with open(tar, "rb") as f:
        f.seek(offset)
        return f.read(size)


def bench_pyav_decode(cfg: DataConfig, shardset: ShardSet, count: int, warmup: int, processes: int) -> Throughput:
    """PyAV decoding the same frames as the training loaders (only up to the last needed one, RGB for the needed
    ones), one process per core."""
    import multiprocessing as mp

    from avdali.shardformat.probe import count_webm_frames

    clips = [(f.tar, off, size) for f in shardset.files for off, size in zip(f.video_offsets, f.video_sizes)]
    counts = [max(1, count_webm_frames(_read(*clip))) for clip in clips]  # what meta.i32 holds; before timing
    total = (count + warmup) * cfg.batch_size
    stream = [(*clips[k % len(clips)], counts[k % len(clips)], cfg.frames, k if cfg.augment else None) for k in range(total)]
    with mp.get_context("forkserver").Pool(processes) as pool:
        list(pool.imap(_pyav_decode, stream[: warmup * cfg.batch_size], chunksize=2))
        start = time.perf_counter()
        decoded = list(pool.imap(_pyav_decode, stream[warmup * cfg.batch_size :], chunksize=2))
        seconds = time.perf_counter() - start
    return Throughput("ceiling-pyav", len(decoded), seconds, cfg.frames)


def run_benchmark(
    cfg: DataConfig,
    splits: list[str] | None,
    loaders: list[str],
    count: int,
    warmup: int,
    src: str | None = None,
    dataset: str | None = None,
    progress: Callable[[str], None] = lambda name: None,
) -> dict:
    """Measure each loader and the decode ceiling; return the figures as a JSON-ready dict."""
    from dataclasses import asdict, replace

    from avdali.data.shards import list_splits

    splits = splits or list(list_splits(cfg.shards))
    shardset = resolve(cfg.shards, splits)
    cores = os.cpu_count() or 1
    results: list[Throughput] = []
    for name in loaders:
        progress(name)
        if name == "naive":
            results.append(bench_naive(cfg, dataset, src, splits, count, warmup))
        else:
            results.append(bench_loader(replace(cfg, loader=name), splits, count, warmup))
    progress("decode ceiling")
    ceilings = [bench_dali_decode(cfg, shardset, count, warmup, cores), bench_pyav_decode(cfg, shardset, count, warmup, cores)]
    ceiling = max(ceilings, key=lambda r: r.clips_per_s)
    rows = {r.name: r for r in results + ceilings}
    out = {
        "config": asdict(cfg),
        "splits": splits,
        "cores": cores,
        "batches": count,
        "warmup_batches": warmup,
        "results": {
            name: dict(clips=r.clips, seconds=round(r.seconds, 3), clips_per_s=round(r.clips_per_s, 2),
                       frames_per_s=round(r.frames_per_s, 1), share_of_ceiling=round(r.clips_per_s / ceiling.clips_per_s, 3))
            for name, r in rows.items()
        },
        "ceiling": ceiling.name,
        "ratios": {},
    }
    names = [r.name for r in results]
    for a, b in itertools.permutations(names, 2):
        if (a, b) in (("dali", "torch"), ("dali", "naive"), ("torch", "naive")):
            out["ratios"][f"{a}/{b}"] = round(rows[a].clips_per_s / rows[b].clips_per_s, 2)
    return out

"""Loader throughput: clips/s of each loader on the same shards and cores, and the VP9 decode ceiling.

Every figure is taken after a warm-up (worker start-up, pipeline build and the first batches are excluded)
and over whole batches, walking epochs as needed. The decode ceiling is the pure decode of the same frames
(DALI's decoder alone in a pipeline, and PyAV in one process per core), the faster of the two.

With ``device="cuda"`` the loaders are the four ways of feeding a GPU (``CUDA_LOADERS``); every batch is moved to
the GPU inside the timed part (a no-op for DALI's GPU outputs) and the device is synchronised before the clock
stops. Each figure also carries the CPU it used (CPU seconds of this process and its live descendants — DALI's
threads, DataLoader workers — over the wall time, in cores; and per clip, a figure other tenants of a shared host
move far less than the wall time), the host's CPU time stolen by other virtual machines meanwhile (Linux), and, on
CUDA, GPU memory: torch's peak allocation and
the growth of the device's used memory (``cudaMemGetInfo``), which includes DALI's own pools.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from avdali.machine import libraries
from avdali.data import clipspec
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
    cpu_seconds: float | None = None
    """CPU time of this process and its descendants during the timed part (None: not measured)."""
    steal_seconds: float | None = None
    """CPU time the hypervisor gave other machines during the timed part, all cores together (Linux ``/proc/stat``;
    None elsewhere): a figure measured while cores were stolen is slower than the machine."""
    main_thread_seconds: float | None = None
    """CPU time of the thread that takes the batches during the timed part (None: the batches come from elsewhere):
    near the wall time when that thread's own work per batch is the limit, not the loader's threads or workers."""
    gpu_peak_allocated_mb: float | None = None
    """torch.cuda.max_memory_allocated over the run (loader built, warm-up and timed part), MiB; CUDA only."""
    gpu_device_used_mb: float | None = None
    """Growth of the device's used memory (total − free, cudaMemGetInfo) from before the loader was built to the end
    of the timed part, MiB: torch's caching allocator and DALI's pools together; CUDA only."""
    first_pass_s: float | None = None
    """The decoded-frame cache: seconds of its first pass (decoding every stored frame once), apart from the steady
    state the clips/s measure."""
    cache_gb: float | None = None
    """The decoded-frame cache: GB it holds (frames and audio)."""

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds

    @property
    def frames_per_s(self) -> float:
        return self.clips_per_s * self.frames_per_clip

    @property
    def cpu_cores(self) -> float | None:
        """CPU use during the timed part, in cores busy on average."""
        return None if self.cpu_seconds is None else self.cpu_seconds / self.seconds

    @property
    def cpu_ms_per_clip(self) -> float | None:
        """CPU milliseconds per clip (this process and its descendants)."""
        return None if self.cpu_seconds is None else 1000 * self.cpu_seconds / self.clips

    @property
    def steal_cores(self) -> float | None:
        """Cores stolen by other virtual machines during the timed part, on average."""
        return None if self.steal_seconds is None else self.steal_seconds / self.seconds

    @property
    def main_thread_busy(self) -> float | None:
        """Share of the timed part the batch-taking thread was on a CPU."""
        return None if self.main_thread_seconds is None else self.main_thread_seconds / self.seconds


CUDA_LOADERS = {
    "dali-gpu": ("dali", "cuda", "gpu", "off"),
    "dali-hybrid": ("dali", "cuda", "cpu", "off"),
    "dali-cpu": ("dali", "cpu", "cpu", "off"),
    "torch": ("torch", "cuda", "auto", "off"),
    "cache": ("dali", "cuda", "auto", "device"),
}
"""``--device cuda`` loaders → (data.loader, loader device, data.decode, data.cache): DALI decoding on NVDEC; DALI
decoding on its CPU threads with every later op on the GPU; DALI entirely on the CPU (batches copied to the GPU); the
torch loader's workers (pinned memory, non-blocking copies); the decoded-frame cache in GPU memory (DALI's GPU
crop and feature operators)."""
CPU_LOADERS = ("dali", "torch", "naive", "cache")
"""``--device cpu`` loaders (``cache``: the DALI loader with the decoded-frame cache in host memory)."""


def process_tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and every live descendant (Linux ``/proc``; elsewhere this process)."""
    own = os.times()
    try:
        stats = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
                except OSError:  # exited meanwhile
                    continue
                stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    except OSError:
        return own.user + own.system
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    ticks, todo, total = os.sysconf("SC_CLK_TCK"), [os.getpid()], 0
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0))[1]
        todo += children.get(pid, [])
    return total / ticks


def host_steal_seconds() -> float | None:
    """CPU seconds stolen from this virtual machine so far, all cores (``/proc/stat``'s steal; None where absent)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _elapsed(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def _epochs(make_epoch: Callable[[int], Iterable]) -> Iterable:
    for epoch in itertools.count():
        yield from make_epoch(epoch)


def time_batches(name: str, batches: Iterable, size_of: Callable, count: int, warmup: int, frames: int,
                 finish: Callable[[], None] = lambda: None) -> Throughput:
    """Consume ``warmup`` batches, then time ``count`` more (``finish`` runs before the clock stops: a device sync)."""
    it = iter(batches)
    for _ in range(warmup):
        size_of(next(it))
    finish()
    clips = 0
    cpu_start, steal_start = process_tree_cpu_seconds(), host_steal_seconds()
    thread_start = time.thread_time()
    start = time.perf_counter()
    for _ in range(count):
        clips += size_of(next(it))
    finish()
    seconds = time.perf_counter() - start
    return Throughput(name, clips, seconds, frames, cpu_seconds=process_tree_cpu_seconds() - cpu_start,
                      main_thread_seconds=time.thread_time() - thread_start,
                      steal_seconds=_elapsed(steal_start, host_steal_seconds()))


def bench_loader(cfg: DataConfig, splits: list[str], count: int, warmup: int, device: str = "cpu",
                 name: str | None = None) -> Throughput:
    """A training loader (shuffle + augmentation) from ``build_loader`` on ``device`` (``cuda``: the loader's batches
    are moved to the current GPU in the timed part, whatever device the loader itself runs on)."""
    from avdali.data.build import build_loader

    loader = build_loader(cfg, splits, train=True, device=device)

    def epoch(e):
        loader.set_epoch(e)
        return loader

    return with_cache_figures(time_batches(name or cfg.loader, _epochs(epoch), len, count, warmup, cfg.frames), loader)


def with_cache_figures(result: Throughput, loader) -> Throughput:
    """``result`` with the first pass and size of ``loader``'s decoded-frame cache, when it has one."""
    import dataclasses

    store = getattr(getattr(loader, "loader", loader), "store", None)  # under a speaker stage too
    if store is None:
        return result
    return dataclasses.replace(result, first_pass_s=round(store.fill_seconds, 2), cache_gb=round(store.bytes / 1024**3, 3))


def bench_cuda_loader(cfg: DataConfig, splits: list[str], count: int, warmup: int, name: str) -> Throughput:
    """One of ``CUDA_LOADERS``: batches on the GPU, device synchronised before the clock stops, GPU memory measured."""
    import dataclasses

    import torch

    from avdali.data.build import build_loader

    loader_name, device, decode, cache = CUDA_LOADERS[name]
    gpu = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    free, total = torch.cuda.mem_get_info()
    used_before = total - free
    loader = build_loader(dataclasses.replace(cfg, loader=loader_name, decode=decode, cache=cache), splits, train=True,
                          device=device)

    def epoch(e):
        loader.set_epoch(e)
        return loader

    result = with_cache_figures(time_batches(name, _epochs(epoch), lambda batch: len(batch.to(gpu)), count, warmup,
                                             cfg.frames, finish=torch.cuda.synchronize), loader)
    free, total = torch.cuda.mem_get_info()
    mib = 1024**2
    return dataclasses.replace(result, gpu_peak_allocated_mb=round(torch.cuda.max_memory_allocated() / mib, 1),
                               gpu_device_used_mb=round((total - free - used_before) / mib, 1))


def bench_naive(cfg: DataConfig, dataset: str | None, src: str, splits: list[str] | None, count: int, warmup: int) -> Throughput:
    """The notebook-style loader over the raw tree's clips that the shards hold (``dataset`` None: the shards')."""
    from avdali.bench.naive_loader import naive_loader
    from avdali.shardformat.manifest import read_manifest

    libraries.require(("pyav-h264", "torchaudio"))  # the raw clips' decoder and the MFCC, before the workers start
    manifest = read_manifest(cfg.shards)
    loader = naive_loader(dataset or manifest.dataset, src, splits, cfg, manifest)
    return time_batches("naive", _epochs(lambda e: loader), lambda b: len(b["label"]), count, warmup, cfg.frames)


def decode_ceiling_runs(cfg: DataConfig, shardset: ShardSet, run_clips: int, threads: int) -> Iterable:
    """DALI's CPU video decoder alone on the frames the training loaders pick (reader → decoders.video): the outputs
    of its runs of ``run_clips`` clips, endlessly."""
    from avdali.data.dali import decode_only_pipeline

    pipe = decode_only_pipeline(
        paths=[f.tar for f in shardset.files], index_paths=[f.idx for f in shardset.files], frames=cfg.frames,
        jitter=cfg.augment, batch_size=run_clips, num_threads=threads, device_id=None,
        prefetch_queue_depth=cfg.prefetch, seed=1,
    )
    pipe.build()
    return (pipe.run() for _ in itertools.count())


def bench_dali_decode(cfg: DataConfig, shardset: ShardSet, count: int, warmup: int, threads: int) -> Throughput:
    """``decode_ceiling_runs`` in runs of the DALI loader's size (``order.batches_per_run`` batches), over as many
    clips as ``count`` batches."""
    from avdali.data import order

    k = order.epoch_batches_per_run(shardset.num_samples, cfg.batch_size, 1)
    runs = decode_ceiling_runs(cfg, shardset, k * cfg.batch_size, threads)
    return time_batches("ceiling-dali", runs, lambda out: len(out[0]), -(-count // k), -(-warmup // k), cfg.frames)


def _pyav_decode(job: tuple[str, int, int, int, int, int | None]) -> int:
    """Decode one clip's T frames (``job``: tar, webm offset, webm size, frame count n, T, jitter seed or None)."""
    from avdali.data.decode import decode_frames

    tar, offset, size, n, t, seed = job
    rng = None if seed is None else np.random.default_rng(seed)
    return len(decode_frames(_read(tar, offset, size), clipspec.draw_frame_indices(n, t, rng)))


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
        cpu_start, steal_start = process_tree_cpu_seconds(), host_steal_seconds()
        start = time.perf_counter()
        decoded = list(pool.imap(_pyav_decode, stream[warmup * cfg.batch_size :], chunksize=2))
        seconds = time.perf_counter() - start
        cpu_seconds = process_tree_cpu_seconds() - cpu_start  # before the pool's processes exit
    return Throughput("ceiling-pyav", len(decoded), seconds, cfg.frames, cpu_seconds=cpu_seconds,
                      steal_seconds=_elapsed(steal_start, host_steal_seconds()))


def run_benchmark(
    cfg: DataConfig,
    splits: list[str] | None,
    loaders: list[str],
    count: int,
    warmup: int,
    src: str | None = None,
    dataset: str | None = None,
    progress: Callable[[str], None] = lambda name: None,
    device: str = "cpu",
    ceiling: bool = True,
) -> dict:
    """Measure each loader (names from ``CPU_LOADERS`` or, with ``device="cuda"``, ``CUDA_LOADERS``) and, with
    ``ceiling``, the CPU decode ceiling; return the figures as a JSON-ready dict."""
    from dataclasses import asdict, replace

    from avdali.data.shards import list_splits

    check_loaders(loaders, device)
    splits = splits or list(list_splits(cfg.shards))
    shardset = resolve(cfg.shards, splits)
    cores = os.cpu_count() or 1
    results: list[Throughput] = []
    for name in loaders:
        progress(name)
        if device == "cuda":
            results.append(bench_cuda_loader(cfg, splits, count, warmup, name))
        elif name == "naive":
            results.append(bench_naive(cfg, dataset, src, splits, count, warmup))
        elif name == "cache":
            results.append(bench_loader(replace(cfg, loader="dali", cache="host"), splits, count, warmup, name="cache"))
        else:
            results.append(bench_loader(replace(cfg, loader=name), splits, count, warmup))
    ceilings = []
    if ceiling:
        progress("decode ceiling")
        ceilings = [bench_dali_decode(cfg, shardset, count, warmup, cores), bench_pyav_decode(cfg, shardset, count, warmup, cores)]
    best = max(ceilings, key=lambda r: r.clips_per_s) if ceilings else None
    rows = {r.name: r for r in results + ceilings}
    out = {
        "config": asdict(cfg),
        "device": device,
        "splits": splits,
        "cores": cores,
        "batches": count,
        "warmup_batches": warmup,
        "results": {name: _figures(r, best) for name, r in rows.items()},
        "ceiling": best.name if best else None,
        "ratios": {},
    }
    if device == "cuda":
        import torch

        out["gpu"] = torch.cuda.get_device_name()
    names = [r.name for r in results]
    wanted = (("dali", "torch"), ("dali", "naive"), ("torch", "naive"), ("dali-gpu", "torch"), ("dali-hybrid", "torch"),
              ("dali-cpu", "torch"), ("dali-gpu", "dali-hybrid"), ("cache", "dali"), ("cache", "dali-hybrid"),
              ("cache", "torch"))
    for a, b in itertools.permutations(names, 2):
        if (a, b) in wanted:
            out["ratios"][f"{a}/{b}"] = round(rows[a].clips_per_s / rows[b].clips_per_s, 2)
    return out


def _figures(r: Throughput, ceiling: Throughput | None) -> dict:
    by_cpu = None
    if ceiling and ceiling.cpu_ms_per_clip is not None and r.cpu_ms_per_clip:
        by_cpu = round(ceiling.cpu_ms_per_clip / r.cpu_ms_per_clip, 3)
    figures = dict(clips=r.clips, seconds=round(r.seconds, 3), clips_per_s=round(r.clips_per_s, 2),
                   frames_per_s=round(r.frames_per_s, 1),
                   share_of_ceiling=round(r.clips_per_s / ceiling.clips_per_s, 3) if ceiling else None,
                   cpu_share_of_ceiling=by_cpu,
                   cpu_cores=None if r.cpu_cores is None else round(r.cpu_cores, 2),
                   cpu_ms_per_clip=None if r.cpu_ms_per_clip is None else round(r.cpu_ms_per_clip, 3),
                   steal_cores=None if r.steal_cores is None else round(r.steal_cores, 2),
                   main_thread_busy=None if r.main_thread_busy is None else round(r.main_thread_busy, 2))
    if r.gpu_peak_allocated_mb is not None:
        figures.update(gpu_peak_allocated_mb=r.gpu_peak_allocated_mb, gpu_device_used_mb=r.gpu_device_used_mb)
    if r.first_pass_s is not None:
        figures.update(first_pass_s=r.first_pass_s, cache_gb=r.cache_gb)
    return figures


def check_loaders(names: list[str], device: str) -> None:
    """One-line errors for loader names that do not exist on ``device`` and for ``cuda`` without a CUDA device."""
    from avdali.errors import AvdaliError

    if device not in ("cpu", "cuda"):
        raise AvdaliError(f"--device: expected cpu or cuda, got {device!r}")
    known = tuple(CUDA_LOADERS) if device == "cuda" else CPU_LOADERS
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise AvdaliError(f"--loaders: unknown {', '.join(unknown) or 'empty list'} for --device {device}; "
                          f"expected some of {', '.join(known)}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise AvdaliError("--device cuda: no CUDA device (torch sees none); measure the CPU loaders with --device cpu")

"""The packer's transcode workers: clips transcoded in a process pool and handed back in plan order.

The pool starts with forkserver (else spawn): ``fork`` after PyAV/OpenCV threads exist can deadlock. A clip that
kills its worker is retried alone and recorded as a skip; the rest of the run goes on.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator

from avdali.errors import AvdaliError
from avdali.shardformat.options import PackOptions
from avdali.sources.records import ClipRecord

TranscodeFn = Callable[[Path, PackOptions], Any]
"""``transcode_clip``'s signature: source path + options → Transcoded, raising ClipError."""

AHEAD_PER_WORKER = 4
"""Clips submitted ahead per worker: enough to keep workers busy while the parent writes a shard,
few enough that finished clips waiting for an earlier slow one stay a few MB."""


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group; only the parent decides what to do with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One process per core already: OpenCV's own thread pool would only oversubscribe the cores.
    import cv2

    cv2.setNumThreads(1)


def real_transcode(path: Path, options: PackOptions):
    from avdali.packing.transcode import transcode_clip

    return transcode_clip(path, options)


def _transcode_job(transcode: TranscodeFn, path: Path, options: PackOptions) -> tuple[Any, str | None, float]:
    """Run in a worker: (Transcoded, None, seconds) or (None, reason, seconds); never raises for a bad clip."""
    start = time.perf_counter()
    try:
        clip = transcode(path, options)
        return clip, None, time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - every failure becomes a recorded skip, never a dead run
        if type(e).__name__ == "ClipError":
            reason = " ".join(str(e).split()) or "unreadable clip"
        else:
            reason = f"internal error {type(e).__name__}: {' '.join(str(e).split())}"
        return None, reason, time.perf_counter() - start


def _pool(workers: int) -> ProcessPoolExecutor:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # the server imports the media stack once; every worker forks from it with PyAV/OpenCV loaded
        # but no codec threads started yet, which is what makes forking safe here
        context.set_forkserver_preload(["avdali.packing.transcode"])
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)


def _check_workers_start() -> None:
    """Tell a clip that kills its worker from workers that cannot start at all (which would otherwise
    turn every clip into a "crashed" skip)."""
    pool = _pool(1)
    try:
        pool.submit(int).result()
    except BrokenProcessPool:
        raise AvdaliError(
            "worker processes cannot start (see the traceback above); run from a script file or use --workers 1"
        ) from None
    finally:
        pool.shutdown(wait=True)


def transcode_in_order(
    records: list[ClipRecord], options: PackOptions, transcode: TranscodeFn, workers: int
) -> Iterator[tuple[ClipRecord, tuple[Any, str | None, float]]]:
    """Transcode ``records`` with ``workers`` processes (in this process when 1), yielding results in order.

    A worker that dies (a crash inside a media library) breaks the pool: the pool is rebuilt and the clips
    that were in flight are retried one at a time, so only the clip that kills a worker on its own is
    skipped ("worker process crashed").
    """
    if workers <= 1:
        for record in records:
            yield record, _transcode_job(transcode, record.video_path, options)
        return
    pending: deque = deque()
    todo = iter(records)
    pool = _pool(workers)
    try:

        def fill() -> None:
            while len(pending) < workers * AHEAD_PER_WORKER:
                record = next(todo, None)
                if record is None:
                    return
                pending.append((record, pool.submit(_transcode_job, transcode, record.video_path, options)))

        fill()
        while pending:
            record, future = pending.popleft()
            try:
                outcome = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=True, cancel_futures=True)
                retry = [record] + [r for r, _ in pending]
                pending.clear()
                for r in retry:
                    pool = _pool(1)
                    try:
                        yield r, pool.submit(_transcode_job, transcode, r.video_path, options).result()
                    except BrokenProcessPool:
                        _check_workers_start()
                        yield r, (None, "worker process crashed while transcoding this clip", 0.0)
                    finally:
                        pool.shutdown(wait=True)
                pool = _pool(workers)
                fill()
                continue
            yield record, outcome
            fill()
    finally:
        # Ctrl-C or an error in the parent: drop queued clips; in-flight ones finish (workers ignore SIGINT).
        pool.shutdown(wait=True, cancel_futures=True)

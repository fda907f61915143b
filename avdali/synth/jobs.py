"""Rendering many clips: in this process or in ``workers`` spawned processes, and what came out.

"spawn" (not fork): PyAV/libav and the audio libraries keep threads and state that a forked child
must not inherit (STYLE.md). Every job carries its own seed, so the result does not depend on
the number of workers or the completion order.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from avdali.errors import AvdaliError
from avdali.synth.clip import ClipJob, render_clip

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each clip (the CLI draws a bar with it)."""


@dataclass(frozen=True)
class Fault:
    """A deliberately broken file in a synthetic tree (MELD ``faults``/``partial``, RAVDESS ``partial``)."""

    split: str
    """MELD: ``train``, ``dev`` or ``test``; RAVDESS: the actor folder (``Actor_05``)."""
    clip: str
    """Clip stem as in the tree and CSV, e.g. ``dia3_utt1`` or ``final_videos_testdia101_utt0``."""
    kind: str
    """One of clip.FAULT_KINDS."""
    path: Path
    """Where the clip is (or, for ``missing``, would be)."""

    @property
    def key(self) -> str:
        """The sample key the MELD reader gives this clip (``{split}_{clip}``, see sources.meld.clip_key)."""
        return f"{self.split}_{self.clip}"


@dataclass
class SynthSummary:
    """What a synth run made."""

    root: Path
    """The output folder."""
    dataset: str
    """``ravdess`` or ``meld``."""
    clips: int
    """Number of clips planned (RAVDESS trials, MELD rows plus extra clips)."""
    files: list[Path]
    """Every file written (mp4, wav, csv), in plan order."""
    seconds: float
    """Wall time of the rendering."""
    faults: list[Fault] = field(default_factory=list)
    """Files broken on purpose (MELD ``faults=True``, ``partial=True`` for both datasets), for tests of the packer."""

    @property
    def clips_per_s(self) -> float:
        """Rendering throughput."""
        return self.clips / self.seconds if self.seconds > 0 else float("inf")


def check_workers(workers: int) -> None:
    if workers < 1:
        raise AvdaliError(f"--workers must be ≥ 1, got {workers}")


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """Frame size as (w, h); H.264 4:2:0 needs even sides, and the face needs some pixels."""
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise AvdaliError(f"--size must be WIDTHxHEIGHT, got {size!r}") from None
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise AvdaliError(f"--size must have even sides of at least 64 pixels, got {width}x{height}")
    return width, height


def render_all(jobs: Sequence[ClipJob], *, workers: int = 1, progress: Progress | None = None) -> list[Path]:
    """Render every job (in ``workers`` processes when > 1); return the written paths in job order."""
    check_workers(workers)
    results: list[list[Path]] = [[] for _ in jobs]
    if workers == 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = render_clip(job)
            if progress:
                progress(i + 1, len(jobs))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            futures = {pool.submit(render_clip, job): i for i, job in enumerate(jobs)}
            for done, future in enumerate(as_completed(futures), 1):
                results[futures[future]] = future.result()
                if progress:
                    progress(done, len(jobs))
    return [path for paths in results for path in paths]


def timed_render(jobs: Sequence[ClipJob], *, workers: int, progress: Progress | None) -> tuple[list[Path], float]:
    """render_all plus its wall time."""
    start = time.perf_counter()
    files = render_all(jobs, workers=workers, progress=progress)
    return files, time.perf_counter() - start

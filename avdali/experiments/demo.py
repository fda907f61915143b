"""``avdali demo``'s steps as plain functions: synthesize a RAVDESS-like tree → pack shards → train → test.

Everything lands under one folder (``output/demo`` by default)::

    OUT/raw/      the synthetic RAVDESS-like tree (+ ``avdali-demo-synth.json``, written when it is complete)
    OUT/shards/   the packed shards (``avdali shard``'s resumable packer)
    OUT/runs/demo-<time>/   config.toml, last.pt, best.pt, TensorBoard events (a fresh folder every run)

Re-running with the same OUT reuses a finished synthetic tree made with the same settings and resumes or keeps
the shards; only the training runs again. The training settings are ``DEMO_CONFIG`` (``avdali/configs/demo.toml``,
shipped in the package so the demo works from any folder; ``configs/demo.toml`` is the same file for reading).
The test fold holds actors the model never saw (RAVDESS 5-fold protocol: test fold 1, validate on fold 2).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Protocol

from avdali.errors import AvdaliError
from avdali.folder_lock import hold_folder
from avdali.packing.run import PackEvent, PackResult
from avdali.shardformat.options import PackOptions

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"
"""The demo's run config: the one source of truth (``configs/demo.toml`` is a copy a test keeps equal)."""
SYNTH_MARKER = "avdali-demo-synth.json"
"""Written into OUT/raw once the synthetic tree is complete: the settings it was made with."""


@dataclass(frozen=True)
class DemoSize:
    """How much synthetic data the demo makes, how it is packed and what it changes in ``DEMO_CONFIG``."""

    name: str
    """``full`` (the documented demo) or ``quick`` (the CI test's smaller run)."""
    actors: tuple[int, ...]
    """RAVDESS actors to synthesize; every fold of the 5-fold protocol needs some (test, validation and
    three training folds)."""
    trials_per_actor: int
    """Speech trials per actor (stratified over the 8 emotions; 60 is the real count)."""
    source_size: tuple[int, int] = (256, 144)
    """Frame size of the synthetic mp4s. The packer crops the face to 128² anyway; 720p sources would only
    make synthesis and decoding ~10× slower."""
    pack: PackOptions = field(default_factory=lambda: PackOptions(size=128, fps=10.0, max_seconds=6.0, shard_size=24))
    """Shard options: 10 fps is plenty for 4 sampled frames, and halves encoding and decoding against 15-30 fps."""
    train_overrides: tuple[str, ...] = ()
    """``--set`` overrides applied on top of ``DEMO_CONFIG`` (the quick size trains fewer epochs)."""

    def synth_settings(self, seed: int) -> dict:
        """What decides the synthetic tree's bytes (compared with OUT/raw's marker to reuse it)."""
        return {"actors": list(self.actors), "trials_per_actor": self.trials_per_actor,
                "size": list(self.source_size), "seed": seed}


THREE_ACTORS_PER_FOLD = (2, 5, 14, 3, 6, 7, 10, 11, 12, 8, 17, 21, 1, 4, 9)
"""Three actors of each RAVDESS protocol fold, both sexes in each (odd actors are male; DATASETS.md: folds
(2,5,14,15,16), (3,6,7,13,18), (10,11,12,19,20), (8,17,21,23,24), (1,4,9,22))."""

FULL = DemoSize(
    name="full",
    # All 24 speakers, few trials each: held-out accuracy grows with the number of training speakers far more
    # than with trials per speaker (measured: 10 actors x 24 trials, 30 epochs → 0.875; 24 x 12 → 0.90).
    actors=tuple(range(1, 25)),
    trials_per_actor=16,
)
QUICK = DemoSize(
    name="quick",
    # Speakers again, not trials: one actor per fold (3 training speakers x 24 trials, 10 epochs) scored 0.42-0.58
    # on its one test speaker, at the mercy of the install's numerics; 3 per fold x 12 trials (9 training speakers,
    # 36 test clips of 3 speakers) is the same order of work and far steadier (measured spread: docs/experiments.md).
    actors=tuple(sorted(THREE_ACTORS_PER_FOLD)),
    trials_per_actor=12,
    train_overrides=("train.epochs=12",),
)
SIZES = {s.name: s for s in (FULL, QUICK)}


@dataclass
class StageTime:
    """One finished stage."""

    name: str
    """``synth``, ``shard`` or ``train``."""
    seconds: float
    """Wall time."""
    reused: bool = False
    """True when the stage found its output from an earlier run and kept it."""


@dataclass
class DemoResult:
    """What ``run_demo`` made and measured."""

    out: Path
    """The demo folder."""
    run_dir: Path
    """This run's folder: config.toml, best.pt, last.pt and the TensorBoard event files."""
    best_checkpoint: Path
    """``run_dir / "best.pt"`` (picked by validation unweighted accuracy)."""
    test: dict[str, float]
    """best.pt's metrics on the held-out test actors (``acc``, ``ua``, ``weighted_f1``, ``macro_f1``, ``loss``, ``num_samples``)."""
    test_actors: tuple[int, ...]
    """The actors of the test fold (never trained or validated on)."""
    stages: list[StageTime]
    """Every stage with its wall time, in order."""

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "run_dir": str(self.run_dir),
            "best_checkpoint": str(self.best_checkpoint),
            "test": self.test,
            "test_actors": list(self.test_actors),
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "total_seconds": round(self.total_seconds, 1),
        }


class DemoProgress(Protocol):
    """Where the demo reports progress (the CLI draws rich bars; tests pass ``NullProgress``)."""

    def stage(self, name: str, detail: str) -> None:
        """A stage starts."""

    def stage_done(self, stage: StageTime, detail: str) -> None:
        """A stage finished."""

    def synth(self, done: int, total: int) -> None:
        """Synthetic clips rendered so far."""

    def pack(self, event: PackEvent) -> None:
        """The packer's events."""

    def message(self, text: str) -> None:
        """A line to show (e.g. a stale folder lock taken over)."""

    def reporter(self):
        """The training Reporter (``avdali.train.reporting.Reporter``), or None for none."""


class NullProgress:
    """Reports nothing."""

    def stage(self, name, detail): ...
    def stage_done(self, stage, detail): ...
    def synth(self, done, total): ...
    def pack(self, event): ...
    def message(self, text): ...
    def reporter(self):
        return None


# --- the steps ---------------------------------------------------------------------------------------------


def synthesize(raw: Path, size: DemoSize, seed: int, progress=None) -> bool:
    """Make the synthetic RAVDESS-like tree in ``raw`` unless a complete one with the same settings is there.

    Returns True when it (re)made the tree, False when it reused it. A folder that holds files but no marker
    of ours is not touched (it may be someone's data): AvdaliError.
    """
    from avdali.synth.ravdess import make_ravdess

    return make_once(raw, size.synth_settings(seed), lambda: make_ravdess(
        raw, actors=size.actors, size=size.source_size, trials_per_actor=size.trials_per_actor, seed=seed,
        workers=size.pack.num_workers, progress=progress))  # fmt: skip


def make_once(raw: Path, wanted: dict, make: Callable[[], object]) -> bool:
    """Run ``make()`` to fill ``raw`` unless the marker there says a complete tree of the ``wanted`` settings is
    already in it. True when it (re)made the tree; AvdaliError for a non-empty folder without our marker."""
    marker = raw / SYNTH_MARKER
    if marker.is_file():
        try:
            made = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            made = None
        if made == {**wanted, "complete": True}:
            return False
        shutil.rmtree(raw)  # ours, from other settings or interrupted: start over
    elif raw.exists() and any(raw.iterdir()):
        raise AvdaliError(f"{raw}: exists and was not made by `avdali demo` (no {SYNTH_MARKER}); choose another --out")
    raw.mkdir(parents=True, exist_ok=True)
    # Written before rendering: an interrupted tree is recognised as ours and redone next time.
    marker.write_text(json.dumps({**wanted, "complete": False}) + "\n")
    make()
    marker.write_text(json.dumps({**wanted, "complete": True}) + "\n")
    return True


def pack_shards(raw: Path, shards: Path, size: DemoSize, *, overwrite: bool, progress=None) -> PackResult:
    """Pack ``raw`` into ``shards``; resumes or keeps an earlier run's shards unless ``overwrite``
    (which the demo sets when the tree was just remade: same clip names, new bytes)."""
    from avdali.packing.run import pack

    return pack("ravdess", raw, shards, size.pack, progress, overwrite=overwrite)


def new_run_dir(runs: Path, now: datetime | None = None) -> Path:
    """A run folder under ``runs`` that does not exist yet: ``demo-<time>`` (``-2``, ``-3`` … within one second)."""
    stem = f"demo-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"
    candidate, n = runs / stem, 1
    while candidate.exists():
        n += 1
        candidate = runs / f"{stem}-{n}"
    return candidate


def demo_config(shards: Path, run_dir: Path, seed: int, size: DemoSize, overrides: tuple[str, ...] = ()):
    """``DEMO_CONFIG`` pointed at the demo's shards and run folder (RunConfig)."""
    from avdali.train.config_toml import load_config, toml_literal

    return load_config(DEMO_CONFIG, [
        f"data.shards={toml_literal(str(shards))}",
        f"train.run_dir={toml_literal(str(run_dir))}",
        f"train.seed={seed}",
        *size.train_overrides,
        *overrides,
    ])  # fmt: skip


def test_actors(size: DemoSize, fold: int) -> tuple[int, ...]:
    """The demo's actors in RAVDESS protocol fold ``fold``."""
    from avdali.sources.ravdess import actor_fold

    return tuple(a for a in size.actors if actor_fold(a) == fold)


def run_demo(
    out: Path, *, seed: int = 0, size: DemoSize = FULL, overrides: tuple[str, ...] = (), progress: DemoProgress | None = None
) -> DemoResult:
    """The whole demo: synthesize (or reuse) → pack (or resume) → train a fresh run → test on held-out actors.

    Holds ``out``'s folder lock throughout (``avdali.folder_lock``): a second demo into the same folder stops at once.
    """
    progress = progress or NullProgress()
    with hold_folder(out, "avdali demo", progress.message):
        return _run_demo_locked(Path(out), seed, size, overrides, progress)


def _run_demo_locked(out: Path, seed: int, size: DemoSize, overrides: tuple[str, ...], progress: DemoProgress) -> DemoResult:
    from avdali.train.run import run_training

    raw, shards = out / "raw", out / "shards"
    stages: list[StageTime] = []

    progress.stage("synth", f"{len(size.actors)} actors × {size.trials_per_actor} trials at "
                            f"{size.source_size[0]}x{size.source_size[1]} → {raw}")
    tic = time.perf_counter()
    remade = synthesize(raw, size, seed, progress.synth)
    stages.append(StageTime("synth", time.perf_counter() - tic, reused=not remade))
    progress.stage_done(stages[-1], "made" if remade else f"reused (same settings, {SYNTH_MARKER})")

    progress.stage("shard", f"{size.pack.size}² face crops at {size.pack.fps:g} fps, VP9 + FLAC → {shards}")
    tic = time.perf_counter()
    packed = pack_shards(raw, shards, size, overwrite=remade, progress=progress.pack)
    stages.append(StageTime("shard", time.perf_counter() - tic, reused=packed.shards_written == 0))
    progress.stage_done(stages[-1], f"{packed.manifest.samples} clips in {len(packed.manifest.shards)} shards "
                                    f"({packed.shards_written} written, {packed.shards_kept} kept)")

    run_dir = new_run_dir(out / "runs")
    cfg = demo_config(shards, run_dir, seed, size, overrides)
    held_out = test_actors(size, cfg.data.fold)
    progress.stage("train", f"{cfg.train.epochs} epochs on {cfg.data.pipeline.loader} loader; test fold {cfg.data.fold} = "
                            f"actors {', '.join(map(str, held_out))} (never seen) → {run_dir}")
    tic = time.perf_counter()
    result = run_training(cfg, reporter=progress.reporter())
    stages.append(StageTime("train", time.perf_counter() - tic))
    if not result.test:
        raise AvdaliError(f"{run_dir}: the run gave no test metrics (test fold {cfg.data.fold} is empty)")
    progress.stage_done(stages[-1], f"test acc {result.test['acc']:.3f}")
    return DemoResult(
        out=out,
        run_dir=Path(result.run_dir),
        best_checkpoint=Path(result.run_dir) / "best.pt",
        test=result.test,
        test_actors=held_out,
        stages=stages,
    )

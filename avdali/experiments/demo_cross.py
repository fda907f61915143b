"""``avdali demo --cross``: the RAVDESS demo, a MELD model beside it, and the cross-dataset table of both.

On top of ``run_demo``'s folders (``OUT/raw``, ``OUT/shards``, ``OUT/runs``)::

    OUT/meld/raw/      a synthetic MELD-like tree driven by the real label CSVs (+ ``avdali-demo-synth.json``)
    OUT/meld/shards/   its shards
    OUT/meld/runs/demo-<time>/   the MELD run (DEMO_CONFIG's model, picked on dev weighted F1, tested on test)
    OUT/cross/         cross.md, cross.json, cross.png: both best.pt × both shard folders (``avdali cross``)

The synthetic MELD tree needs the real ``{train,dev,test}_sent_emo.csv`` (rows, speakers, timings); the clips are
synthetic. Reuse follows the RAVDESS demo: a finished tree with the same settings and its shards are kept.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from avdali.experiments.demo import SYNTH_MARKER, DemoProgress, DemoResult, DemoSize, NullProgress, StageTime, demo_config, make_once, new_run_dir, run_demo
from avdali.errors import AvdaliError
from avdali.shardformat.options import PackOptions


@dataclass(frozen=True)
class MeldDemoSize:
    """How much synthetic MELD the cross demo makes and how its model trains."""

    name: str
    """``full`` or ``quick`` (paired with the RAVDESS demo's size of the same name)."""
    rows_per_split: int
    """Real CSV rows kept per split (train, dev, test), stratified by emotion."""
    source_size: tuple[int, int] = (256, 144)
    """Frame size of the synthetic mp4s (the packer crops 128² faces anyway)."""
    max_seconds: float = 3.0
    """Longest clip; the model reads 3 s of audio (DEMO_CONFIG's audio_seconds)."""
    pack: PackOptions = field(default_factory=lambda: PackOptions(size=128, fps=10.0, max_seconds=6.0, shard_size=24))
    """Shard options, as for the RAVDESS demo."""
    train_overrides: tuple[str, ...] = ()
    """``--set`` overrides of DEMO_CONFIG for the MELD run (after the RAVDESS size's own)."""

    def synth_settings(self, seed: int) -> dict:
        return {"dataset": "meld", "rows_per_split": self.rows_per_split, "size": list(self.source_size),
                "max_seconds": self.max_seconds, "seed": seed}


MELD_TRAIN = ("train.metric=weighted_f1",)
"""MELD's headline metric picks best.pt (its literature reports weighted F1; the classes are imbalanced)."""
MELD_SIZES = {
    # 60 rows per split: ~1 min of training on 2 CPU cores, enough to show the table's shape (not a MELD result).
    "full": MeldDemoSize("full", rows_per_split=60, train_overrides=(*MELD_TRAIN, "train.epochs=15")),
    "quick": MeldDemoSize("quick", rows_per_split=12, train_overrides=(*MELD_TRAIN, "train.epochs=2")),
}


@dataclass
class CrossDemoResult:
    """What ``run_cross_demo`` made and measured."""

    ravdess: DemoResult
    """The RAVDESS demo (as ``avdali demo`` alone)."""
    meld_run_dir: Path
    """The MELD run's folder."""
    meld_test: dict[str, float]
    """The MELD best.pt's metrics on MELD test, as its training run logged them."""
    table: object
    """The ``avdali.experiments.cross.CrossTable``."""
    outputs: dict[str, Path]
    """``markdown``, ``json``, ``png`` under OUT/cross."""
    stages: list[StageTime]
    """The MELD and cross stages (the RAVDESS ones are in ``ravdess.stages``)."""

    @property
    def total_seconds(self) -> float:
        return self.ravdess.total_seconds + sum(s.seconds for s in self.stages)

    def to_dict(self) -> dict:
        return {
            "ravdess": self.ravdess.to_dict(),
            "meld": {"run_dir": str(self.meld_run_dir), "best_checkpoint": str(self.meld_run_dir / "best.pt"),
                     "test": self.meld_test},
            "cross": {k: str(v) for k, v in self.outputs.items()},
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "total_seconds": round(self.total_seconds, 1),
        }


def synthesize_meld(raw: Path, size: MeldDemoSize, seed: int, csv_dir: Path, progress=None) -> bool:
    """Make the MELD-like tree in ``raw`` unless a complete one with the same settings is there (as ``demo.synthesize``).

    Returns True when it (re)made the tree. A folder with files but no marker of ours is not touched: AvdaliError.
    """
    from avdali.synth.meld import make_meld

    return make_once(raw, size.synth_settings(seed), lambda: make_meld(
        raw, csv_dir=csv_dir, limit=size.rows_per_split, size=size.source_size, max_seconds=size.max_seconds,
        seed=seed, workers=size.pack.num_workers, progress=progress))  # fmt: skip


def run_cross_demo(
    out: Path,
    *,
    meld_csv: Path,
    seed: int = 0,
    size: DemoSize,
    overrides: tuple[str, ...] = (),
    progress: DemoProgress | None = None,
) -> CrossDemoResult:
    """The RAVDESS demo, then synthetic MELD → shards → a MELD run, then both best.pt on both shard folders."""
    from avdali.packing.run import pack
    from avdali.experiments.cross import run_cross, write_outputs
    from avdali.train.run import run_training

    progress = progress or NullProgress()
    out = Path(out)
    ravdess = run_demo(out, seed=seed, size=size, overrides=overrides, progress=progress)
    meld_size = MELD_SIZES[size.name]
    raw, shards = out / "meld" / "raw", out / "meld" / "shards"
    stages: list[StageTime] = []

    progress.stage("meld synth", f"{meld_size.rows_per_split} real CSV rows per split (train, dev, test), synthetic "
                                 f"clips at {meld_size.source_size[0]}x{meld_size.source_size[1]} → {raw}")
    tic = time.perf_counter()
    remade = synthesize_meld(raw, meld_size, seed, Path(meld_csv), progress.synth)
    stages.append(StageTime("meld synth", time.perf_counter() - tic, reused=not remade))
    progress.stage_done(stages[-1], "made" if remade else f"reused (same settings, {SYNTH_MARKER})")

    progress.stage("meld shard", f"{meld_size.pack.size}² face crops at {meld_size.pack.fps:g} fps → {shards}")
    tic = time.perf_counter()
    packed = pack("meld", raw, shards, meld_size.pack, progress.pack, overwrite=remade)
    stages.append(StageTime("meld shard", time.perf_counter() - tic, reused=packed.shards_written == 0))
    progress.stage_done(stages[-1], f"{packed.manifest.samples} clips in {len(packed.manifest.shards)} shards")

    run_dir = new_run_dir(out / "meld" / "runs")
    cfg = demo_config(shards, run_dir, seed, size, (*meld_size.train_overrides, *overrides))
    progress.stage("meld train", f"{cfg.train.epochs} epochs on MELD train, best.pt on dev {cfg.train.metric}, "
                                 f"tested on test → {run_dir}")
    tic = time.perf_counter()
    trained = run_training(cfg, reporter=progress.reporter())
    stages.append(StageTime("meld train", time.perf_counter() - tic))
    progress.stage_done(stages[-1], f"test weighted F1 {trained.test.get('weighted_f1', float('nan')):.3f}")

    checkpoints = [ravdess.best_checkpoint, Path(trained.run_dir) / "best.pt"]
    progress.stage("cross", f"{len(checkpoints)} checkpoints × 2 shard folders → {out / 'cross'}")
    tic = time.perf_counter()
    table = run_cross(checkpoints, [out / "shards", shards], device=cfg.train.device)
    outputs = write_outputs(table, out / "cross")
    stages.append(StageTime("cross", time.perf_counter() - tic))
    progress.stage_done(stages[-1], f"{len(checkpoints) * 2} cells")
    return CrossDemoResult(ravdess, Path(trained.run_dir), trained.test, table, outputs, stages)

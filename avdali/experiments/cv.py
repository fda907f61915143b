"""RAVDESS k-fold cross-validation: one training run per actor fold under one parent folder, then mean ± std.

Fold k tests on actor fold k, validates on fold k % 5 + 1 and trains on the other three (``avdali.train.plan``), so
the five test folds together hold every actor exactly once. Each fold is an ordinary run (``run_training``)
in ``PARENT/fold{k}``; ``PARENT/cv.json`` is rewritten after every fold, so a stopped cross-validation keeps
what it finished. The spread is the population standard deviation over folds (numpy's default, ddof=0, what
``scikit-learn``'s ``cross_val_score(...).std()`` reports), so one fold gives 0, not NaN.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

from avdali.errors import AvdaliError, ConfigError
from avdali.files import atomic_write_text
from avdali.folder_lock import hold_folder
from avdali.train.config import RunConfig
from avdali.train.config_toml import config_to_toml
from avdali.train.plan import RAVDESS_FOLDS, plan_splits

CV_JSON = "cv.json"
"""The summary file in the parent folder."""


@dataclass
class FoldResult:
    """One fold's finished run."""

    fold: int
    """The test fold (1-5)."""
    run_dir: Path
    """Its run folder (config.toml, best.pt, TensorBoard events)."""
    best_val: float
    """Best validation value of the run's metric (the one that picked best.pt)."""
    test: dict[str, float]
    """best.pt's test metrics (acc, ua, weighted_f1, macro_f1, loss, num_samples)."""

    def to_dict(self) -> dict:
        return {"fold": self.fold, "run_dir": str(self.run_dir), "best_val": self.best_val, "test": self.test}


@dataclass
class CVSummary:
    """Every fold and the aggregate."""

    metric: str
    """The validation metric of the runs (also the headline test metric)."""
    parent: Path
    """The folder that holds ``fold{k}/`` and ``cv.json``."""
    folds: list[FoldResult] = field(default_factory=list)
    """Finished folds, in run order."""

    @property
    def mean(self) -> dict[str, float]:
        return aggregate([f.test for f in self.folds])[0]

    @property
    def std(self) -> dict[str, float]:
        return aggregate([f.test for f in self.folds])[1]

    def to_dict(self) -> dict:
        mean, std = aggregate([f.test for f in self.folds])
        return {
            "metric": self.metric,
            "parent": str(self.parent),
            "folds": [f.to_dict() for f in self.folds],
            "mean": mean,
            "std": std,
            "test_samples": sum(int(f.test.get("num_samples", 0)) for f in self.folds),
        }


def aggregate(per_fold: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population standard deviation (ddof=0) of every metric the folds share (``num_samples`` excluded)."""
    if not per_fold:
        return {}, {}
    keys = [k for k in per_fold[0] if k != "num_samples" and all(k in d for d in per_fold)]
    mean, std = {}, {}
    for key in keys:
        values = [float(d[key]) for d in per_fold]
        mu = sum(values) / len(values)
        mean[key] = mu
        std[key] = math.sqrt(sum((v - mu) ** 2 for v in values) / len(values))
    return mean, std


def parse_folds(text: str) -> list[int]:
    """``"1,2,3"`` → [1, 2, 3] (each 1-5, no repeats; ConfigError otherwise)."""
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--folds must be a comma-separated list of fold numbers like 1,2,3, got {text!r}") from None
    if not folds or any(not 1 <= f <= RAVDESS_FOLDS for f in folds) or len(set(folds)) != len(folds):
        raise ConfigError(f"--folds must list distinct folds between 1 and {RAVDESS_FOLDS}, got {text!r}")
    return folds


def check_cv_config(cfg: RunConfig) -> None:
    """Cross-validation needs RAVDESS shards and the fold protocol (explicit splits would make every fold the same run)."""
    explicit = [name for name in ("train_splits", "val_splits", "test_splits") if getattr(cfg.data, name)]
    if explicit:
        raise ConfigError(f"cv runs the RAVDESS fold protocol; remove data.{', data.'.join(explicit)} from the config")
    if cfg.data.joint:
        raise ConfigError("cv runs the RAVDESS fold protocol on one shard folder; data.shards lists several (a joint run)")
    dataset = plan_splits(cfg.data.shards, 1).dataset
    if dataset != "ravdess":
        raise AvdaliError(f"{cfg.data.shards}: cv needs RAVDESS shards (actor folds), these hold {dataset!r}")


def default_parent(cfg: RunConfig, now: datetime | None = None) -> Path:
    """``output/cv-<name>-<time>`` (or ``train.run_dir`` when the config names one)."""
    if cfg.train.run_dir:
        return Path(cfg.train.run_dir)
    return Path("output") / f"cv-{cfg.train.name}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def run_cv(
    cfg: RunConfig,
    folds: Sequence[int],
    parent: Path | None = None,
    *,
    nprocs: int = 1,
    reporter_for: Callable[[int], object] | None = None,
    on_fold: Callable[[FoldResult], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> CVSummary:
    """Train one run per fold in ``parent/fold{k}`` and return every fold's test metrics with their mean ± std.

    ``reporter_for(fold)`` gives each run's training Reporter; ``on_fold`` is called after each finished fold;
    ``on_message`` hears other lines worth showing (a stale folder lock taken over). ``parent``'s folder lock
    (``avdali.folder_lock``) is held throughout: a second cv into the same folder stops at once.
    """
    if not folds:
        raise ConfigError("cv needs at least one fold")
    check_cv_config(cfg)
    parent = Path(parent) if parent is not None else default_parent(cfg)
    with hold_folder(parent, "avdali cv", on_message):
        return _run_cv_locked(cfg, folds, parent, nprocs, reporter_for, on_fold)


def _run_cv_locked(
    cfg: RunConfig,
    folds: Sequence[int],
    parent: Path,
    nprocs: int,
    reporter_for: Callable[[int], object] | None,
    on_fold: Callable[[FoldResult], None] | None,
) -> CVSummary:
    from avdali.train.run import run_training

    if (parent / CV_JSON).exists():
        raise AvdaliError(f"{parent} already holds a cross-validation ({CV_JSON}); choose another --out")
    parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(parent / "config.toml", config_to_toml(cfg))  # the shared config, before each fold's own fold/run_dir
    summary: CVSummary | None = None
    for fold in folds:
        fold_cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, fold=fold),
            train=dataclasses.replace(cfg.train, run_dir=str(parent / f"fold{fold}"), name=f"{cfg.train.name}-fold{fold}"),
        )
        result = run_training(fold_cfg, nprocs=nprocs, reporter=reporter_for(fold) if reporter_for else None)
        if not result.test:
            raise AvdaliError(f"fold {fold}: the run gave no test metrics (train.test_at_end must be true)")
        if summary is None:
            summary = CVSummary(metric=result.metric, parent=parent)
        finished = FoldResult(fold=fold, run_dir=Path(result.run_dir), best_val=result.best_metric, test=dict(result.test))
        summary.folds.append(finished)
        write_summary(summary)
        if on_fold:
            on_fold(finished)
    return summary


def write_summary(summary: CVSummary) -> Path:
    """``parent/cv.json`` (atomically)."""
    return atomic_write_text(summary.parent / CV_JSON, json.dumps(summary.to_dict(), indent=2) + "\n")

"""Joint runs: one model trained on several datasets at once (``data.shards`` = a list of shard folders).

The rules, in one place:

- **Label space.** Only the unified 7-class space (``labels.UNIFIED``) is shared by RAVDESS and MELD; a joint run
  trains in it. Each folder must hold a different dataset with a known protocol (RAVDESS, MELD) whose manifest
  labels are all unified classes.
- **Splits.** Each dataset keeps its own protocol (``protocol.plan_splits``): RAVDESS by ``data.fold``, MELD
  train/dev/test. Explicit ``data.*_splits`` are refused (a split name belongs to one dataset).
- **Sampling.** Training draws every sample's dataset with probability ``p_d`` ∝ ``data.mix`` (default: each
  folder's training clips, i.e. the plain union) through ``data.mixture.MixtureLoader``.
- **Class weights** (``optim.class_weights = "balanced"``) come from the mixture's class distribution
  ``Σ_d p_d · dist_d`` (``dist_d``: dataset d's training label distribution), not from one manifest.
- **Metrics.** Validation and test run per dataset with the exact evaluation (``evaluate.py``) and are logged as
  ``val/<dataset>/*`` and ``test/<dataset>/*``. best.pt maximises ``val/joint``: by ``train.joint_metric``, the
  mean over datasets of each dataset's metric (``train.metric``; "auto" = RAVDESS UA, MELD weighted F1) or one
  dataset's alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from avdali.errors import ConfigError
from avdali.labels import UNIFIED
from avdali.shardformat.manifest import read_manifest
from avdali.train.plan import SplitPlan, check_shards_fit, default_metric, plan_splits

JOINT_METRIC = "joint"
"""Name of the joint validation value (``val/joint``, ``best_joint``, the checkpoint's ``metric``)."""


# --- the plan ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetPart:
    """One dataset of a joint run."""

    dataset: str
    """``ravdess`` or ``meld``: the name in TensorBoard tags (``val/<dataset>/*``)."""
    shards: str
    """Its shard folder."""
    plan: SplitPlan
    """Its own splits (its protocol)."""
    weight: float
    """Probability that a training sample comes from it (``data.mix`` normalised)."""
    train_samples: int
    """Clips in its training splits."""


@dataclass(frozen=True)
class JointPlan:
    """The split plan of a joint run: one ``SplitPlan`` per dataset, with its sampling weight."""

    parts: tuple[DatasetPart, ...]

    @property
    def dataset(self) -> str:
        """The datasets joined by "+" (``data.dataset`` of the resolved config)."""
        return "+".join(p.dataset for p in self.parts)

    @property
    def train(self) -> tuple[str, ...]:
        return tuple(f"{p.dataset}:{s}" for p in self.parts for s in p.plan.train)

    @property
    def val(self) -> tuple[str, ...]:
        return tuple(f"{p.dataset}:{s}" for p in self.parts for s in p.plan.val)

    @property
    def test(self) -> tuple[str, ...]:
        return tuple(f"{p.dataset}:{s}" for p in self.parts for s in p.plan.test)

    @property
    def train_class_counts(self) -> tuple[float, ...]:
        """The mixture's expected training clips per unified class: the total training clips times
        ``Σ_d p_d · dist_d`` (what ``balanced_class_weights`` turns into weights; only the proportions matter)."""
        total = sum(p.train_samples for p in self.parts)
        return tuple(total * q for q in mixture_class_distribution(self))


def plan_joint(data) -> JointPlan:
    """Read every folder's manifest, check it fits (``check_shards_fit``, one dataset per folder, unified labels)
    and plan each dataset's splits by its protocol."""
    folders = data.shard_folders()
    names = data.dataset.split("+") if data.dataset else [""] * len(folders)
    parts, seen = [], {}
    for folder, wanted in zip(folders, names):
        single = dataclasses.replace(data, shards=folder, mix=[], dataset=wanted)
        manifest = read_manifest(Path(folder))
        check_shards_fit(single, manifest)
        dataset = manifest.dataset
        if dataset in seen:
            raise ConfigError(f"data.shards: {seen[dataset]} and {folder} both hold {dataset} shards; "
                              f"a joint run takes one folder per dataset")
        seen[dataset] = folder
        if dataset not in ("ravdess", "meld"):
            raise ConfigError(f"data.shards: {folder} holds dataset {dataset!r}, which has no split protocol for a "
                              f"joint run (ravdess, meld)")
        plan = plan_splits(folder, data.fold, manifest=manifest)
        outside = sorted({name for s in plan.train + plan.val + plan.test
                          for name, n in manifest.splits[s].labels.items() if n and name not in UNIFIED})
        if outside:
            raise ConfigError(f"data.shards: {folder} has labels {', '.join(outside)} outside the unified space a "
                              f"joint run shares ({', '.join(UNIFIED)})")
        parts.append((dataset, folder, plan, sum(manifest.splits[s].samples for s in plan.train)))
    mix = list(data.mix) or [float(n) for _, _, _, n in parts]
    total = float(sum(mix))
    return JointPlan(tuple(DatasetPart(d, f, p, w / total, n) for (d, f, p, n), w in zip(parts, mix)))


def mixture_class_distribution(plan: JointPlan) -> list[float]:
    """``Σ_d p_d · dist_d``: the unified-class distribution of the training mixture."""
    out = [0.0] * len(UNIFIED)
    for part in plan.parts:
        counts = part.plan.train_class_counts
        total = sum(counts)
        for c, n in enumerate(counts):
            out[c] += part.weight * n / total if total else 0.0
    return out


def check_joint_metric(train, plan: JointPlan) -> None:
    """``train.joint_metric`` naming a dataset must name one of the run's."""
    names = [p.dataset for p in plan.parts]
    if train.joint_metric != "mean" and train.joint_metric not in names:
        raise ConfigError(f"train.joint_metric {train.joint_metric!r} is not a dataset of this run ({', '.join(names)}); "
                          f"use \"mean\" or one of them")


def dataset_metric(metric: str, dataset: str) -> str:
    """The metric of ``dataset`` in a joint run: ``train.metric``, or the dataset's own when "auto"."""
    return default_metric(dataset) if metric == "auto" else metric


def rule_text(train, plan: JointPlan) -> str:
    """The best.pt rule in words, e.g. ``mean(ravdess/ua, meld/weighted_f1)``."""
    terms = [f"{p.dataset}/{dataset_metric(train.metric, p.dataset)}" for p in plan.parts]
    if train.joint_metric == "mean":
        return f"mean({', '.join(terms)})"
    return next(t for t in terms if t.startswith(f"{train.joint_metric}/"))


def joint_value(train, plan: JointPlan, per_dataset: dict[str, dict[str, Any]]) -> float:
    """The value best.pt maximises, from each dataset's metrics (``rule_text`` says which)."""
    if train.joint_metric != "mean":
        return float(per_dataset[train.joint_metric][dataset_metric(train.metric, train.joint_metric)])
    values = [float(per_dataset[p.dataset][dataset_metric(train.metric, p.dataset)]) for p in plan.parts]
    return sum(values) / len(values)


# --- the run's loaders and evaluations -----------------------------------------------------------------------


class JointRun:
    """What a joint run adds to the trainer: the mixture training loader, per-dataset evaluation, the rule."""

    def __init__(self, cfg, plan: JointPlan, build: Callable, *, device: str, rank: int, world_size: int, seed: int,
                 local_ranks: int = 1):
        from avdali.data.mixture import MixtureLoader

        self.cfg, self.plan, self.build = cfg, plan, build
        self.common = dict(device=device, rank=rank, world_size=world_size, seed=seed, local_ranks=local_ranks)
        loaders = [build(cfg.data.loader_config(p.shards), p.plan.train, train=True, **self.common) for p in plan.parts]
        self.train_loader = MixtureLoader(loaders, [p.weight for p in plan.parts], batch_size=cfg.data.pipeline.batch_size,
                                          world_size=world_size, rank=rank, seed=seed,
                                          names=[p.dataset for p in plan.parts])
        self.val_loaders = {p.dataset: build(cfg.data.loader_config(p.shards), p.plan.val, train=False, **self.common)
                            for p in plan.parts}
        self.rule = rule_text(cfg.train, plan)

    def test_loaders(self) -> dict:
        return {p.dataset: self.build(self.cfg.data.loader_config(p.shards), p.plan.test, train=False, **self.common)
                for p in self.plan.parts if p.plan.test}

    def evaluate(self, role: str, evaluate_fn: Callable, writer, step: int, class_names, loaders: dict | None = None) -> dict[str, float]:
        """Evaluate every dataset's ``role`` loader (each sample once: ``evaluate``), log ``role/<dataset>/*``
        and its confusion matrix, and return the flat scalars ``{"<dataset>/<metric>": …, "joint": …}``."""
        loaders = self.val_loaders if loaders is None else loaders
        per_dataset, flat = {}, {}
        for name, loader in loaders.items():
            loader.set_epoch(0)
            metrics = evaluate_fn(loader)
            scalars = {k: v for k, v in metrics.items() if k != "confusion"}
            per_dataset[name] = scalars
            flat.update({f"{name}/{k}": v for k, v in scalars.items()})
            writer.scalars(f"{role}/{name}", scalars, step)
            writer.confusion(f"{role}/{name}/confusion", metrics["confusion"], class_names, step)
        train = self.cfg.train
        needed = [p.dataset for p in self.plan.parts] if train.joint_metric == "mean" else [train.joint_metric]
        if all(name in per_dataset for name in needed):
            flat[JOINT_METRIC] = joint_value(train, self.plan, per_dataset)
            writer.scalars(role, {JOINT_METRIC: flat[JOINT_METRIC]}, step)
        return flat

    def summary(self) -> str:
        parts = " · ".join(
            f"{p.dataset} ({p.shards}): train {'+'.join(p.plan.train)} ({p.train_samples} clips, p={p.weight:.2f}), "
            f"val {'+'.join(p.plan.val)}, test {'+'.join(p.plan.test) or '-'}" for p in self.plan.parts)
        return f"joint {self.plan.dataset}: {parts} · best.pt by {self.rule}"

"""The split plan of a run: which shard splits of which datasets it trains, validates and tests on, checked against
their manifests before anything is written. One plan type for every run: a run of one dataset is a plan of one part.

RAVDESS is split by actor into 5 folds (DATASETS.md); run ``fold`` k tests on fold k, validates on fold
k % 5 + 1 and trains on the other three, so no actor is seen in two roles. MELD keeps its own
train / dev / test. Explicit ``[data] train_splits/val_splits/test_splits`` replace the protocol.

A joint run (``data.shards`` = several folders) trains one model on several datasets at once. Its rules, in one place:

- **Label space.** Only the unified 7-class space (``labels.UNIFIED``) is shared by RAVDESS and MELD; a joint run
  trains in it. Each folder must hold a different dataset with a known protocol (RAVDESS, MELD) whose manifest
  labels are all unified classes.
- **Splits.** Each dataset keeps its own protocol (``plan_splits``): RAVDESS by ``data.fold``, MELD train/dev/test.
  Explicit ``data.*_splits`` are refused (a split name belongs to one dataset; ``config.DataSection``).
- **Sampling.** Training draws every sample's dataset with probability ``p_d`` ∝ ``data.mix`` (default: each
  folder's training clips, i.e. the plain union) through ``data.mixture.MixtureLoader`` (``run_data.RunData``).
- **Class weights** (``optim.class_weights = "balanced"``) come from the mixture's class distribution
  ``Σ_d p_d · dist_d`` (``dist_d``: dataset d's training label distribution), not from one manifest.
- **Metrics.** Validation and test run per dataset with the exact evaluation (``evaluate.py``) and are logged as
  ``val/<dataset>/*`` and ``test/<dataset>/*``. best.pt maximises ``val/joint``: by ``train.joint_metric``, the
  mean over datasets of each dataset's metric (``train.metric``; "auto" = RAVDESS UA, MELD weighted F1) or one
  dataset's alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avdali.data.config import DataConfig
from avdali.errors import ConfigError
from avdali.labels import UNIFIED
from avdali.shardformat import MANIFEST_NAME
from avdali.shardformat.manifest import Manifest, read_manifest

RAVDESS_FOLDS = 5
DEFAULT_METRIC = {"ravdess": "ua", "meld": "weighted_f1"}
"""Headline metric per dataset: unweighted accuracy on balanced RAVDESS, weighted F1 on imbalanced MELD."""
JOINT_METRIC = "joint"
"""Name of the joint validation value (``val/joint``, ``best_joint``, the checkpoint's ``metric``)."""


@dataclass(frozen=True)
class DatasetPart:
    """One dataset of a run: its shard folder and the splits of each role."""

    dataset: str
    """``ravdess`` or ``meld`` (from the manifest): the name in a joint run's TensorBoard tags (``val/<dataset>/*``)."""
    shards: str
    """Its shard folder."""
    train: tuple[str, ...]
    """Splits trained on."""
    val: tuple[str, ...]
    """Splits that pick the best checkpoint."""
    test: tuple[str, ...]
    """Splits evaluated once at the end (may be empty)."""
    train_class_counts: tuple[int, ...] = ()
    """Training samples per unified class id, from the manifest's totals (``optim.class_weights = "balanced"``)."""
    train_samples: int = 0
    """Clips in its training splits."""
    weight: float = 1.0
    """Probability that a training sample comes from it (``data.mix`` normalised; 1 in a run of one dataset)."""


@dataclass(frozen=True)
class RunPlan:
    """The split plan of a run: one part per dataset, in ``data.shards`` order."""

    parts: tuple[DatasetPart, ...]

    @property
    def joint(self) -> bool:
        """Several datasets: a joint run (per-dataset tags, the mixture loader, best.pt by ``val/joint``)."""
        return len(self.parts) > 1

    @property
    def dataset(self) -> str:
        """The datasets joined by "+" (``data.dataset`` of the resolved config)."""
        return "+".join(p.dataset for p in self.parts)

    @property
    def train(self) -> tuple[str, ...]:
        return self._names("train")

    @property
    def val(self) -> tuple[str, ...]:
        return self._names("val")

    @property
    def test(self) -> tuple[str, ...]:
        return self._names("test")

    def _names(self, role: str) -> tuple[str, ...]:
        """A role's splits: plain split names for one dataset, ``<dataset>:<split>`` for several."""
        if not self.joint:
            return getattr(self.parts[0], role)
        return tuple(f"{p.dataset}:{s}" for p in self.parts for s in getattr(p, role))

    @property
    def train_class_counts(self) -> tuple[float, ...]:
        """Training clips per unified class (what ``balanced_class_weights`` turns into weights): the manifest's counts
        for one dataset; for several, the total training clips times ``Σ_d p_d · dist_d`` (only the proportions
        matter)."""
        if not self.joint:
            return self.parts[0].train_class_counts
        total = sum(p.train_samples for p in self.parts)
        return tuple(total * q for q in mixture_class_distribution(self))


# --- planning -------------------------------------------------------------------------------------------------


def plan_run(data, train) -> RunPlan:
    """The plan of a run with ``[data]`` ``data`` (a ``config.DataSection``) and ``[train]`` ``train``: every shard
    folder's manifest read once and checked (``check_shards_fit``; a joint run's rules too), its splits planned by
    ``plan_splits``, the sampling weights normalised."""
    folders = data.shard_folders()
    joint = len(folders) > 1
    names = data.dataset.split("+") if data.dataset else [""] * len(folders)
    parts, seen = [], {}
    for folder, wanted in zip(folders, names):
        manifest = read_manifest(Path(folder))
        check_shards_fit(folder, wanted, data.pipeline, manifest)
        if joint:
            _check_joint_folder(folder, manifest, seen)
        part = plan_splits(folder, data.fold, data.train_splits, data.val_splits, data.test_splits, manifest=manifest)
        if joint:
            _check_unified_labels(folder, manifest, part)
        parts.append(part)
    mix = list(data.mix) or [float(p.train_samples) for p in parts]
    total = float(sum(mix))
    plan = RunPlan(tuple(dataclasses.replace(p, weight=w / total) for p, w in zip(parts, mix)))
    if joint:
        check_joint_metric(train, plan)
    return plan


def ravdess_fold_splits(fold: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(train, val, test) split names of RAVDESS fold ``fold``: test k, val k % 5 + 1, train the other three."""
    if not 1 <= fold <= RAVDESS_FOLDS:
        raise ConfigError(f"data.fold must be between 1 and {RAVDESS_FOLDS}, got {fold}")
    val = fold % RAVDESS_FOLDS + 1
    train = tuple(f"fold{k}" for k in range(1, RAVDESS_FOLDS + 1) if k not in (fold, val))
    return train, (f"fold{val}",), (f"fold{fold}",)


def plan_splits(shards: str | Path, fold: int, train=(), val=(), test=(), *, manifest: Manifest | None = None) -> DatasetPart:
    """One dataset's splits: explicit names where given, else the dataset's protocol; checked against the manifest
    (``manifest``, when the caller has read it already)."""
    manifest = manifest or read_manifest(Path(shards))
    if manifest.dataset == "ravdess":
        default = ravdess_fold_splits(fold)
    elif manifest.dataset == "meld":
        default = (("train",), ("dev",), ("test",))
    else:
        default = ((), (), ())
    part = DatasetPart(
        dataset=manifest.dataset,
        shards=str(shards),
        train=tuple(train) or default[0],
        val=tuple(val) or default[1],
        test=tuple(test) or default[2],
    )
    for role in ("train", "val"):
        if not getattr(part, role):
            raise ConfigError(f"data.{role}_splits: {shards} holds dataset {manifest.dataset!r} with no default protocol; name the splits")
    for role in ("train", "val", "test"):
        for split in getattr(part, role):
            if split not in manifest.splits:
                raise ConfigError(
                    f"data.{role}_splits: split {split!r} is not in {shards}/manifest.json; "
                    f"it holds {', '.join(sorted(manifest.splits))}"
                )
            if manifest.splits[split].samples == 0 and role != "test":
                raise ConfigError(f"data.{role}_splits: split {split!r} of {shards} has no samples")
    return dataclasses.replace(part, train_class_counts=tuple(_class_counts(manifest, part.train)),
                               train_samples=sum(manifest.splits[s].samples for s in part.train))


def check_shards_fit(shards: str | Path, dataset: str, pipeline: DataConfig, manifest: Manifest | None = None) -> Manifest:
    """What only a shard folder's manifest can tell about a run reading it, checked before the run writes anything:
    packing finished, the dataset is ``dataset`` (``data.dataset``; empty = any), the label space exists in it, and
    ``data.crop`` is not larger than the stored frames. ConfigError naming the key and the folder. ``manifest``: the
    folder's manifest when the caller has read it already."""
    shards = Path(shards)
    manifest = manifest or read_manifest(shards)
    where = shards / MANIFEST_NAME
    if not manifest.complete:
        raise ConfigError(f"{where}: packing is not complete; re-run `avdali shard` to finish it")
    if not manifest.shards:
        raise ConfigError(f"{where}: lists no shards (nothing was packed)")
    if dataset and dataset != manifest.dataset:
        raise ConfigError(
            f"data.dataset is {dataset!r} but {shards} holds {manifest.dataset} shards; "
            f"point data.shards at {dataset} shards"
        )
    if pipeline.label_space == "ravdess8" and manifest.dataset != "ravdess":
        raise ConfigError(f"data.label_space 'ravdess8' needs RAVDESS shards; {shards} holds {manifest.dataset}")
    size = manifest.options.get("size")  # read_manifest checked it is a valid --size when present
    if size is not None and pipeline.crop > size:
        raise ConfigError(
            f"data.crop {pipeline.crop} is larger than the {size}x{size} frames stored in {shards}; "
            f"use data.crop ≤ {size} or re-pack with --size ≥ {pipeline.crop}"
        )
    return manifest


def _check_joint_folder(folder: str, manifest: Manifest, seen: dict[str, str]) -> None:
    """A joint run's folder holds a dataset no other folder holds, with a split protocol."""
    dataset = manifest.dataset
    if dataset in seen:
        raise ConfigError(f"data.shards: {seen[dataset]} and {folder} both hold {dataset} shards; "
                          f"a joint run takes one folder per dataset")
    seen[dataset] = folder
    if dataset not in ("ravdess", "meld"):
        raise ConfigError(f"data.shards: {folder} holds dataset {dataset!r}, which has no split protocol for a "
                          f"joint run (ravdess, meld)")


def _check_unified_labels(folder: str, manifest: Manifest, part: DatasetPart) -> None:
    """A joint run's folder labels its planned splits with unified classes only."""
    outside = sorted({name for s in part.train + part.val + part.test
                      for name, n in manifest.splits[s].labels.items() if n and name not in UNIFIED})
    if outside:
        raise ConfigError(f"data.shards: {folder} has labels {', '.join(outside)} outside the unified space a "
                          f"joint run shares ({', '.join(UNIFIED)})")


def check_joint_metric(train, plan: RunPlan) -> None:
    """``train.joint_metric`` naming a dataset must name one of the run's."""
    names = [p.dataset for p in plan.parts]
    if train.joint_metric != "mean" and train.joint_metric not in names:
        raise ConfigError(f"train.joint_metric {train.joint_metric!r} is not a dataset of this run ({', '.join(names)}); "
                          f"use \"mean\" or one of them")


# --- the metric that picks best.pt ---------------------------------------------------------------------------


def default_metric(dataset: str) -> str:
    """The validation metric of a dataset's literature (ua for unknown datasets)."""
    return DEFAULT_METRIC.get(dataset, "ua")


def best_metric(train, plan: RunPlan) -> str:
    """The validation value that picks best.pt (``val/<name>``): ``train.metric``, or ``joint`` in a joint run."""
    return JOINT_METRIC if plan.joint else train.metric


def dataset_metric(metric: str, dataset: str) -> str:
    """The metric of ``dataset`` in a joint run: ``train.metric``, or the dataset's own when "auto"."""
    return default_metric(dataset) if metric == "auto" else metric


def rule_text(train, plan: RunPlan) -> str:
    """The best.pt rule of a joint run in words, e.g. ``mean(ravdess/ua, meld/weighted_f1)``."""
    terms = [f"{p.dataset}/{dataset_metric(train.metric, p.dataset)}" for p in plan.parts]
    if train.joint_metric == "mean":
        return f"mean({', '.join(terms)})"
    return next(t for t in terms if t.startswith(f"{train.joint_metric}/"))


def joint_value(train, plan: RunPlan, per_dataset: dict[str, dict[str, Any]]) -> float:
    """The value a joint run's best.pt maximises, from each dataset's metrics (``rule_text`` says which)."""
    if train.joint_metric != "mean":
        return float(per_dataset[train.joint_metric][dataset_metric(train.metric, train.joint_metric)])
    values = [float(per_dataset[p.dataset][dataset_metric(train.metric, p.dataset)]) for p in plan.parts]
    return sum(values) / len(values)


# --- class weights ----------------------------------------------------------------------------------------------


def _class_counts(manifest: Manifest, splits: tuple[str, ...]) -> list[int]:
    """Samples per unified class id over ``splits``, from the manifest's totals."""
    counts = [0] * len(UNIFIED)
    for split in splits:
        for name, n in manifest.splits[split].labels.items():
            if name in UNIFIED:  # the class-weight counts; a name outside the space has no weight to get
                counts[UNIFIED.index(name)] += n
    return counts


def mixture_class_distribution(plan: RunPlan) -> list[float]:
    """``Σ_d p_d · dist_d``: the unified-class distribution of the training mixture."""
    out = [0.0] * len(UNIFIED)
    for part in plan.parts:
        counts = part.train_class_counts
        total = sum(counts)
        for c, n in enumerate(counts):
            out[c] += part.weight * n / total if total else 0.0
    return out


def balanced_class_weights(counts: list[int]) -> list[float]:
    """sklearn's "balanced" weights n / (classes · count); a class with no samples gets weight 0."""
    total = sum(counts)
    present = sum(1 for c in counts if c > 0)
    return [total / (present * c) if c > 0 else 0.0 for c in counts]

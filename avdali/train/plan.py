"""Evaluation protocols: which shard splits a run trains, validates and tests on, and what they hold.

RAVDESS is split by actor into 5 folds (DATASETS.md); run ``fold`` k tests on fold k, validates on fold
k % 5 + 1 and trains on the other three, so no actor is seen in two roles. MELD keeps its own
train / dev / test. Explicit ``[data] train_splits/val_splits/test_splits`` replace the protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from avdali.errors import ConfigError
from avdali.labels import UNIFIED
from avdali.shardformat import MANIFEST_NAME
from avdali.shardformat.manifest import Manifest, read_manifest

RAVDESS_FOLDS = 5
DEFAULT_METRIC = {"ravdess": "ua", "meld": "weighted_f1"}
"""Headline metric per dataset: unweighted accuracy on balanced RAVDESS, weighted F1 on imbalanced MELD."""


@dataclass(frozen=True)
class SplitPlan:
    """The shard splits of each role in one run."""

    dataset: str
    """``ravdess`` or ``meld`` (from the manifest)."""
    train: tuple[str, ...]
    """Splits trained on."""
    val: tuple[str, ...]
    """Splits that pick the best checkpoint."""
    test: tuple[str, ...]
    """Splits evaluated once at the end (may be empty)."""
    train_class_counts: tuple[int, ...] = ()
    """Training samples per unified class id, from the manifest's totals (``optim.class_weights = "balanced"``)."""


def ravdess_fold_splits(fold: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(train, val, test) split names of RAVDESS fold ``fold``: test k, val k % 5 + 1, train the other three."""
    if not 1 <= fold <= RAVDESS_FOLDS:
        raise ConfigError(f"data.fold must be between 1 and {RAVDESS_FOLDS}, got {fold}")
    val = fold % RAVDESS_FOLDS + 1
    train = tuple(f"fold{k}" for k in range(1, RAVDESS_FOLDS + 1) if k not in (fold, val))
    return train, (f"fold{val}",), (f"fold{fold}",)


def plan_splits(shards: str | Path, fold: int, train=(), val=(), test=(), *, manifest: Manifest | None = None) -> SplitPlan:
    """The run's splits: explicit names where given, else the dataset's protocol; checked against the manifest
    (``manifest``, when the caller has read it already)."""
    manifest = manifest or read_manifest(Path(shards))
    if manifest.dataset == "ravdess":
        default = ravdess_fold_splits(fold)
    elif manifest.dataset == "meld":
        default = (("train",), ("dev",), ("test",))
    else:
        default = ((), (), ())
    plan = SplitPlan(
        dataset=manifest.dataset,
        train=tuple(train) or default[0],
        val=tuple(val) or default[1],
        test=tuple(test) or default[2],
    )
    for role in ("train", "val"):
        if not getattr(plan, role):
            raise ConfigError(f"data.{role}_splits: {shards} holds dataset {manifest.dataset!r} with no default protocol; name the splits")
    for role in ("train", "val", "test"):
        for split in getattr(plan, role):
            if split not in manifest.splits:
                raise ConfigError(
                    f"data.{role}_splits: split {split!r} is not in {shards}/manifest.json; "
                    f"it holds {', '.join(sorted(manifest.splits))}"
                )
            if manifest.splits[split].samples == 0 and role != "test":
                raise ConfigError(f"data.{role}_splits: split {split!r} of {shards} has no samples")
    return dataclasses.replace(plan, train_class_counts=tuple(_class_counts(manifest, plan.train)))


def check_shards_fit(data, manifest: Manifest | None = None) -> Manifest:
    """What only the shards' manifest can tell about a ``[data]`` section (a ``config.DataSection``), checked before
    a run writes anything: packing finished, the dataset is the one ``data.dataset`` names, the label space exists
    in it, and ``data.crop`` is not larger than the stored frames. ConfigError naming the key and the folder.
    ``manifest``: the shards' manifest when the caller has read it already."""
    shards = Path(data.shards)
    manifest = manifest or read_manifest(shards)
    where = shards / MANIFEST_NAME
    if not manifest.complete:
        raise ConfigError(f"{where}: packing is not complete; re-run `avdali shard` to finish it")
    if not manifest.shards:
        raise ConfigError(f"{where}: lists no shards (nothing was packed)")
    if data.dataset and data.dataset != manifest.dataset:
        raise ConfigError(
            f"data.dataset is {data.dataset!r} but {shards} holds {manifest.dataset} shards; "
            f"point data.shards at {data.dataset} shards"
        )
    if data.pipeline.label_space == "ravdess8" and manifest.dataset != "ravdess":
        raise ConfigError(f"data.label_space 'ravdess8' needs RAVDESS shards; {shards} holds {manifest.dataset}")
    size = manifest.options.get("size")  # read_manifest checked it is a valid --size when present
    if size is not None and data.pipeline.crop > size:
        raise ConfigError(
            f"data.crop {data.pipeline.crop} is larger than the {size}x{size} frames stored in {shards}; "
            f"use data.crop ≤ {size} or re-pack with --size ≥ {data.pipeline.crop}"
        )
    return manifest


def default_metric(dataset: str) -> str:
    """The validation metric of a dataset's literature (ua for unknown datasets)."""
    return DEFAULT_METRIC.get(dataset, "ua")


def _class_counts(manifest: Manifest, splits: tuple[str, ...]) -> list[int]:
    """Samples per unified class id over ``splits``, from the manifest's totals."""
    counts = [0] * len(UNIFIED)
    for split in splits:
        for name, n in manifest.splits[split].labels.items():
            if name in UNIFIED:  # the class-weight counts; a name outside the space has no weight to get
                counts[UNIFIED.index(name)] += n
    return counts


def balanced_class_weights(counts: list[int]) -> list[float]:
    """sklearn's "balanced" weights n / (classes · count); a class with no samples gets weight 0."""
    total = sum(counts)
    present = sum(1 for c in counts if c > 0)
    return [total / (present * c) if c > 0 else 0.0 for c in counts]

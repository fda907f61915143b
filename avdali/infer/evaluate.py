"""A checkpoint over shard splits (``avdali eval``, and every cell of ``avdali cross``): the splits it reads by default,
the checks before any clip is read, and one pass of the exact evaluation (``avdali.train.evaluate``) for every
modality asked for."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from avdali.data.build import build_loader
from avdali.errors import AvdaliError, ConfigError
from avdali.infer.load import LoadedModel
from avdali.shardformat.manifest import Manifest, read_manifest
from avdali.train.config import RunConfig
from avdali.train.evaluate import evaluate_modalities
from avdali.train.plan import ravdess_fold_splits


def check_label_space(loaded: LoadedModel, manifest: Manifest, shards: Path) -> None:
    """The native 8-class RAVDESS space exists only for RAVDESS shards (the unified space fits both datasets)."""
    if loaded.label_space == "ravdess8" and manifest.dataset != "ravdess":
        raise AvdaliError(
            f"{loaded.path}: trained in RAVDESS' native 8-class space ('ravdess8'), which {shards} "
            f"({manifest.dataset}) has no labels for; evaluate a checkpoint trained with data.label_space = \"unified\""
        )


def default_eval_splits(cfg: RunConfig, manifest: Manifest, shards: Path) -> tuple[str, ...]:
    """The test splits of the target shards: the checkpoint's explicit ``test_splits`` when the shards hold them,
    else RAVDESS' test fold of the checkpoint (``fold{data.fold}``) or MELD's ``test``."""
    explicit = tuple(cfg.data.test_splits)
    if explicit and all(s in manifest.splits for s in explicit):
        return explicit
    if manifest.dataset == "ravdess":
        return ravdess_fold_splits(cfg.data.fold)[2]
    if "test" in manifest.splits:
        return ("test",)
    raise AvdaliError(
        f"{shards}: no default test split for dataset {manifest.dataset!r}; pass --split "
        f"(it holds {', '.join(sorted(manifest.splits))})"
    )


@dataclass
class EvalResult:
    """What ``evaluate_checkpoint`` measured, and on what."""

    metrics: dict
    """``evaluate``'s dict for ``modality``: acc, ua, weighted_f1, macro_f1, loss, num_samples, confusion (ndarray)."""
    dataset: str
    """Dataset of the evaluated shards (``ravdess`` / ``meld``)."""
    shards: Path
    """The evaluated shard folder."""
    splits: tuple[str, ...]
    """The evaluated splits (read together as one set)."""
    loader: str
    """Loader used (``dali`` / ``torch``)."""
    seconds: float
    """Wall time of the pass over the shards (model + loader)."""
    modality: str = "both"
    """The modality ``metrics`` are for ("both" unless one was asked for)."""
    robustness: dict = field(default_factory=dict)
    """Modality → ``evaluate``'s dict, for every modality evaluated: each one the checkpoint can serve when no
    modality was asked for, else only the one asked for."""


def evaluate_checkpoint(
    loaded: LoadedModel,
    shards: str | Path,
    splits: Sequence[str] = (),
    *,
    loader: str | None = None,
    batch_size: int | None = None,
    num_threads: int | None = None,
    modality: str | None = None,
) -> EvalResult:
    """Run ``loaded`` over ``splits`` of ``shards`` (default: the dataset's test split) with the checkpoint's data settings.

    ``loader``, ``batch_size``, ``num_threads`` override the checkpoint's (they do not change what a sample is).
    ``modality``: evaluate with only that stream ("both", "audio", "video"; AvdaliError if the checkpoint cannot
    serve it); None = "both", and in the same pass every other modality it can serve (``EvalResult.robustness``).
    """
    if modality is not None:
        loaded.require_modality(modality)
    shards = Path(shards)
    manifest = read_manifest(shards)
    check_label_space(loaded, manifest, shards)
    splits = tuple(dict.fromkeys(splits)) or default_eval_splits(loaded.config, manifest, shards)
    missing = [s for s in splits if s not in manifest.splits]
    if missing:
        raise AvdaliError(
            f"{shards}: no split {', '.join(map(repr, missing))}; it holds {', '.join(sorted(manifest.splits))}"
        )
    overrides = {"shards": str(shards)}  # one folder, even for a joint checkpoint
    if loader is not None:
        overrides["loader"] = loader
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if num_threads is not None:
        overrides["num_threads"] = num_threads
    try:
        data_cfg = dataclasses.replace(loaded.config.data.pipeline, **overrides)
    except ConfigError as e:
        raise AvdaliError(str(e)) from None
    batches = build_loader(data_cfg, splits, train=False, device=loaded.device.type)
    batches.set_epoch(0)
    start = time.perf_counter()
    modalities = (modality,) if modality is not None else loaded.modalities
    per_modality = evaluate_modalities(
        loaded.model,
        batches,
        modalities,
        device=loaded.device,
        num_classes=len(loaded.class_names),
        amp_dtype=loaded.amp_dtype,
        channels_last=loaded.config.train.channels_last,
    )
    chosen = modality or "both"
    return EvalResult(per_modality[chosen], manifest.dataset, shards, splits, data_cfg.loader,
                      time.perf_counter() - start, modality=chosen, robustness=per_modality)

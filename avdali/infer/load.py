"""A trained checkpoint as a ready model: for ``avdali eval`` (over shards) and ``avdali predict`` (one clip).

The checkpoint carries its resolved run config (``checkpoint.py``), so the model and every data setting
(frames, crop, features, n_mels, audio window, video dtype) come from it; only the shards and splits change.
The model is built with ``backbone_weights = "none"`` before ``load_state_dict``: the trained weights replace
the backbone's anyway, and "imagenet" must not trigger a download (or fail offline) at inference time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from avdali.data.build import build_loader
from avdali.errors import AvdaliError, ConfigError
from avdali.labels import LABEL_SPACES
from avdali.models.avfusion import AVFusionModel, build_model, with_missing_embeddings
from avdali.shardformat.manifest import Manifest, read_manifest
from avdali.train import checkpoint as ckpt
from avdali.train.config import RunConfig
from avdali.train.config_toml import config_from_dict
from avdali.train.distributed import resolve_device
from avdali.train.evaluate import evaluate_modalities
from avdali.train.model_inputs import AMP_DTYPES
from avdali.train.modality import require_modality, servable_modalities
from avdali.train.plan import ravdess_fold_splits

@dataclass
class LoadedModel:
    """A checkpoint's model in eval mode on its device, with the config that describes its inputs."""

    model: AVFusionModel
    """The network with the checkpoint's weights, in eval mode."""
    config: RunConfig
    """The checkpoint's run config (``model.backbone_weights`` set to "none")."""
    class_names: tuple[str, ...]
    """Output class names in logit order (the checkpoint's label space)."""
    path: Path
    """The checkpoint file."""
    device: torch.device
    """Where the model lives."""
    epoch: int
    """Epochs trained when the checkpoint was written (-1 when not recorded)."""
    step: int
    """Optimizer steps taken when the checkpoint was written (-1 when not recorded)."""

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this checkpoint can serve (``avdali.train.modality.servable_modalities``)."""
        return servable_modalities(self.config.to_dict())

    def require_modality(self, modality: str) -> None:
        """AvdaliError naming the checkpoint unless it can serve ``modality`` (``modality.require_modality``)."""
        require_modality(self.path, self.config.to_dict(), modality)

    @property
    def label_space(self) -> str:
        """``unified`` or ``ravdess8``."""
        return self.config.data.pipeline.label_space

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """Autocast dtype for inference: the checkpoint's precision on CUDA, none on CPU (CPU autocast is slower there)."""
        return AMP_DTYPES.get(self.config.train.amp) if self.device.type == "cuda" else None


def load_model(path: str | Path, device: str = "auto", *, label_space: str | None = None) -> LoadedModel:
    """Read ``path`` and rebuild its model on ``device`` ("auto", "cpu", "cuda").

    ``label_space``: when given, the checkpoint must have been trained in it. AvdaliError (naming the file)
    for a missing or unreadable checkpoint, one without a model or config, or weights that do not fit
    the model its config describes.
    """
    path = Path(path)
    target = torch.device(resolve_device(device))
    state = ckpt.load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not isinstance(state.get("config"), dict):
        raise AvdaliError(f"{path}: not an avdali checkpoint (needs the 'model' weights and the run 'config')")
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as e:
        raise AvdaliError(f"{path}: the checkpoint's config is not valid here ({e})") from None
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone_weights="none"))
    class_names = LABEL_SPACES[cfg.data.pipeline.label_space]
    if label_space is not None and label_space != cfg.data.pipeline.label_space:
        raise AvdaliError(
            f"{path}: trained in label space {cfg.data.pipeline.label_space!r} ({len(class_names)} classes), "
            f"{label_space!r} ({len(LABEL_SPACES[label_space])} classes) asked for"
        )
    model = build_model(cfg.model)
    # Checkpoints written before the missing-stream embeddings existed lack them: their config has no modality
    # dropout, so they serve both streams only (``modality.servable_modalities``) and the stand-ins are never read.
    weights, _ = with_missing_embeddings(state["model"], model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = " ".join(str(e).strip().splitlines()[0].split()) if str(e).strip() else type(e).__name__
        raise AvdaliError(f"{path}: the weights do not fit the model its config describes ({first})") from None
    out_features = model.classifier[-1].out_features
    if out_features != len(class_names):
        raise AvdaliError(
            f"{path}: the model has {out_features} outputs but label space {cfg.data.pipeline.label_space!r} has {len(class_names)} classes"
        )
    model.to(target).eval()
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)  # as in training: evaluate feeds channels-last frames
    return LoadedModel(
        model=model,
        config=cfg,
        class_names=class_names,
        path=path,
        device=target,
        epoch=int(state.get("epoch", -1)),
        step=int(state.get("step", -1)),
    )


def newest_checkpoint(root: str | Path = "output") -> Path:
    """The most recently written ``best.pt`` anywhere under ``root`` (what ``avdali predict`` uses without
    ``--checkpoint``): ``output/<run>/best.pt`` of ``avdali train``, ``output/demo/runs/demo-<time>/best.pt`` of
    ``avdali demo``, ``OUT/fold<k>/best.pt`` of ``avdali cv``."""
    root = Path(root)
    found = [p for p in root.rglob(ckpt.BEST) if p.is_file()] if root.is_dir() else []
    if not found:
        raise AvdaliError(f"no checkpoint given and no {ckpt.BEST} found under {root}/; pass --checkpoint PATH")
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)))


# --- evaluation over shards ---------------------------------------------------------------------------


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
    import time

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

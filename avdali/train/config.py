"""RunConfig: the whole description of a training run, as nested dataclasses (the schema; ``config_toml`` reads
and writes it).

Sections are ``[data]`` (DataSection: which shards and splits, and the loader's DataConfig), ``[model]``
(ModelConfig), ``[optim]`` and ``[train]``. Each section checks its ranges and choices in ``__post_init__`` with the
shared checks (``avdali.config_checks``), one ConfigError naming the key and the valid choices. The resolved config
is written into the run folder (``config.toml``) and into every checkpoint (``RunConfig.to_dict``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avdali.config_checks import at_least, choice, in_unit, positive
from avdali.data.config import DataConfig
from avdali.errors import AvdaliError, ConfigError
from avdali.models.config import ModelConfig

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
METRIC_CHOICES = ("auto", "ua", "weighted_f1", "acc", "macro_f1")
CLASS_WEIGHT_CHOICES = ("none", "balanced")
NUM_FOLDS = 5
DATASET_CHOICES = ("", "ravdess", "meld")
JOINT_METRIC_CHOICES = ("mean", "ravdess", "meld")


@dataclass
class DataSection:
    """``[data]``: which shard folders and splits a run reads, and the loader settings it reads them with.

    A config file writes the section flat: the keys below beside every key of ``DataConfig`` (``flat_keys``), and
    ``to_dict`` gives it back the same way."""

    shards: str | list[str] = "shards/ravdess"
    """Folder with ``manifest.json`` and the shards' ``.tar`` + ``.idx`` files; or a list of such folders, one per
    dataset (``["shards/ravdess", "shards/meld"]``): a joint run (``avdali.train.plan``) in the unified space."""
    mix: list[float] = field(default_factory=list)
    """Joint runs: sampling weight of each ``shards`` folder, in its order (positive numbers, normalised to sum 1);
    empty = proportional to each folder's training clips (a plain union of the training splits)."""
    dataset: str = ""
    """Dataset the shards must hold: "ravdess" or "meld"; empty = whatever their manifest says. Checked against
    the manifest before a run writes anything (``plan.check_shards_fit``). Joint runs: the folders' datasets
    joined by "+" in ``shards`` order ("ravdess+meld")."""
    fold: int = 1
    """RAVDESS actor fold held out for testing (1-5); validation uses fold ``fold % 5 + 1``, training the other three.
    Ignored for MELD (train/dev/test)."""
    train_splits: list[str] = field(default_factory=list)
    """Shard splits to train on, e.g. ["fold2", "fold3"]; empty = the dataset's protocol (see ``fold``)."""
    val_splits: list[str] = field(default_factory=list)
    """Shard splits for validation (best checkpoint); empty = the dataset's protocol."""
    test_splits: list[str] = field(default_factory=list)
    """Shard splits evaluated once with the best checkpoint at the end; empty = the dataset's protocol."""
    pipeline: DataConfig = field(default_factory=DataConfig)
    """The loader settings: every other ``[data]`` key (loader, batch_size, frames, crop …). Its ``shards`` is the
    run's one folder (a joint run's first; ``loader_config`` gives each folder's)."""

    def __post_init__(self):
        if not 1 <= self.fold <= NUM_FOLDS:
            raise ConfigError(f"data.fold must be between 1 and {NUM_FOLDS}, got {self.fold}")
        _check_shard_list(self)
        first = self.shard_folders()[0]
        if self.pipeline.shards != first:
            self.pipeline = dataclasses.replace(self.pipeline, shards=first)

    @property
    def joint(self) -> bool:
        """Several shard folders: a joint run over their datasets (``avdali.train.plan``)."""
        return isinstance(self.shards, list)

    def shard_folders(self) -> list[str]:
        """The shard folders, one for a single-dataset run."""
        return list(self.shards) if isinstance(self.shards, list) else [self.shards]

    def loader_config(self, shards: str | None = None) -> DataConfig:
        """The DataConfig the loaders take, for ``shards`` (one folder; required for a joint run, whose
        ``data.shards`` is a list)."""
        if shards is not None:
            return dataclasses.replace(self.pipeline, shards=str(shards))
        if self.joint:
            raise AvdaliError("a joint run's loaders are built per shard folder (loader_config(shards=FOLDER))")
        return self.pipeline

    # -- the flat form of a config file ----------------------------------------------------------------------

    @staticmethod
    def flat_keys() -> list[str]:
        """The keys of ``[data]`` in file order: ``shards``, DataConfig's, then the split keys."""
        own = [f.name for f in dataclasses.fields(DataSection) if f.name not in ("shards", "pipeline")]
        return ["shards", *(f.name for f in dataclasses.fields(DataConfig) if f.name != "shards"), *own]

    @staticmethod
    def flat_hints() -> dict[str, Any]:
        """Each flat key's annotation (what ``config_toml`` type-checks a value against)."""
        return {**typing.get_type_hints(DataConfig), **typing.get_type_hints(DataSection)}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> DataSection:
        """The section from flat ``{key: value}`` (a config file's ``[data]``); DataConfig's checks run first."""
        pipeline_keys = {f.name for f in dataclasses.fields(DataConfig)} - {"shards"}
        pipeline = DataConfig(**{k: v for k, v in values.items() if k in pipeline_keys})
        return cls(pipeline=pipeline, **{k: v for k, v in values.items() if k not in pipeline_keys})

    def to_dict(self) -> dict:
        """The flat ``[data]`` of a config file, in ``flat_keys`` order, as plain values."""
        flat = _plain(dataclasses.asdict(self.pipeline))
        flat["shards"] = _plain(self.shards)
        flat.update({f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                     if f.name not in ("shards", "pipeline")})
        return flat


def _check_shard_list(data: DataSection) -> None:
    """The ``[data]`` rules of shard lists and ``data.mix``, one ConfigError each; a one-folder list becomes that
    folder (the same run as the string). What only the manifests can tell is the planner's (``plan.plan_run``)."""
    shards = data.shards
    if isinstance(shards, str) and shards.strip().startswith("["):
        raise ConfigError(f'data.shards {shards!r} looks like a list that is not TOML; quote each folder: '
                          f'data.shards=["shards/ravdess", "shards/meld"]')
    if isinstance(shards, (list, tuple)):
        if not shards:
            raise ConfigError("data.shards must name at least one shard folder, got []")
        if any(not isinstance(s, str) or not s.strip() for s in shards):
            raise ConfigError(f"data.shards must be folder names, got {list(shards)!r}")
        seen: dict[Path, str] = {}
        for folder in shards:
            key = Path(folder).expanduser().resolve()
            if key in seen:
                raise ConfigError(f"data.shards names the folder {folder!r} twice (as {seen[key]!r} too)")
            seen[key] = folder
        data.shards = list(shards) if len(shards) > 1 else shards[0]
    mix = data.mix
    if not isinstance(mix, (list, tuple)):
        raise ConfigError(f"data.mix must be a list of positive sampling weights, got {mix!r}")
    for w in mix:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ConfigError(f"data.mix must be positive numbers (one sampling weight per data.shards folder), got {list(mix)!r}")
    folders = data.shard_folders()
    if mix and len(mix) != len(folders):
        raise ConfigError(f"data.mix has {len(mix)} weight(s) but data.shards names {len(folders)} folder(s); give one weight per folder")
    if not data.joint:
        choice("data.dataset", data.dataset, DATASET_CHOICES)
        return
    if data.pipeline.label_space != "unified":
        raise ConfigError(f"data.label_space {data.pipeline.label_space!r}: a joint run (several data.shards) trains in the "
                          f"shared 'unified' space")
    for role in ("train", "val", "test"):
        if getattr(data, f"{role}_splits"):
            raise ConfigError(f"data.{role}_splits: a joint run uses each dataset's own splits (RAVDESS data.fold, "
                              f"MELD train/dev/test); leave it empty")
    if data.dataset:
        parts = data.dataset.split("+")
        if len(parts) != len(folders) or any(p not in DATASET_CHOICES or not p for p in parts):
            raise ConfigError(f"data.dataset {data.dataset!r}: a joint run names one dataset per data.shards folder, "
                              f"joined by '+' (e.g. 'ravdess+meld'), or leaves it empty")


@dataclass
class OptimConfig:
    """``[optim]``: AdamW with linear warmup and cosine decay, clipping and the loss."""

    lr: float = 3e-4
    """Peak learning rate (after warmup)."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay (applied to weight matrices and convolutions, not to biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW beta1, beta2, each in [0, 1)."""
    warmup_steps: int = 0
    """Linear warmup length in optimizer steps; 0 = use ``warmup_frac``."""
    warmup_frac: float = 0.05
    """Warmup length as a fraction of all training steps (when ``warmup_steps`` is 0), in [0, 1)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine decay (≤ lr)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 = no clipping."""
    label_smoothing: float = 0.1
    """Cross-entropy label smoothing in [0, 1)."""
    class_weights: str = "none"
    """Cross-entropy class weights: "none" or "balanced" (n / (classes · count), counted on the training splits)."""

    def __post_init__(self):
        self.betas = tuple(self.betas)
        positive("optim.lr", self.lr)
        at_least("optim.weight_decay", self.weight_decay, 0)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        at_least("optim.warmup_steps", self.warmup_steps, 0)
        in_unit("optim.warmup_frac", self.warmup_frac)
        at_least("optim.min_lr", self.min_lr, 0)
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr ({self.min_lr}) must be ≤ optim.lr ({self.lr})")
        at_least("optim.grad_clip", self.grad_clip, 0)
        in_unit("optim.label_smoothing", self.label_smoothing)
        choice("optim.class_weights", self.class_weights, CLASS_WEIGHT_CHOICES)


@dataclass
class TrainConfig:
    """``[train]``: the run itself: length, precision, compilation, logging, where it writes."""

    epochs: int = 30
    """Passes over the training splits."""
    device: str = "auto"
    """"auto" (CUDA when available, else CPU), "cpu" or "cuda" (one GPU per rank: cuda:LOCAL_RANK)."""
    amp: str = "auto"
    """Autocast precision: "bf16", "fp16" (with a GradScaler), "none"; "auto" = bf16 on CUDA, none on CPU."""
    compile: bool | str = "auto"
    """torch.compile the model: true, false or "auto" (on CUDA only; CPU compilation costs more than it saves on 2 cores)."""
    channels_last: bool = True
    """Run the frame CNN in channels-last memory format (faster convolutions on tensor cores)."""
    metric: str = "auto"
    """Validation metric that picks best.pt: "ua" (unweighted accuracy), "weighted_f1", "acc", "macro_f1";
    "auto" = ua for RAVDESS, weighted_f1 for MELD (in a joint run: each dataset's own, when "auto")."""
    joint_metric: str = "mean"
    """Joint runs: the rule that picks best.pt from the per-dataset validation metrics (each dataset's ``metric``):
    "mean" = their mean (RAVDESS UA and MELD weighted F1 by default), or a dataset name ("ravdess", "meld") = that
    dataset's alone. Logged as ``val/joint``; ignored by single-dataset runs."""
    seed: int = 0
    """Seed of model initialisation, data order and augmentation (each rank and epoch derive their own)."""
    log_every: int = 20
    """Optimizer steps between logged training metrics; the only steps that synchronise the device."""
    max_bad_steps: int = 10
    """Stop when this many steps in a row had a non-finite loss or gradient (those steps are skipped).
    Checked at logging steps, so up to ``log_every`` more skipped steps can pass before the stop."""
    test_at_end: bool = True
    """Evaluate best.pt on the test splits after the last epoch (logged as ``test/*``; also ``test/audio_only/*`` and
    ``test/video_only/*`` when modality dropout trained the model for them)."""
    drop_audio: float = 0.0
    """Modality dropout: probability that a training sample's audio is treated as absent (the model's learned
    "missing audio" embedding stands in), in [0, 1). > 0 lets the checkpoint serve video-only input."""
    drop_video: float = 0.0
    """Probability that a training sample's video is treated as absent, in [0, 1); never together with its audio
    (drop_audio + drop_video ≤ 1). > 0 lets the checkpoint serve audio-only input."""
    run_dir: str = ""
    """Run folder (config, checkpoints, TensorBoard events); empty = a new ``output/<name>-<time>`` folder."""
    name: str = "run"
    """Run name: the prefix of the default run folder (the config file's stem when loaded from a file)."""

    def __post_init__(self):
        at_least("train.epochs", self.epochs, 1)
        choice("train.device", self.device, DEVICE_CHOICES)
        choice("train.amp", self.amp, AMP_CHOICES)
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f'train.compile must be one of true, false, "auto"; got {self.compile!r}')
        choice("train.metric", self.metric, METRIC_CHOICES)
        choice("train.joint_metric", self.joint_metric, JOINT_METRIC_CHOICES)
        at_least("train.log_every", self.log_every, 1)
        at_least("train.max_bad_steps", self.max_bad_steps, 1)
        in_unit("train.drop_audio", self.drop_audio)
        in_unit("train.drop_video", self.drop_video)
        if self.drop_audio + self.drop_video > 1:
            raise ConfigError(
                f"train.drop_audio + train.drop_video must be ≤ 1 (one stream is dropped per sample at most), "
                f"got {self.drop_audio} + {self.drop_video}"
            )
        if not self.name or "/" in self.name:
            raise ConfigError(f"train.name must be a non-empty name without '/', got {self.name!r}")


@dataclass
class RunConfig:
    """Everything a run needs; written into the run folder and every checkpoint."""

    data: DataSection = field(default_factory=DataSection)
    """``[data]``: shards, loader, clip shape, augmentation, splits."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """``[model]``: AVFusionModel sizes (num_classes and audio_features are derived from ``[data]``)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """``[optim]``: optimizer, schedule and loss."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """``[train]``: run length, precision, logging and output folder."""

    def to_dict(self) -> dict:
        """Plain nested dict of primitives, ``[data]`` flat as in a file (what checkpoints store;
        ``config_toml.config_from_dict`` reads it back)."""
        return {"data": self.data.to_dict(), **{name: _plain(dataclasses.asdict(getattr(self, name)))
                                                 for name in ("model", "optim", "train")}}


SECTIONS: dict[str, type] = {"data": DataSection, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}
"""TOML section name → dataclass, in file order."""


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

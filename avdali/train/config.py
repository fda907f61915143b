"""RunConfig: the whole description of a training run, as nested dataclasses.

Precedence, written down here and nowhere else (``load_config``):

    dataclass defaults  <  TOML file  <  ``--set section.key=value`` overrides (CLI flags become overrides)

Sections are ``[data]`` (DataConfig + which splits), ``[model]`` (ModelConfig), ``[optim]`` and ``[train]``.
Every value is type-checked against its field's annotation before the section's own ``__post_init__``
checks ranges and choices, so every bad key or value is one ConfigError that names the key (and the
file or ``--set`` it came from) and the valid choices. The resolved config is written into the run folder
(``config.toml``, loadable again with ``--config``) and into every checkpoint (``RunConfig.to_dict``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from avdali.data.config import DataConfig
from avdali.errors import AvdaliError, ConfigError
from avdali.files import atomic_write_text
from avdali.labels import LABEL_SPACES
from avdali.models.config import ModelConfig

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
METRIC_CHOICES = ("auto", "ua", "weighted_f1", "acc", "macro_f1")
CLASS_WEIGHT_CHOICES = ("none", "balanced")
NUM_FOLDS = 5
DATASET_CHOICES = ("", "ravdess", "meld")
JOINT_METRIC_CHOICES = ("mean", "ravdess", "meld")


@dataclass
class DataSection(DataConfig):
    """``[data]``: the loader's DataConfig plus which splits of the shards to train, validate and test on."""

    shards: str | list[str] = "shards/ravdess"
    """Folder with ``manifest.json`` and the shards' ``.tar`` + ``.idx`` files; or a list of such folders, one per
    dataset (``["shards/ravdess", "shards/meld"]``): a joint run (``avdali.train.joint``) in the unified space."""
    mix: list[float] = field(default_factory=list)
    """Joint runs: sampling weight of each ``shards`` folder, in its order (positive numbers, normalised to sum 1);
    empty = proportional to each folder's training clips (a plain union of the training splits)."""
    dataset: str = ""
    """Dataset the shards must hold: "ravdess" or "meld"; empty = whatever their manifest says. Checked against
    the manifest before a run writes anything (``protocol.check_shards_fit``). Joint runs: the folders' datasets
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

    def __post_init__(self):
        parent_check = getattr(super(), "__post_init__", None)
        if parent_check is not None:
            parent_check()
        if not 1 <= self.fold <= NUM_FOLDS:
            raise ConfigError(f"data.fold must be between 1 and {NUM_FOLDS}, got {self.fold}")
        from avdali.train.joint import check_joint_data  # the joint rules live with the joint run

        check_joint_data(self, DATASET_CHOICES)

    @property
    def joint(self) -> bool:
        """Several shard folders: a joint run over their datasets (``avdali.train.joint``)."""
        return isinstance(self.shards, list)

    def shard_folders(self) -> list[str]:
        """The shard folders, one for a single-dataset run."""
        return list(self.shards) if isinstance(self.shards, list) else [self.shards]

    def loader_config(self, shards: str | None = None) -> DataConfig:
        """The plain DataConfig the loaders take (without the split fields), for ``shards`` (one folder; required
        for a joint run, whose ``data.shards`` is a list)."""
        names = {f.name for f in dataclasses.fields(DataConfig)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        if shards is not None:
            values["shards"] = str(shards)
        elif self.joint:
            raise AvdaliError("a joint run's loaders are built per shard folder (loader_config(shards=FOLDER))")
        return DataConfig(**values)


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
        _positive("optim.lr", self.lr)
        _at_least("optim.weight_decay", self.weight_decay, 0)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        _at_least("optim.warmup_steps", self.warmup_steps, 0)
        _in_unit("optim.warmup_frac", self.warmup_frac)
        _at_least("optim.min_lr", self.min_lr, 0)
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr ({self.min_lr}) must be ≤ optim.lr ({self.lr})")
        _at_least("optim.grad_clip", self.grad_clip, 0)
        _in_unit("optim.label_smoothing", self.label_smoothing)
        _choice("optim.class_weights", self.class_weights, CLASS_WEIGHT_CHOICES)


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
        _at_least("train.epochs", self.epochs, 1)
        _choice("train.device", self.device, DEVICE_CHOICES)
        _choice("train.amp", self.amp, AMP_CHOICES)
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f'train.compile must be one of true, false, "auto"; got {self.compile!r}')
        _choice("train.metric", self.metric, METRIC_CHOICES)
        _choice("train.joint_metric", self.joint_metric, JOINT_METRIC_CHOICES)
        _at_least("train.log_every", self.log_every, 1)
        _at_least("train.max_bad_steps", self.max_bad_steps, 1)
        _in_unit("train.drop_audio", self.drop_audio)
        _in_unit("train.drop_video", self.drop_video)
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
        """Plain nested dict of primitives (what checkpoints store; ``config_from_dict`` reads it back)."""
        return _plain(dataclasses.asdict(self))


SECTIONS: dict[str, type] = {"data": DataSection, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}
"""TOML section name → dataclass, in file order."""


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The one place of precedence: dataclass defaults < TOML file at ``path`` < ``overrides``.

    ``overrides`` are ``section.key=value`` strings; values are TOML literals (``3``, ``1e-3``, ``true``,
    ``[1, 2]``, ``"x"``); a value that is not a TOML literal is taken as a bare string (``data.loader=torch``).
    """
    values: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        values = read_toml(path)
        for section, keys in values.items():
            if isinstance(keys, dict):
                origins.update({f"{section}.{k}": str(path) for k in keys})
        if isinstance(values.get("train", {}), dict):
            values.setdefault("train", {}).setdefault("name", path.stem)
            origins.setdefault("train.name", str(path))
    for text in overrides:
        section, key, value = parse_override(text)
        values.setdefault(section, {})[key] = value
        origins[f"{section}.{key}"] = f"--set {text}"
    return config_from_dict(values, origins)


def read_toml(path: Path) -> dict:
    """Parse a TOML config file (ConfigError naming the file for a missing file or bad TOML)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"optim.lr=1e-3"`` → ``("optim", "lr", 0.001)`` (ConfigError for a malformed override)."""
    dotted, sep, raw = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not key or "." in key:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. optim.lr=1e-3")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        # Bare words (data.loader=torch) are meant as strings; quoting them in a shell is a nuisance.
        value = raw
    return section, key, value


def config_from_dict(values: dict, origins: dict[str, str] | None = None) -> RunConfig:
    """Build a RunConfig from nested ``{section: {key: value}}`` (a TOML file's, or ``RunConfig.to_dict``'s).

    Unknown sections and keys, wrong types and bad values raise ConfigError naming the key and where it came from.
    """
    origins = origins or {}
    for section in values:
        if section not in SECTIONS:
            raise ConfigError(f"{_where(origins, section)}unknown section [{section}]; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values[section], dict):
            raise ConfigError(f"{_where(origins, section)}[{section}] must be a table of key = value")
    built = {}
    for section, cls in SECTIONS.items():
        given = dict(values.get(section, {}))
        if section == "model":
            given = _derive_model_keys(given, built["data"], origins)
        built[section] = _build_section(section, cls, given, origins)
    return RunConfig(**built)


def _derive_model_keys(given: dict, data: DataSection, origins: dict[str, str]) -> dict:
    derived = {"num_classes": len(LABEL_SPACES[data.label_space]), "audio_features": data.feature_bins}
    for key, value in derived.items():
        if key in given and given[key] != value:
            raise ConfigError(
                f"{_where(origins, f'model.{key}')}model.{key} = {given[key]!r} contradicts [data] "
                f"(label_space {data.label_space!r}, feature_bins {data.feature_bins}) which gives {value}; leave it out"
            )
        given[key] = value
    return given


def _build_section(section: str, cls: type, given: dict, origins: dict[str, str]):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in given.items():
        dotted = f"{section}.{key}"
        if key not in names:
            raise ConfigError(f"{_where(origins, dotted)}unknown key {dotted}; valid keys of [{section}]: {', '.join(names)}")
        try:
            kwargs[key] = _coerce(dotted, value, hints[key])
        except ConfigError as e:
            raise ConfigError(f"{_where(origins, dotted)}{e}") from None
    try:
        return cls(**kwargs)
    except AvdaliError as e:
        # The section's own checks name the key; add which file or --set it came from.
        named = [k for k in kwargs if f"{section}.{k}" in str(e)]  # the key the message starts with, if several
        key = min(named, key=lambda k: str(e).index(f"{section}.{k}")) if named else None
        where = _where(origins, f"{section}.{key}") if key else ""
        raise ConfigError(f"{where}{e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{section}]: {e}") from None


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field annotation; return it converted (int → float, list → tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}; got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} must be a list of {len(args)} values, got {list(value)!r}")
            items = [_coerce(key, v, a) for v, a in zip(value, args)]
        else:
            items = [_coerce(key, v, args[0]) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def _type_name(hint: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _where(origins: dict[str, str], key: str) -> str:
    source = origins.get(key) or next((v for k, v in origins.items() if k.startswith(f"{key}.")), None)
    return f"{source}: " if source else ""


# --- writing -------------------------------------------------------------------------------------------


def config_to_toml(cfg: RunConfig) -> str:
    """The config as TOML text that ``load_config`` reads back to an equal RunConfig."""
    lines = [f"# resolved avdali run config (defaults < file < --set)"]
    for section, keys in cfg.to_dict().items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {toml_literal(value)}" for key, value in keys.items())
    return "\n".join(lines) + "\n"


def dump_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write ``config_to_toml(cfg)`` to ``path`` (atomically, like checkpoints)."""
    return atomic_write_text(path, config_to_toml(cfg))


def toml_literal(value: Any) -> str:
    """``value`` written as a TOML literal: what config.toml holds, and the one way to quote a ``--set`` value built
    in code (``f"train.run_dir={toml_literal(path)}"``): ``parse_override`` reads it back as ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


_TOML_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string, ASCII only: the bytes JSON would write for the same text (config.toml files written
    before this stay byte-identical), except where JSON is not TOML: DEL escaped, and characters beyond U+FFFF as
    one ``\\UXXXXXXXX`` (TOML refuses JSON's surrogate pairs)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _TOML_SHORT_ESCAPES:
            out.append(_TOML_SHORT_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        elif code > 0xFFFF:
            out.append(f"\\U{code:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --- checks used by the sections --------------------------------------------------------------------------


def _choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _number(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{key} must be a number, got {value!r}")


def _positive(key: str, value: Any) -> None:
    _number(key, value)
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")


def _at_least(key: str, value: Any, minimum: float) -> None:
    _number(key, value)
    if value < minimum:
        raise ConfigError(f"{key} must be ≥ {minimum}, got {value!r}")


def _in_unit(key: str, value: Any) -> None:
    _number(key, value)
    if not 0 <= value < 1:
        raise ConfigError(f"{key} must be in [0, 1), got {value!r}")

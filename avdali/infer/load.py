"""A trained checkpoint as a ready model: for ``avdali eval`` (over shards, ``evaluate.py``) and ``avdali predict``
(one clip, ``predict.py``).

The checkpoint carries its resolved run config (``avdali.train.checkpoint``), so the model and every data setting
(frames, crop, features, n_mels, audio window, video dtype) come from it; only the shards and splits change.
The model is built with ``backbone_weights = "none"`` before ``load_state_dict``: the trained weights replace
the backbone's anyway, and "imagenet" must not trigger a download (or fail offline) at inference time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from avdali.errors import AvdaliError, ConfigError
from avdali.labels import LABEL_SPACES
from avdali.models.avfusion import AVFusionModel, build_model, with_missing_embeddings
from avdali.train import checkpoint as ckpt
from avdali.train.config import RunConfig
from avdali.train.config_toml import config_from_dict
from avdali.train.distributed import resolve_device
from avdali.train.model_inputs import AMP_DTYPES
from avdali.train.modality import require_modality, servable_modalities


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

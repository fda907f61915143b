"""One video file → per-emotion probabilities, through exactly the preprocessing of training and evaluation.

The clip goes through the packer's ``transcode_clip`` (face crop, stored size and fps, 16 kHz mono audio)
with the pack options of the shards the checkpoint was trained on (their ``manifest.json``; the defaults
when those shards are not here), then through the loaders' evaluation transforms (``avdali.data.single``):
centre frame sampling, centre crop, centred audio window, log-mel/MFCC with the checkpoint's settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from avdali import native
from avdali.data.single import clip_batch
from avdali.errors import AvdaliError
from avdali.packing.transcode import ClipError, Transcoded, transcode_clip
from avdali.shardformat.manifest import read_manifest
from avdali.shardformat.options import PackOptions
from avdali.train.config import RunConfig
from avdali.train.inference import LoadedModel
from avdali.train.inputs import model_video, to_device


@dataclass
class Prediction:
    """The model's answer for one clip."""

    path: Path
    """The input video."""
    probabilities: dict[str, float]
    """Softmax probability per class name, in the label space's order (they sum to 1)."""
    label: str
    """The most probable class."""
    logits: list[float]
    """Raw model outputs in class order (what the probabilities are the softmax of)."""
    clip: dict = field(default_factory=dict)
    """What the packer made of the clip: frames, fps, duration_s, audio_samples, face (detected/centre)."""
    pack_options: dict = field(default_factory=dict)
    """The pack options used (size, fps, max_seconds …) and ``from``: the manifest they came from, or "defaults"."""

    def ranked(self) -> list[tuple[str, float]]:
        """(class, probability), most probable first."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**dataclasses.asdict(self), "path": str(self.path)}


def pack_options_for(cfg: RunConfig) -> tuple[PackOptions, str]:
    """The pack options recorded in the manifest of the checkpoint's training shards, and where they came from.

    Falls back to ``PackOptions()`` (and ``"defaults"``) when those shards are not readable here.
    """
    shards = Path(cfg.data.shard_folders()[0])  # a joint run's first folder
    try:
        recorded = read_manifest(shards).options
    except AvdaliError:
        return PackOptions(), "defaults"
    names = {f.name for f in dataclasses.fields(PackOptions)}
    try:
        return PackOptions(**{k: v for k, v in recorded.items() if k in names}), str(shards / "manifest.json")
    except (AvdaliError, TypeError):
        return PackOptions(), "defaults"


def transcode_input(path: str | Path, options: PackOptions) -> Transcoded:
    """``transcode_clip`` with user-facing errors: missing file, not a video, no audio stream, zero-length clip."""
    path = Path(path)
    if not path.exists():
        raise AvdaliError(f"{path}: file not found")
    if not path.is_file():
        raise AvdaliError(f"{path}: not a file")
    try:
        clip = transcode_clip(path, options)
    except ClipError as e:
        reason = str(e)
        if reason.startswith("corrupt video") or reason == "no video stream":
            reason = f"not a readable video ({reason})"
        elif reason == "zero-byte file":
            reason = "zero-length clip (empty file)"
        elif reason.startswith("no decodable"):
            reason = f"zero-length clip ({reason})"
        raise AvdaliError(f"{path}: {reason}") from None
    if clip.frames < 1 or clip.audio_samples < 1:
        raise AvdaliError(f"{path}: zero-length clip ({clip.frames} frames, {clip.audio_samples} audio samples)")
    return clip


@torch.no_grad()
def predict_clip(loaded: LoadedModel, path: str | Path, options: PackOptions | None = None) -> Prediction:
    """Probabilities of every class of ``loaded`` for the clip at ``path`` (any audio+video file PyAV reads).

    ``options``: pack options for the transcode (default: ``pack_options_for(loaded.config)``).
    """
    native.require((*native.PACK_PARTS, *native.loader_parts("torch")))  # transcode + the torch loader's features
    path = Path(path)
    origin = "given"
    if options is None:
        options, origin = pack_options_for(loaded.config)
    clip = transcode_input(path, options)
    batch = clip_batch(clip.webm, clip.flac, clip.frames, loaded.config.data.loader_config(loaded.config.data.shard_folders()[0]), source=str(path))
    logits = logits_of(loaded, batch)[0]
    probs = torch.softmax(logits, dim=0).tolist()
    names = loaded.class_names
    return Prediction(
        path=path,
        probabilities=dict(zip(names, probs)),
        label=names[int(logits.argmax())],
        logits=logits.tolist(),
        clip={"frames": clip.frames, "fps": clip.fps, "duration_s": clip.duration_s,
              "audio_samples": clip.audio_samples, "face": clip.face},
        pack_options={**options.content_options(), "from": origin},
    )


@torch.no_grad()
def logits_of(loaded: LoadedModel, batch) -> torch.Tensor:
    """float32 logits N,C of a loader Batch, computed as ``evaluate`` does (same normalisation and precision)."""
    batch = to_device(batch, loaded.device)
    video = model_video(batch.video, loaded.config.train.channels_last)
    with loaded.autocast():
        logits = loaded.model(video, batch.audio, batch.audio_len)
    return logits.float().cpu()

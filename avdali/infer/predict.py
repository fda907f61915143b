"""One video file → per-emotion probabilities, through exactly the preprocessing of training and evaluation.

The clip goes through the packer's ``transcode_clip`` (face crop, stored size and fps, 16 kHz mono audio)
with the pack options of the shards the checkpoint was trained on (their ``manifest.json``; the defaults
when those shards are not here), then through the loaders' evaluation transforms (``avdali.infer.clip_batch``):
centre frame sampling, centre crop, centred audio window, log-mel/MFCC with the checkpoint's settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from avdali.machine import libraries
from avdali.infer.clip_batch import clip_batch
from avdali.data.speakers import Speaker, Sums, add_clip
from avdali.data.decode import AudioFeatures
from avdali.errors import AvdaliError
from avdali.packing.transcode import ClipError, Transcoded, transcode_clip
from avdali.shardformat.manifest import read_manifest
from avdali.shardformat.options import PackOptions
from avdali.train.config import RunConfig
from avdali.infer.load import LoadedModel
from avdali.train.model_inputs import model_video, to_device
from avdali.train.evaluate import forward_logits
from avdali.train.modality import MODALITIES, unservable_reason


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
    modality: str = "both"
    """The streams the prediction used: "both", "audio" (audio only) or "video" (video only)."""
    missing: dict[str, str] = field(default_factory=dict)
    """Streams the clip lacks → why (``{"audio": "no audio stream"}``); the prediction did without them."""
    speaker_clips: int = 0
    """A ``data.speaker_norm`` checkpoint: the clips the speaker's statistics came from (this one included)."""

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


def transcode_input(path: str | Path, options: PackOptions, *, keep_partial: bool = False) -> Transcoded:
    """``transcode_clip`` with user-facing errors: missing file, not a video, no audio stream, zero-length clip.

    ``keep_partial`` (not taken from ``options``, whose value may come from a shard manifest): a clip with no audio
    stream, or no usable video, comes back with a placeholder for it; ``Transcoded.audio_present`` /
    ``video_present`` (and ``missing``: stream → reason) say which streams are real. A clip with neither is still
    an error."""
    path = Path(path)
    if not path.exists():
        raise AvdaliError(f"{path}: file not found")
    if not path.is_file():
        raise AvdaliError(f"{path}: not a file")
    try:
        clip = transcode_clip(path, dataclasses.replace(options, keep_partial=keep_partial))
    except ClipError as e:
        reason = str(e)
        if reason.startswith(("neither stream", "no audio or video")):
            reason = f"no usable audio or video ({reason})"
        elif reason.startswith("corrupt video") or reason == "no video stream":
            reason = f"not a readable video ({reason})"
        elif reason == "zero-byte file":
            reason = "zero-length clip (empty file)"
        elif reason.startswith("no decodable"):
            reason = f"zero-length clip ({reason})"
        raise AvdaliError(f"{path}: {reason}") from None
    if clip.frames < 1 or clip.audio_samples < 1:
        raise AvdaliError(f"{path}: zero-length clip ({clip.frames} frames, {clip.audio_samples} audio samples)")
    return clip


SPEAKER_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
"""Files ``--speaker-clips`` takes from a folder."""


def speaker_for(loaded: LoadedModel, path: Path, clip: Transcoded, speaker_clips: Path | None,
                options: PackOptions) -> tuple[Speaker | None, int]:
    """The statistics of the person in ``clip`` for a ``data.speaker_norm`` checkpoint (None otherwise) and the number
    of clips they come from: ``clip`` and every video in the folder ``speaker_clips`` (other clips of the same person,
    any emotion; a file of the clip's own name is the clip itself, counted once), face-cropped as the clip is."""
    if not loaded.config.data.pipeline.speaker_norm:
        return None, 0
    if speaker_clips is None:
        raise AvdaliError(f"{loaded.path} was trained with data.speaker_norm (each clip against the speaker's mean "
                          f"face and voice): give other clips of the same person with --speaker-clips DIR")
    if not speaker_clips.is_dir():
        raise AvdaliError(f"{speaker_clips}: --speaker-clips must be a folder of clips of the same person")
    others = sorted(p for p in speaker_clips.iterdir() if p.suffix.lower() in SPEAKER_EXTS and p.name != path.name)
    if not others:
        raise AvdaliError(f"{speaker_clips}: no video files ({', '.join(SPEAKER_EXTS)}) for the speaker's statistics")
    features = AudioFeatures(loaded.config.data.pipeline)
    sums = Sums()
    clips = [(path, clip)] + [(p, transcode_input(p, options, keep_partial=True)) for p in others]
    for where, c in clips:
        add_clip(sums, c.webm if c.video_present else None, c.frames, c.flac if c.audio_present else None, features,
                 str(where))
    return sums.speaker(), len(clips)


@torch.no_grad()
def predict_clip(loaded: LoadedModel, path: str | Path, options: PackOptions | None = None,
                 modality: str | None = None, speaker_clips: str | Path | None = None) -> Prediction:
    """Probabilities of every class of ``loaded`` for the clip at ``path`` (any file PyAV reads with audio, video or
    both).

    ``options``: pack options for the transcode (default: ``pack_options_for(loaded.config)``). ``modality``: the
    streams to use (``MODALITIES``); None = every stream the clip has. A clip without audio (no audio stream) or
    without usable video (no video stream, nothing decodable, an all-black picture) is predicted from the stream it
    has, when the checkpoint was trained to do without the other one (``train.drop_audio`` / ``drop_video`` > 0);
    otherwise, and for a ``modality`` the clip or the checkpoint cannot serve, one-line AvdaliError.
    ``speaker_clips``: a folder of other clips of the same person, needed by a ``data.speaker_norm`` checkpoint.
    """
    libraries.require((*libraries.PACK_PARTS, *libraries.loader_parts("torch")))  # transcode + the torch loader's features
    path = Path(path)
    if modality is not None and modality not in MODALITIES:
        raise AvdaliError(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    origin = "given"
    if options is None:
        options, origin = pack_options_for(loaded.config)
    clip = transcode_input(path, options, keep_partial=True)
    used = _modality_for(loaded, path, clip, modality)
    speaker, averaged = speaker_for(loaded, path, clip, None if speaker_clips is None else Path(speaker_clips), options)
    data = loaded.config.data.loader_config(loaded.config.data.shard_folders()[0])  # a joint run: same transforms
    batch = clip_batch(clip.webm, clip.flac, clip.frames, data, source=str(path),
                       audio_present=clip.audio_present, video_present=clip.video_present, speaker=speaker)
    logits = logits_of(loaded, batch, used)[0]
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
        modality=used,
        missing=dict(clip.missing),
        speaker_clips=averaged,
    )


def _modality_for(loaded: LoadedModel, path: Path, clip: Transcoded, asked: str | None) -> str:
    """The modality a prediction of ``clip`` uses: ``asked``, or what the clip's real streams allow; AvdaliError when
    the clip lacks a stream it needs or the checkpoint cannot do without the one the clip lacks."""
    has = {"audio": clip.audio_present, "video": clip.video_present}
    if asked is None:
        asked = "both" if all(has.values()) else ("audio" if has["audio"] else "video")
        lacking = next((s for s, real in has.items() if not real), None)
        if lacking is not None and asked not in loaded.modalities:
            raise AvdaliError(
                f"{path}: {clip.missing[lacking]}, and {loaded.path} cannot predict from the {asked} alone: "
                f"{unservable_reason(asked)}"
            )
        return asked
    needed = ("audio", "video") if asked == "both" else (asked,)
    for stream in needed:
        if not has[stream]:
            raise AvdaliError(f"{path}: --modality {asked} needs its {stream}, but the clip has {clip.missing[stream]}")
    loaded.require_modality(asked)
    return asked


@torch.no_grad()
def logits_of(loaded: LoadedModel, batch, modality: str = "both") -> torch.Tensor:
    """float32 logits N,C of a loader Batch, computed as ``evaluate`` does (same normalisation, precision and stream
    masks: the batch's own for "both", the removed stream marked absent for "audio" / "video")."""
    batch = to_device(batch, loaded.device)
    video = model_video(batch.video, loaded.config.train.channels_last)
    return forward_logits(loaded.model, batch, video, modality, loaded.device, loaded.amp_dtype).cpu()

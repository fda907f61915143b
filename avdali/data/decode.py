"""One clip's members → model-ready tensors on the CPU: the per-clip kernel of the torch loader, ``avdali predict``
and the speaker statistics (PyAV + soundfile + torchaudio; no DALI, no DataLoader).

Every rule it applies comes from the clip specification (``clipspec.py``); the DALI pipeline applies the same rules
in its graph, and the parity tests hold the two together.
"""

from __future__ import annotations

import io

import av
import cv2
import numpy as np
import soundfile as sf
import torch

from avdali import shardformat as fmt
from avdali.data import clipspec
from avdali.data.config import DataConfig
from avdali.data.crop import resized_crop
from avdali.data.features import FeatureFinish
from avdali.data.normalize import prepare_video
from avdali.errors import AvdaliError
from avdali.shardformat.members import decode_meta_i32

MAX_FRAMES = 1_000_000
"""More frames than any clip holds (a 24 h clip at 10 fps): a larger count in ``meta.i32`` is corruption."""

# BT.601 limited range ("TV") YUV → RGB, what libavcodec's VP9 streams carry and what DALI converts with
_Y_SCALE = 255.0 / 219.0
_C_SCALE = 255.0 / 224.0
_YUV_TO_RGB = np.array(
    [[0.0, 1.402], [-0.344136, -0.714136], [1.772, 0.0]], dtype=np.float32
) * np.float32(_C_SCALE)  # rows R,G,B; columns U,V


def yuv420_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """H,W,3 uint8 RGB of a yuv420p frame, converted the way DALI's decoder does (BT.601 limited range,
    bilinear chroma upsampling): swscale's default chroma handling differs by up to ~40 levels on sharp
    colour edges, which would break loader parity."""
    h, w = frame.height, frame.width
    if frame.format.name != "yuv420p" or h % 2 or w % 2:
        return frame.to_ndarray(format="rgb24")
    planes = frame.to_ndarray()  # (h * 3/2, w): Y, then U and V quarter planes
    y = (planes[:h].astype(np.float32) - 16.0) * np.float32(_Y_SCALE)
    chroma = planes[h:].reshape(2, h // 2, w // 2)
    u = cv2.resize(chroma[0], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) - 128.0
    v = cv2.resize(chroma[1], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) - 128.0
    rgb = np.empty((h, w, 3), dtype=np.float32)
    for c in range(3):
        rgb[..., c] = y + _YUV_TO_RGB[c, 0] * u + _YUV_TO_RGB[c, 1] * v
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def decode_frames(webm: bytes, indices: np.ndarray, source: str = "webm") -> np.ndarray:
    """The frames at ``indices`` (any order, repeats allowed) as T,H,W,3 uint8 RGB.

    Each frame is decoded once, in stream order, up to the last one needed, and only needed frames are converted to
    RGB. An index past the stored video (a ``meta.i32`` frame count larger than the webm holds) is an error naming
    ``source``: never a made-up frame.
    """
    wanted = set(int(i) for i in indices)
    last = max(wanted)
    picked: dict[int, np.ndarray] = {}
    decoded = 0
    try:
        with av.open(io.BytesIO(webm)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1  # one decoder thread per worker: workers already fill the cores
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                if i in wanted:
                    picked[i] = yuv420_to_rgb(frame)
                if i >= last:
                    break
    except (av.FFmpegError, IndexError) as e:
        raise AvdaliError(f"{source}: cannot decode the video ({e})") from None
    if decoded <= last:
        raise AvdaliError(f"{source}: frame {last} asked for, but the video holds {decoded} frames "
                          "(meta.i32's frame count is wrong: corrupt shard?)")
    return np.stack([picked[int(i)] for i in indices])


def read_wav(flac: bytes, source: str) -> np.ndarray:
    """The 16 kHz audio of a sample as mono float32 samples."""
    try:
        wav, rate = sf.read(io.BytesIO(flac), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile errors on corrupt data come as several types
        raise AvdaliError(f"{source}: cannot decode the audio ({describe(e)})") from None
    if rate != clipspec.SAMPLE_RATE:
        raise AvdaliError(f"{source}: audio at {rate} Hz, the shards must hold {clipspec.SAMPLE_RATE} Hz")
    return wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]


class AudioFeatures:
    """Log-mel (or MFCC) features of the clip specification, computed with torchaudio (built once, applied often:
    the mel filter bank costs more to build than to apply)."""

    def __init__(self, cfg: DataConfig):
        import torchaudio

        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=clipspec.SAMPLE_RATE,
            n_fft=clipspec.NFFT,
            win_length=clipspec.WINDOW,
            hop_length=clipspec.HOP,
            f_min=clipspec.F_MIN,
            f_max=clipspec.F_MAX,
            n_mels=cfg.n_mels,
            power=2.0,
            center=True,
            pad_mode="reflect",
            norm="slaney",
            mel_scale="slaney",
        )
        self.finish = FeatureFinish(cfg)
        self.frames = clipspec.feature_frames(clipspec.window_samples(cfg.audio_seconds))

    def raw(self, segment: torch.Tensor) -> torch.Tensor:
        """Features F,A of every frame, before any standardisation (log-mel in dB, or its MFCC)."""
        return self.finish.raw(self.mel(segment))

    def __call__(self, segment: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Features F,A (standardised per bin over the valid frames, or raw with ``data.speaker_norm``, whose device
        stage standardises them by the speaker), zero-padded to the window, and the valid frame count."""
        power = self.mel(segment)
        valid = power.shape[1]
        feats = self.finish(power[None], torch.tensor([valid]))[0]
        return torch.nn.functional.pad(feats, (0, self.frames - valid)), valid


def crop_video(video: torch.Tensor, cfg: DataConfig, rng: np.random.Generator | None):
    """T,C,H,W uint8 frames → the crop (training: ``clipspec.draw_crop_box`` + flip, ``crop.resized_crop``;
    evaluation: centre crop), and the window (top, left, h, w) in stored-frame pixels and whether it was flipped (the
    speaker stage crops the speaker's mean frame with them)."""
    from torchvision.transforms.v2 import functional as F

    height, width = video.shape[-2:]
    if rng is not None:
        box = clipspec.draw_crop_box(height, width, rng)
        flipped = bool(rng.random() < clipspec.FLIP_PROBABILITY)
        return resized_crop(video, box, flipped, cfg), box, flipped
    top, left, side = clipspec.center_crop_box(height, width, cfg.crop)
    video = video[..., top : top + side, left : left + side]
    if side != cfg.crop:
        video = F.resize(video, [cfg.crop, cfg.crop], antialias=True)
    return video.contiguous(), (top, left, side, side), False


def check_meta(data: bytes, cfg: DataConfig, source: str) -> tuple[int, int, int]:
    """Frame count, label (of ``cfg.label_space``) and the real-streams bitmask from ``meta.i32`` (format 1: both
    real), refused unless plausible: a corrupt value would otherwise pick wild frame indices or fail later in the
    loss without naming the sample."""
    try:
        meta = decode_meta_i32(data)
    except ValueError as e:
        raise AvdaliError(f"{source}: {e}") from None
    label = meta["label"] if cfg.label_space == "unified" else meta["native_label"]
    if not 1 <= meta["frames"] <= MAX_FRAMES:
        raise AvdaliError(f"{source}: meta.i32 says {meta['frames']} frames (corrupt shard?)")
    if not 0 <= label < cfg.num_classes:
        raise AvdaliError(f"{source}: label {label} is outside the {cfg.num_classes} classes of {cfg.label_space} (corrupt shard?)")
    return meta["frames"], label, meta["streams"]


def decode_clip(webm: bytes, flac: bytes, meta_i32: bytes, cfg: DataConfig, rng: np.random.Generator | None,
                source: str, features: AudioFeatures | None = None) -> dict:
    """One clip's members → tensors (video T,C,H,W, audio F,A, audio_len, label), its real streams (audio_present,
    video_present from ``meta.i32``) and its crop window (crop_box, flipped). ``rng`` (None: evaluation) draws the
    frames, the crop window, the flip and the audio window; ``source`` names the clip in errors; ``features`` may be
    reused across calls. A placeholder stream (``--keep-partial``) is decoded like a real one, as DALI does: the flags,
    not the data, tell the model it is missing."""
    frame_count, label, streams = check_meta(meta_i32, cfg, source)
    frames = decode_frames(webm, clipspec.draw_frame_indices(frame_count, cfg.frames, rng), source)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # T,C,H,W uint8, a view
    video, box, flipped = crop_video(video, cfg, rng)
    if cfg.video_dtype != "uint8":
        video = prepare_video(video).to(getattr(torch, cfg.video_dtype))

    wav = read_wav(flac, source)
    window = clipspec.window_samples(cfg.audio_seconds)
    start = clipspec.draw_audio_start(len(wav), window, rng)
    features = features or AudioFeatures(cfg)
    audio, audio_len = features(torch.from_numpy(np.ascontiguousarray(wav[start : start + window])))
    return dict(video=video, audio=audio, audio_len=audio_len, label=label,
                audio_present=bool(streams & fmt.STREAM_AUDIO), video_present=bool(streams & fmt.STREAM_VIDEO),
                crop_box=box, flipped=flipped)


def describe(error: BaseException) -> str:
    """An exception's text, or its type's name when it has none (or its text itself fails)."""
    try:
        return str(error) or type(error).__name__
    except Exception:  # noqa: BLE001 - soundfile's error text itself fails on some corrupt streams
        return type(error).__name__

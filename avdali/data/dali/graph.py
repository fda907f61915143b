"""The DALI graph: the webdataset reader, the video and audio sub-graphs that follow the clip specification
(``clipspec.py``, computed with ``GRAPH_OPS``), and the pipelines built from them (streaming, decode ceiling, the
cache's first pass and its transforms)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dmath

from avdali import shardformat as fmt
from avdali.data import clipspec
from avdali.data.config import DataConfig
from avdali.data.normalize import IMAGENET_MEAN, IMAGENET_STD


OUTPUTS = ("video", "audio", "audio_len", "label", "info", "streams", "crop_box", "flipped")
"""``av_pipeline``'s outputs, in order (the last two in training with augmentation only)."""


_VIDEO_DTYPES = {"uint8": types.UINT8, "float16": types.FLOAT16, "float32": types.FLOAT}


_INTERPS = {"nearest": types.INTERP_NN, "linear": types.INTERP_LINEAR}


GRAPH_OPS = SimpleNamespace(
    const=lambda values: types.Constant(np.asarray(values, dtype=np.int32)),
    floor=dmath.floor,
    minimum=dmath.min,
    maximum=dmath.max,
    sqrt=dmath.sqrt,
    exp=dmath.exp,
    to_int=lambda x: fn.cast(x, dtype=types.INT32),
    to_float=lambda x: fn.cast(x, dtype=types.FLOAT),
)
"""The clip specification's operations inside a DALI graph (``clipspec.NUMPY``'s twin)."""


def hann_window() -> list[float]:
    """The periodic Hann window torch/torchaudio use (DALI's default differs in the last digits)."""
    return torch.hann_window(clipspec.WINDOW, periodic=True, dtype=torch.float64).tolist()


def decode_plan(indices, num_frames, t: int):
    """How the decoder reads ``indices`` (``clipspec.frame_indices`` of a clip of ``num_frames``, non-decreasing)
    decoding each frame once: ``(frames to decode, positions)``, the sampled frames being
    ``sequence_rearrange(decoded, positions)``. When n ≥ T the indices are distinct and are decoded as they are; a
    shorter clip decodes its n frames once and repeats them by position."""
    i = GRAPH_OPS.const(np.arange(t))
    short = fn.cast(num_frames < t, dtype=types.INT32)  # 1 when the clip repeats frames
    frames = indices * (1 - short) + i * short
    frames = fn.slice(frames, fn.stack(0), fn.stack(dmath.min(num_frames, t)), axes=[0],
                      normalized_anchor=False, normalized_shape=False)
    return frames, i * (1 - short) + indices * short


def read_samples(*, paths: list[str], index_paths: list[str], train: bool, shard_id: int, num_shards: int,
                 shuffle_buffer: int):
    """The webdataset reader: (webm, flac, meta.i32) of this rank's range of ``paths``, shuffled through a buffer of
    ``shuffle_buffer`` samples in training."""
    return fn.readers.webdataset(
        paths=paths,
        index_paths=index_paths,
        ext=[fmt.VIDEO_EXT, fmt.AUDIO_EXT, fmt.NUMS_EXT],
        dtypes=[types.UINT8, types.UINT8, types.INT32],
        missing_component_behavior="error",
        name="Reader",
        shard_id=shard_id,
        num_shards=num_shards,
        pad_last_batch=True,
        stick_to_shard=True,  # a rank keeps its range: the valid/index bookkeeping relies on it
        random_shuffle=train,
        initial_fill=shuffle_buffer,
    )


def video_frames(webm, num_frames, t: int, u, *, gpu: bool, decode: str):
    """The clip specification's T frames (T,H,W,C uint8, in order) of each ``webm``: ``u`` (T draws, or None for
    evaluation) picks them, each is decoded once (``decode_plan``), on NVDEC (``decode="gpu"``) or the CPU threads;
    on the GPU when ``gpu``."""
    frames, positions = decode_plan(clipspec.frame_indices(num_frames, t, u, GRAPH_OPS), num_frames, t)
    video = fn.decoders.video(webm, device="mixed" if gpu and decode == "gpu" else "cpu", frames=frames,
                              pad_mode="none")  # F,H,W,C uint8; an index past the video raises (named by the loader)
    if gpu and decode == "cpu":
        video = video.gpu()  # hybrid: only the decode runs on the CPU threads; everything after it on the GPU
    return fn.sequence_rearrange(video, new_order=positions)


def crop_frames(video, cfg: DataConfig, frame_size: tuple[int, int], roi=None):
    """T,H,W,C frames → the clip specification's crop (``crop`` square, uint8 or ImageNet-normalised floats).

    ``roi``: None for evaluation's centre crop; for training, the (start, end) float (y, x) corners of the window to
    resample (``clipspec.crop_roi``: mirrored for a flipped clip), from ``training_window`` or fed by the cache."""
    crop = cfg.crop
    height, width = frame_size
    out_dtype = _VIDEO_DTYPES[cfg.video_dtype]
    norm = {}
    if cfg.video_dtype != "uint8":
        norm = dict(mean=[m * 255 for m in IMAGENET_MEAN], std=[s * 255 for s in IMAGENET_STD])
    # The layout stays T,H,W,C: the loader hands it over as an N,T,C,H,W view whose memory is channels-last.
    if roi is not None:
        video = fn.resize(video, roi_start=roi[0], roi_end=roi[1], roi_relative=False, size=[crop, crop],
                          interp_type=_INTERPS[cfg.crop_interp], antialias=clipspec.CROP_ANTIALIAS)
        if norm:
            video = fn.crop_mirror_normalize(video, dtype=out_dtype, output_layout="FHWC", **norm)
        return video
    _top, _left, side = clipspec.center_crop_box(height, width, crop)
    video = fn.crop_mirror_normalize(
        video,
        crop=[side, side],
        crop_pos_x=0.5,
        crop_pos_y=0.5,
        rounding="truncate",  # (W - side) // 2, as clipspec.center_crop_box
        dtype=types.UINT8 if side != crop else out_dtype,
        output_layout="FHWC",
        **({} if side != crop else norm),
    )
    if side != crop:  # frames smaller than the crop: scale the centred square up
        video = fn.resize(video, size=[crop, crop], antialias=True)
        video = fn.crop_mirror_normalize(video, dtype=out_dtype, output_layout="FHWC", **norm)
    return video


def training_window(frame_size: tuple[int, int]):
    """Training's crop window drawn in the graph: the resize's (start, end) corners, and the window (top, left, h, w;
    int32) and flip (bool) the loader hands on with the batch."""
    top, left, h, w = clipspec.random_crop_box(fn.random.uniform(range=[0.0, 1.0], shape=[4]), *frame_size, GRAPH_OPS)
    flip = fn.cast(fn.random.coin_flip(probability=clipspec.FLIP_PROBABILITY), dtype=types.INT32)
    start, end = clipspec.crop_roi(top, left, h, w, flip)
    roi = (fn.cast(fn.stack(*start), dtype=types.FLOAT), fn.cast(fn.stack(*end), dtype=types.FLOAT))
    return roi, fn.stack(top, left, h, w), fn.cast(flip, dtype=types.BOOL)


def eval_crop(frame_size: tuple[int, int], crop: int) -> tuple[int, int, int, int]:
    """Evaluation's crop window (top, left, h, w) of ``crop_frames`` (centre square, not flipped)."""
    top, left, side = clipspec.center_crop_box(*frame_size, crop)
    return top, left, side, side


def decode_audio(flac):
    """Each ``flac`` decoded whole: 16 kHz mono float32 samples."""
    audio, _rate = fn.decoders.audio(flac, sample_rate=clipspec.SAMPLE_RATE, downmix=True, dtype=types.FLOAT)
    return audio


def audio_window(flac, window: int, u=None):
    """Each ``flac`` decoded (16 kHz mono float) and cut to the clip specification's window (``u``: a uniform draw
    for training's offset, None for evaluation's centred one): the samples (CPU) and their count (int32)."""
    audio = decode_audio(flac)
    length = audio.shape(dtype=types.INT32)[0]
    start = clipspec.audio_start(length, window, u, GRAPH_OPS)
    valid = dmath.min(length - start, window)
    audio = fn.slice(audio, fn.stack(start), fn.stack(valid), axes=[0], normalized_anchor=False,
                     normalized_shape=False)
    return audio, valid


def mel_power(audio, cfg: DataConfig, *, gpu: bool):
    """Mel power A,F of audio windows (power spectrogram of centred reflect-padded frames through the Slaney mel
    filter bank); on the GPU when ``gpu``."""
    if gpu:
        audio = audio.gpu()
    spec = fn.spectrogram(audio, nfft=clipspec.NFFT, window_length=clipspec.WINDOW, window_step=clipspec.HOP,
                          window_fn=hann_window(), center_windows=True, reflect_padding=True, power=2)
    return fn.mel_filter_bank(spec, nfilter=cfg.n_mels, sample_rate=clipspec.SAMPLE_RATE, freq_low=clipspec.F_MIN,
                              freq_high=clipspec.F_MAX, mel_formula="slaney", normalize=True)


def pad_frames(feats, cfg: DataConfig):
    """Features (or mel power) zero-padded to the audio window's frame count."""
    return fn.pad(feats, axes=[1], shape=[clipspec.feature_frames(clipspec.window_samples(cfg.audio_seconds))],
                  fill_value=0.0)


def raw_features(audio, cfg: DataConfig, *, gpu: bool):
    """Features A,F of every frame of some audio, before any standardisation: the mel power in dB (floored at
    ``DB_FLOOR``), or its MFCC."""
    feats = fn.to_decibels(mel_power(audio, cfg, gpu=gpu), multiplier=10.0, reference=1.0, cutoff_db=clipspec.DB_FLOOR)
    if cfg.features == "mfcc":
        feats = fn.mfcc(feats, n_mfcc=cfg.n_mfcc, dct_type=2, normalize=True, axis=0)
    return feats


def audio_features(audio, cfg: DataConfig, *, gpu: bool):
    """Features A,F of audio windows (``raw_features`` standardised per bin over their frames, or raw with
    ``data.speaker_norm``, whose stage standardises them), zero-padded to the window's frame count.
    ``features.FeatureFinish`` is the torch twin of the steps after ``mel_power``."""
    feats = raw_features(audio, cfg, gpu=gpu)
    if not cfg.speaker_norm:  # per clip and bin over time, before padding, so the padding does not skew it
        feats = fn.normalize(feats, axes=[1], epsilon=clipspec.NORM_EPS)
    return pad_frames(feats, cfg)


@pipeline_def(enable_conditionals=False)
def av_pipeline(
    *,
    paths: list[str],
    index_paths: list[str],
    cfg: DataConfig,
    device: str,
    train: bool,
    shard_id: int,
    num_shards: int,
    frame_size: tuple[int, int],
    info_len: int,
    decode: str = "cpu",
    host_crop: bool = False,
):
    """Reader → video frames (N,T,H,W,C) + audio features (N,F,A) + audio_len + label + source_info + streams
    (the real-streams bitmask of ``meta.i32``; a format-1 sample's shorter vector reads as both real), and in
    training (augmentation on) crop_box + flipped.

    ``device``: ``"cpu"`` or ``"gpu"``; ``decode`` (``device="gpu"`` only): ``"cpu"`` decodes on the CPU threads with
    the frames moved to the GPU at once, ``"gpu"`` on NVDEC; ``frame_size``: (height, width) of the stored frames.
    ``host_crop``: training's crop is left to the loader (``crop.py``): in training with augmentation the video comes
    out uncropped (T,H,W,C of the stored size) and there is no crop_box or flipped.
    """
    gpu = device == "gpu"
    jitter = train and cfg.augment
    webm, flac, meta = read_samples(paths=paths, index_paths=index_paths, train=train, shard_id=shard_id,
                                    num_shards=num_shards, shuffle_buffer=cfg.shuffle_buffer)
    info = fn.pad(fn.get_property(webm, key="source_info"), axes=[0], shape=[info_len], fill_value=0)
    u_frames = fn.random.uniform(range=[0.0, 1.0], shape=[cfg.frames]) if jitter else None
    video = video_frames(webm, meta[0], cfg.frames, u_frames, gpu=gpu, decode=decode)
    window = ()
    if not (jitter and host_crop):
        roi, window = (None, ()) if not jitter else (lambda r, *w: (r, w))(*training_window(frame_size))
        video = crop_frames(video, cfg, frame_size, roi)
    audio, valid = audio_window(flac, clipspec.window_samples(cfg.audio_seconds),
                                fn.random.uniform(range=[0.0, 1.0]) if jitter else None)
    audio_len = fn.cast(1 + valid // clipspec.HOP, dtype=types.INT64)
    label = fn.cast(meta[1] if cfg.label_space == "unified" else meta[2], dtype=types.INT64)
    return (video, audio_features(audio, cfg, gpu=gpu), audio_len, label, info, meta_streams(meta), *window)


@pipeline_def(enable_conditionals=False)
def decode_all_pipeline(*, paths: list[str], index_paths: list[str], info_len: int, features: DataConfig | None = None):
    """Every frame and the whole audio track of every sample of ``paths``, in stored order (the cache's first pass):
    frames (F,H,W,C uint8), audio (16 kHz mono float32, or with ``features`` its ``raw_features`` A,F for that
    config), the track's sample count, meta.i32, source_info."""
    webm, flac, meta = read_samples(paths=paths, index_paths=index_paths, train=False, shard_id=0, num_shards=1,
                                    shuffle_buffer=1)
    audio = decode_audio(flac)
    samples = audio.shape(dtype=types.INT64)
    if features is not None:
        audio = raw_features(audio, features, gpu=False)
    info = fn.pad(fn.get_property(webm, key="source_info"), axes=[0], shape=[info_len], fill_value=0)
    return fn.decoders.video(webm), audio, samples, meta, info


@pipeline_def(enable_conditionals=False)
def cached_clip_pipeline(*, cfg: DataConfig, gpu: bool, inputs_on_gpu: bool, jitter: bool,
                         frame_size: tuple[int, int]):
    """The decoded-frame cache's transforms: the streaming graph's ``crop_frames`` and ``audio_features`` on inputs
    the cache feeds (``feed_cached``): each clip's T frames, its audio window and, in training, its crop window's
    corners. Outputs video and audio features; on the GPU when ``gpu``. (A cache training on a CPU needs no
    pipeline: ``cache.py``.)"""
    place = "gpu" if inputs_on_gpu else "cpu"
    # no_copy: DALI reads the cache's buffers in place; the loader keeps each batch's alive until it is taken
    frames = fn.external_source(name="frames", device=place, layout="FHWC", dtype=types.UINT8, no_copy=True)
    audio = fn.external_source(name="audio", device=place, dtype=types.FLOAT, no_copy=True)
    if gpu and not inputs_on_gpu:
        frames = frames.gpu()
    roi = None
    if jitter:  # the window's corners, drawn on the host by the same clipspec formulas
        roi = (fn.external_source(name="roi_start", device="cpu", dtype=types.FLOAT),
               fn.external_source(name="roi_end", device="cpu", dtype=types.FLOAT))
    return crop_frames(frames, cfg, frame_size, roi), audio_features(audio, cfg, gpu=gpu and not inputs_on_gpu)


def meta_streams(meta):
    """``streams`` of ``meta.i32`` in the graph, per sample: a format-1 vector (4 values, no ``streams``) is padded
    with ``STREAMS_ALL`` first, so shards of both formats read alike, even mixed in one batch."""
    index = fmt.META_FIELDS.index("streams")
    return fn.pad(meta, axes=[0], shape=[len(fmt.META_FIELDS)], fill_value=fmt.STREAMS_ALL)[index]


@pipeline_def
def decode_only_pipeline(*, paths: list[str], index_paths: list[str], frames: int, jitter: bool):
    """DALI's CPU video decoder alone on the frames the training loaders decode (reader → ``decoders.video`` of
    ``decode_plan``'s frames, not put in order): the decode ceiling ``avdali bench loader`` compares the loaders
    with."""
    webm, meta = fn.readers.webdataset(
        paths=paths, index_paths=index_paths,
        ext=[fmt.VIDEO_EXT, fmt.NUMS_EXT], dtypes=[types.UINT8, types.INT32], missing_component_behavior="error",
    )
    u = fn.random.uniform(range=[0.0, 1.0], shape=[frames]) if jitter else None
    picks, _positions = decode_plan(clipspec.frame_indices(meta[0], frames, u, GRAPH_OPS), meta[0], frames)
    return fn.decoders.video(webm, frames=picks, pad_mode="none")

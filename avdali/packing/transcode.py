"""One source clip → the bytes of one sample: a VP9 webm face crop and a 16 kHz mono FLAC.

``transcode_clip`` is a pure top-level function so the packer's worker processes can call it per
clip (the only process-wide state is the cached Haar cascade). It decodes the source once (video
and audio packets in one demux pass), keeps frames evenly by timestamp to reach the target fps,
crops a smoothed face box, encodes, then decodes its own output once to prove it is readable:
DALI cannot drop a bad sample at training time (DALI.md), so every clip is checked here.

With ``keep_partial`` a clip that lacks one stream becomes a sample anyway: the missing stream is replaced by
a placeholder of the clip's length and ``Transcoded.streams`` says which streams are real. The audio is missing
when the file has no audio stream or it decodes to no sample. The video is "not usable" when the file has no
video stream, when its stream fails to decode ("corrupt video": the audio is then read in a second pass) or decodes
to no frame, or when every kept frame is black (no luma value above
``BLACK_LUMA``; checked only under ``keep_partial`` and only until the first frame that is not black, so it
costs one ``max`` per clip in practice). A face-less picture is not missing: it gets the centre crop, as
always. A clip with neither stream is still a ``ClipError``.

No torch and no DALI here (ARCHITECTURE.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avdali.errors import AvdaliError
from avdali.packing import face as facemod
from avdali.packing.encode import (
    ClipError,
    black_webm,
    count_flac_samples,
    count_webm_frames,
    encode_flac,
    encode_webm,
    one_line,
    plane,
)
from avdali.shardformat import AUDIO_RATE, STREAM_AUDIO, STREAM_VIDEO, STREAMS_ALL
from avdali.shardformat.options import PackOptions

DETECT_EVERY = 8
"""Run the Haar detector on every 8th kept frame (~2 per second at 15 fps, 7 per RAVDESS clip):
faces in these datasets move slowly, the track is interpolated in between, and each detection
costs ~5 ms (an idle core, 320x180), ~20 ms on a loaded or grainy frame."""
BLACK_LUMA = 32
"""A frame whose brightest luma sample is at most this is black (limited-range black is 16; codec noise and a
dark fade stay below 32, the darkest visible face is far above). Every kept frame black = no usable video."""
EPS = 1e-3
"""Slack when mapping a timestamp to a stored-frame slot, in frames: timestamps are rounded to the
container's time base, so a frame due exactly on a slot boundary can land a hair before it."""


@dataclass
class Transcoded:
    """The encoded sample of one clip and what the sample's json says about it."""

    webm: bytes
    """VP9 in WebM, ``size`` x ``size`` yuv420p, at ``fps``, bit-exact for the same input."""
    flac: bytes
    """Mono 16 kHz 16-bit FLAC."""
    frames: int
    """Number of frames in the webm, counted by decoding it back."""
    fps: float
    """Stored frame rate: ``options.fps``, or the source's rate when that is lower (frames are never invented)."""
    audio_samples: int
    """Number of 16 kHz samples in the flac."""
    duration_s: float
    """Stored video duration, ``frames / fps`` (at most ``options.max_seconds``)."""
    face: str
    """``detected`` (crop follows the face track) or ``centre`` (no face found: centre square)."""
    face_box: list[int] | None
    """Median crop ``[x, y, side]`` in source pixels (None for the centre crop)."""
    source: dict = field(default_factory=dict)
    """The source's width, height, fps, frames (approx), duration_s, video_codec, audio_codec, audio_rate, channels."""
    detect_s: float = 0.0
    """Seconds spent in face detection (for benchmarks; not stored in shards)."""
    streams: int = STREAMS_ALL
    """Bitmask of real streams (``shardformat.STREAM_AUDIO`` | ``STREAM_VIDEO``); less only under ``keep_partial``."""
    missing: dict[str, str] = field(default_factory=dict)
    """``audio``/``video`` → why that stream is a placeholder (``no audio stream``, ``black video`` …); empty when whole."""

    @property
    def audio_present(self) -> bool:
        return bool(self.streams & STREAM_AUDIO)

    @property
    def video_present(self) -> bool:
        return bool(self.streams & STREAM_VIDEO)


def _source_info(container, video, audio) -> dict:
    """What the source holds; a missing stream (``keep_partial``) leaves its fields None."""
    vctx = video.codec_context if video is not None else None
    actx = audio.codec_context if audio is not None else None
    rate = (video.average_rate or video.guessed_rate) if video is not None else None
    duration = None
    if video is not None and video.duration is not None and video.time_base is not None:
        duration = float(video.duration * video.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    fps = float(rate) if rate else None
    frames = (video.frames if video is not None else None) or (round(duration * fps) if duration and fps else None)
    return {
        "width": vctx.width if vctx else None,
        "height": vctx.height if vctx else None,
        "fps": round(fps, 3) if fps else None,
        "frames": frames,
        "duration_s": round(duration, 3) if duration is not None else None,
        "video_codec": vctx.name if vctx else None,
        "audio_codec": actx.name if actx else None,
        "audio_rate": actx.sample_rate if actx else None,
        "channels": actx.channels if actx else None,
    }


def _stored_rate(source_rate: Fraction | None, target_fps: float) -> Fraction:
    """The target rate, unless the source is slower: then its own rate (never more frames than the source)."""
    target = Fraction(target_fps).limit_denominator(1001)
    if source_rate and source_rate < target:
        return Fraction(source_rate)  # exact (e.g. 30000/1001), so every source frame gets its own slot
    return target


def _yuv420(frame: av.VideoFrame) -> av.VideoFrame:
    """The frame as yuv420p with even sides (what plane-wise cropping needs); free for H.264 sources."""
    even_w, even_h = frame.width // 2 * 2, frame.height // 2 * 2
    if frame.format.name == "yuv420p" and (even_w, even_h) == (frame.width, frame.height):
        return frame
    return frame.reformat(width=even_w, height=even_h, format="yuv420p")


@dataclass
class _Decoded:
    """What one demux pass over the source yields."""

    frames: list[av.VideoFrame]
    """Kept frames (yuv420p, source size), at most ``max_seconds * fps``."""
    detections: dict[int, tuple[float, float, float] | None]
    """Kept-frame index → largest face ``(cx, cy, side)`` in source pixels, for the frames examined."""
    audio: np.ndarray
    """Mono int16 samples at 16 kHz, capped at ``max_seconds``."""
    detect_s: float
    """Seconds spent in face detection."""
    missing: dict[str, str] = field(default_factory=dict)
    """``keep_partial``: stream → why it is not usable (its field above is then empty)."""


def _is_black(frame: av.VideoFrame) -> bool:
    return int(plane(frame, 0, frame.height, frame.width).max()) <= BLACK_LUMA


def _decode_source(
    container, video, audio, rate: Fraction, options: PackOptions, find_face: facemod.FaceFinder
) -> _Decoded:
    """One demux pass over the source's streams; ``video`` or ``audio`` may be None (``keep_partial``)."""
    fps = float(rate)
    max_frames = max(1, math.floor(options.max_seconds * fps + EPS))
    max_samples = round(options.max_seconds * AUDIO_RATE)
    source_fps = float((video.average_rate or video.guessed_rate or fps) if video is not None else fps)
    start = float(video.start_time * video.time_base) if video is not None and video.start_time is not None else 0.0
    check_black = options.keep_partial
    resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)

    kept: list[av.VideoFrame] = []
    detections: dict[int, tuple[float, float, float] | None] = {}
    chunks: list[np.ndarray] = []
    num_samples, decoded_frames, last_slot = 0, 0, -1
    video_done, audio_done = video is None, audio is None
    detect_s = 0.0

    def take_audio(frames) -> None:
        nonlocal num_samples
        for out in frames:
            chunk = out.to_ndarray().reshape(-1)
            chunks.append(chunk)
            num_samples += len(chunk)

    # One pass over interleaved packets; demux ends with empty packets that flush each decoder.
    kind = "file"  # what was being read when FFmpeg failed, for the error message
    try:
        for packet in container.demux(*(s for s in (video, audio) if s is not None)):
            if packet.stream.type == "video":
                if video_done:
                    continue
                kind = "video"
                for frame in packet.decode():
                    t = frame.time - start if frame.time is not None else decoded_frames / source_fps
                    decoded_frames += 1
                    # Slot = the stored frame this source time falls in; keep the first frame of each slot.
                    slot = math.floor(max(t, 0.0) * fps + EPS)
                    if slot >= max_frames:
                        video_done = True
                        break
                    if slot <= last_slot:
                        continue
                    last_slot = slot
                    frame = _yuv420(frame)
                    if check_black and not _is_black(frame):
                        check_black = False  # one bright frame: the picture is usable
                    if len(kept) % DETECT_EVERY == 0:
                        tic = time.perf_counter()
                        detections[len(kept)] = find_face(plane(frame, 0, frame.height, frame.width))
                        detect_s += time.perf_counter() - tic
                    kept.append(frame)
            else:
                if audio_done:
                    continue
                kind = "audio"
                for frame in packet.decode():
                    take_audio(resampler.resample(frame))
                audio_done = num_samples >= max_samples
            kind = "file"
            if video_done and audio_done:
                break
        if not audio_done:
            take_audio(resampler.resample(None))  # the resampler holds back a few samples until flushed
    except av.FFmpegError as e:
        raise ClipError(f"corrupt {kind}: {one_line(e)}") from None
    missing = {}
    if video is None:
        missing["video"] = "no video stream"
    elif not kept:
        missing["video"] = "no decodable video frames"
    elif check_black:  # still set: no kept frame was brighter than BLACK_LUMA
        missing["video"] = "black video"
        kept, detections = [], {}
    if audio is None:
        missing["audio"] = "no audio stream"
    elif not num_samples:
        missing["audio"] = "no decodable audio"
    if not options.keep_partial and missing:  # cannot be "black": that is only looked for under keep_partial
        raise ClipError(missing.get("video") or missing["audio"])
    if len(missing) == 2:
        raise ClipError(f"neither stream is usable ({missing['video']}, {missing['audio']})")
    samples = np.concatenate(chunks)[:max_samples].astype(np.int16, copy=False) if num_samples else np.zeros(0, np.int16)
    return _Decoded(kept, detections, samples, detect_s, missing)


def transcode_clip(
    path: Path, options: PackOptions, *, detector: facemod.FaceDetector | None = None, threads: int = 1
) -> Transcoded:
    """Decode ``path`` (any PyAV-readable audio+video file), crop the face, encode VP9 webm + FLAC, verify both.

    ``detector`` replaces the Haar face detector (tests); ``threads`` is per codec, 1 by default
    because the packer runs one process per core. Raises ClipError (one line) for a clip that
    cannot become a sample. With ``options.keep_partial`` a clip lacking one stream is returned with a placeholder
    for it (module doc) and ``streams``/``missing`` saying so; one lacking both is still a ClipError.
    """
    path = Path(path)
    if options.size % 2:
        raise AvdaliError(f"--size must be even (yuv420p halves it for colour), got {options.size}")
    try:
        if path.stat().st_size == 0:
            raise ClipError("zero-byte file")
    except OSError as e:
        raise ClipError(f"cannot read: {e.strerror or e}") from None
    try:
        container = av.open(str(path), "r", metadata_errors="ignore")
    except av.FFmpegError as e:
        raise ClipError(f"corrupt video: {one_line(e)}") from None
    with container:
        if not options.keep_partial:
            if not container.streams.video:
                raise ClipError("no video stream")
            if not container.streams.audio:
                raise ClipError("no audio stream")
        elif not container.streams.video and not container.streams.audio:
            raise ClipError("no audio or video stream")
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is not None:
            video.codec_context.thread_count = threads
        source = _source_info(container, video, audio)
        rate = _stored_rate((video.average_rate or video.guessed_rate) if video is not None else None, options.fps)
        try:
            decoded = _decode_source(container, video, audio, rate, options, facemod.FaceFinder(detector))
        except ClipError as e:
            if not (options.keep_partial and audio is not None and str(e).startswith("corrupt video")):
                raise
            decoded = None  # a video track that fails to decode: the audio may still be good
            broken_video = str(e)
    if decoded is None:
        decoded = _decode_audio_only(path, options, broken_video)
    if decoded.missing:
        return _partial_clip(decoded, rate, options, source, threads)

    webm, frames, face, face_box = _face_webm(decoded, rate, options, threads)
    return _transcoded(webm, encode_flac(decoded.audio), frames, float(rate), face, face_box, source, decoded,
                       STREAMS_ALL)


def _face_webm(decoded: _Decoded, rate: Fraction, options: PackOptions, threads: int) -> tuple[bytes, int, str, list | None]:
    """The decoded frames as the stored VP9 face crop: (webm, frames in it, face "detected"/"centre", face box)."""
    width, height = decoded.frames[0].width, decoded.frames[0].height
    boxes = facemod.smooth_track(decoded.detections, len(decoded.frames), width, height)
    face = "detected" if boxes else "centre"
    face_box = facemod.median_box(boxes) if boxes else None
    boxes = boxes or [facemod.centre_box(width, height)] * len(decoded.frames)
    try:
        webm = encode_webm(decoded.frames, boxes, rate, options.size, threads, options.keyint)
    except av.FFmpegError as e:
        raise ClipError(f"VP9 encode failed: {one_line(e)}") from None
    return webm, count_webm_frames(webm, options.size, expected=len(decoded.frames)), face, face_box


def _transcoded(webm: bytes, flac: bytes, frames: int, fps: float, face: str, face_box, source: dict,
                decoded: _Decoded, streams: int) -> Transcoded:
    return Transcoded(
        webm=webm,
        flac=flac,
        frames=frames,
        fps=fps,
        audio_samples=count_flac_samples(flac),
        duration_s=round(frames / fps, 3),
        face=face,
        face_box=face_box,
        source=source,
        detect_s=decoded.detect_s,
        streams=streams,
        missing=dict(decoded.missing),
    )


def _decode_audio_only(path: Path, options: PackOptions, video_reason: str) -> _Decoded:
    """``keep_partial``, after the video track failed to decode: a second pass over the audio alone."""
    try:
        with av.open(str(path), "r", metadata_errors="ignore") as container:
            decoded = _decode_source(container, None, container.streams.audio[0], _stored_rate(None, options.fps),
                                     options, facemod.FaceFinder(None))
    except av.FFmpegError as e:
        raise ClipError(f"corrupt audio: {one_line(e)}") from None
    except ClipError as e:  # the audio is broken too
        audio_reason = "no decodable audio" if str(e).startswith("neither") else str(e)
        raise ClipError(f"neither stream is usable ({video_reason}, {audio_reason})") from None
    decoded.missing["video"] = video_reason
    return decoded


def _partial_clip(decoded: _Decoded, rate: Fraction, options: PackOptions, source: dict, threads: int) -> Transcoded:
    """``keep_partial``: the sample of a clip with one usable stream; the other is a placeholder as long as it."""
    if "video" in decoded.missing:
        rate = _stored_rate(None, options.fps)  # no source rate to respect: the pack's
        fps = float(rate)
        max_frames = max(1, math.floor(options.max_seconds * fps + EPS))
        # enough frames to cover the audio (a reader's window never runs past the picture), at least one
        count = min(max_frames, max(1, math.ceil(len(decoded.audio) * fps / AUDIO_RATE - EPS)))
        try:
            webm = black_webm(count, rate, options.size, threads, options.keyint)
        except av.FFmpegError as e:
            raise ClipError(f"VP9 encode failed: {one_line(e)}") from None
        frames = count_webm_frames(webm, options.size, expected=count)
        flac, face, face_box = encode_flac(decoded.audio), "none", None
        streams = STREAM_AUDIO
    else:
        webm, frames, face, face_box = _face_webm(decoded, rate, options, threads)
        fps = float(rate)
        # silence as long as the stored picture
        flac = encode_flac(np.zeros(max(1, round(frames * AUDIO_RATE / fps)), np.int16))
        streams = STREAM_VIDEO
    return _transcoded(webm, flac, frames, fps, face, face_box, source, decoded, streams)

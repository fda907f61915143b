"""One source clip → the bytes of one sample: a VP9 webm face crop and a 16 kHz mono FLAC.

``transcode_clip`` is a pure top-level function so the packer's worker processes can call it per
clip (the only process-wide state is the cached Haar cascade). It decodes the source once (video
and audio packets in one demux pass), keeps frames evenly by timestamp to reach the target fps,
crops a smoothed face box, encodes, then decodes its own output once to prove it is readable:
DALI cannot drop a bad sample at training time (DALI.md), so every clip is checked here.

No torch and no DALI here (ARCHITECTURE.md).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf

from avdali.errors import AvdaliError
from avdali.packing import face as facemod
from avdali.shardformat import AUDIO_RATE
from avdali.shardformat.options import PackOptions

VIDEO_CODEC = "libvpx-vp9"
GOP_FRAMES = 150
"""Longest keyframe interval of the stored VP9, in stored frames: one keyframe per clip at the
defaults (10 s x 15 fps). Measured with DALI's CPU ``decoders.video`` fetching T = 8 or 16 evenly
spaced frames (README section of the packer): shorter GOPs made no clip faster to read, because the
sampled frames lie closer together than any useful GOP and a keyframe costs more to decode than the
delta frames it spares, while they grew files by +10 % (GOP 30), +35-40 % (15) and +135-145 % (5).
ffmpeg's default would be 12."""
VP9_OPTIONS = {
    "deadline": "realtime",  # with cpu-used 8: the fastest libvpx mode, ~5x "good" (MEDIA.md figure)
    "cpu-used": "8",
    "row-mt": "1",
    "crf": "30",  # constant quality: small faces at 128 px need few bits; bit_rate 0 selects pure CRF
    "lag-in-frames": "0",  # no look-ahead: no hidden alt-ref frames, one packet per shown frame
}
DETECT_EVERY = 8
"""Run the Haar detector on every 8th kept frame (~2 per second at 15 fps, 7 per RAVDESS clip):
faces in these datasets move slowly, the track is interpolated in between, and each detection
costs ~5 ms (an idle core, 320x180), ~20 ms on a loaded or grainy frame."""
EPS = 1e-3
"""Slack when mapping a timestamp to a stored-frame slot, in frames: timestamps are rounded to the
container's time base, so a frame due exactly on a slot boundary can land a hair before it."""


class ClipError(Exception):
    """A source clip that cannot become a sample; the message is one line (the packer records it)."""


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


def _one_line(err: BaseException) -> str:
    """An error as one line; FFmpeg errors without their errno and file name (the packer names the file)."""
    if isinstance(err, av.FFmpegError) and err.strerror:
        return " ".join(err.strerror.split())
    return " ".join(str(err).split()) or type(err).__name__


def _source_info(container, video, audio) -> dict:
    vctx, actx = video.codec_context, audio.codec_context
    rate = video.average_rate or video.guessed_rate
    duration = None
    if video.duration is not None and video.time_base is not None:
        duration = float(video.duration * video.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    fps = float(rate) if rate else None
    frames = video.frames or (round(duration * fps) if duration and fps else None)
    return {
        "width": vctx.width,
        "height": vctx.height,
        "fps": round(fps, 3) if fps else None,
        "frames": frames,
        "duration_s": round(duration, 3) if duration is not None else None,
        "video_codec": vctx.name,
        "audio_codec": actx.name,
        "audio_rate": actx.sample_rate,
        "channels": actx.channels,
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


def _plane(frame: av.VideoFrame, index: int, height: int, width: int) -> np.ndarray:
    """A plane as a (height, width) uint8 view on the frame's buffer (no copy; rows may be padded)."""
    plane = frame.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height, :width]


def _crop_resize(frame: av.VideoFrame, box: facemod.CropBox, size: int) -> av.VideoFrame:
    """Crop the box out of each yuv420p plane and resize to ``size``: no RGB round trip, only the crop is scaled."""
    x, y, s = box.x, box.y, box.side
    half = size // 2
    luma = _plane(frame, 0, frame.height, frame.width)[y : y + s, x : x + s]
    u = _plane(frame, 1, frame.height // 2, frame.width // 2)[y // 2 : (y + s) // 2, x // 2 : (x + s) // 2]
    v = _plane(frame, 2, frame.height // 2, frame.width // 2)[y // 2 : (y + s) // 2, x // 2 : (x + s) // 2]
    # INTER_AREA averages when shrinking (no aliasing); when the crop is smaller than size it acts bilinear.
    out = np.empty(size * size * 3 // 2, np.uint8)  # PyAV's yuv420p array: Y, then U, then V, back to back
    luma_size, chroma_size = size * size, half * half
    out[:luma_size] = cv2.resize(luma, (size, size), interpolation=cv2.INTER_AREA).ravel()
    out[luma_size : luma_size + chroma_size] = cv2.resize(u, (half, half), interpolation=cv2.INTER_AREA).ravel()
    out[luma_size + chroma_size :] = cv2.resize(v, (half, half), interpolation=cv2.INTER_AREA).ravel()
    return av.VideoFrame.from_ndarray(out.reshape(size * 3 // 2, size), format="yuv420p")


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


def _decode_source(
    container, video, audio, rate: Fraction, options: PackOptions, find_face: facemod.FaceFinder
) -> _Decoded:
    fps = float(rate)
    max_frames = max(1, math.floor(options.max_seconds * fps + EPS))
    max_samples = round(options.max_seconds * AUDIO_RATE)
    source_fps = float(video.average_rate or video.guessed_rate or fps)
    start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
    resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)

    kept: list[av.VideoFrame] = []
    detections: dict[int, tuple[float, float, float] | None] = {}
    chunks: list[np.ndarray] = []
    num_samples, decoded_frames, last_slot = 0, 0, -1
    video_done = audio_done = False
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
        for packet in container.demux(video, audio):
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
                    if len(kept) % DETECT_EVERY == 0:
                        tic = time.perf_counter()
                        detections[len(kept)] = find_face(_plane(frame, 0, frame.height, frame.width))
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
        raise ClipError(f"corrupt {kind}: {_one_line(e)}") from None
    if not kept:
        raise ClipError("no decodable video frames")
    if not num_samples:
        raise ClipError("no decodable audio")
    samples = np.concatenate(chunks)[:max_samples].astype(np.int16, copy=False)
    return _Decoded(kept, detections, samples, detect_s)


def _encode_webm(
    frames: list[av.VideoFrame], boxes: list[facemod.CropBox], rate: Fraction, size: int, threads: int,
    keyint: int = 0,
) -> bytes:
    buffer = io.BytesIO()
    # +bitexact keeps the muxer from writing run-specific fields: same input, same bytes (MEDIA.md).
    with av.open(buffer, "w", format="webm", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(VIDEO_CODEC, rate=rate, options=dict(VP9_OPTIONS))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = keyint or GOP_FRAMES
        stream.codec_context.bit_rate = 0
        stream.codec_context.thread_count = threads
        time_base = 1 / rate
        for index, (frame, box) in enumerate(zip(frames, boxes)):
            small = _crop_resize(frame, box, size)
            small.pts, small.time_base = index, time_base
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def _encode_flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, AUDIO_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _count_webm_frames(webm: bytes, size: int, expected: int) -> int:
    """Decode the webm back (what DALI will do at training time) and count its frames."""
    count = 0
    try:
        with av.open(io.BytesIO(webm), "r") as container:
            for frame in container.decode(video=0):
                if (frame.width, frame.height) != (size, size):
                    raise ClipError(
                        f"re-encoded video does not decode: frame {frame.width}x{frame.height}, not {size}x{size}"
                    )
                count += 1
    except av.FFmpegError as e:
        raise ClipError(f"re-encoded video does not decode: {_one_line(e)}") from None
    if count != expected:  # a dropped frame would shift every later frame's time
        raise ClipError(f"re-encoded video does not decode: {count} of {expected} frames")
    return count


def _count_flac_samples(flac: bytes) -> int:
    try:
        info = sf.info(io.BytesIO(flac))
        data, rate = sf.read(io.BytesIO(flac), dtype="int16")
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ClipError(f"re-encoded audio does not decode: {_one_line(e)}") from None
    if rate != AUDIO_RATE or data.ndim != 1 or info.channels != 1 or not len(data):
        raise ClipError(f"re-encoded audio does not decode: {info.channels} ch at {rate} Hz, {len(data)} samples")
    return len(data)


def transcode_clip(
    path: Path, options: PackOptions, *, detector: facemod.FaceDetector | None = None, threads: int = 1
) -> Transcoded:
    """Decode ``path`` (any PyAV-readable audio+video file), crop the face, encode VP9 webm + FLAC, verify both.

    ``detector`` replaces the Haar face detector (tests); ``threads`` is per codec, 1 by default
    because the packer runs one process per core. Raises ClipError (one line) for a clip that
    cannot become a sample.
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
        raise ClipError(f"corrupt video: {_one_line(e)}") from None
    with container:
        if not container.streams.video:
            raise ClipError("no video stream")
        if not container.streams.audio:
            raise ClipError("no audio stream")
        video, audio = container.streams.video[0], container.streams.audio[0]
        video.codec_context.thread_count = threads
        source = _source_info(container, video, audio)
        rate = _stored_rate(video.average_rate or video.guessed_rate, options.fps)
        decoded = _decode_source(container, video, audio, rate, options, facemod.FaceFinder(detector))

    width, height = decoded.frames[0].width, decoded.frames[0].height
    boxes = facemod.smooth_track(decoded.detections, len(decoded.frames), width, height)
    face = "detected" if boxes else "centre"
    face_box = facemod.median_box(boxes) if boxes else None
    boxes = boxes or [facemod.centre_box(width, height)] * len(decoded.frames)
    try:
        webm = _encode_webm(decoded.frames, boxes, rate, options.size, threads, options.keyint)
    except av.FFmpegError as e:
        raise ClipError(f"VP9 encode failed: {_one_line(e)}") from None
    flac = _encode_flac(decoded.audio)
    frames = _count_webm_frames(webm, options.size, expected=len(decoded.frames))
    fps = float(rate)
    return Transcoded(
        webm=webm,
        flac=flac,
        frames=frames,
        fps=fps,
        audio_samples=_count_flac_samples(flac),
        duration_s=round(frames / fps, 3),
        face=face,
        face_box=face_box,
        source=source,
        detect_s=decoded.detect_s,
    )

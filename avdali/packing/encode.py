"""What a clip is stored as, and the proof that it reads back: VP9 webm frames (the face crop, a black placeholder)
and 16 kHz FLAC, encoded with settings that give the same bytes for the same input, then decoded once and counted.

No torch and no DALI here (ARCHITECTURE.md).
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import cv2
import numpy as np
import soundfile as sf

from avdali.packing import face as facemod
from avdali.shardformat import AUDIO_RATE

VIDEO_CODEC = "libvpx-vp9"
GOP_FRAMES = 150
"""Longest keyframe interval of the stored VP9, in stored frames: one keyframe per clip at the
defaults (10 s x 15 fps). Measured with DALI's CPU ``decoders.video`` fetching T = 8 or 16 evenly
spaced frames (docs/shard-format.md): shorter GOPs made no clip faster to read, because the
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
BLACK_Y, BLACK_UV = 16, 128
"""Limited-range (BT.601 "TV") black: what the placeholder webm holds and both loaders decode to RGB 0."""


class ClipError(Exception):
    """A source clip that cannot become a sample; the message is one line (the packer records it)."""


def one_line(err: BaseException) -> str:
    """An error as one line; FFmpeg errors without their errno and file name (the packer names the file)."""
    if isinstance(err, av.FFmpegError) and err.strerror:
        return " ".join(err.strerror.split())
    return " ".join(str(err).split()) or type(err).__name__


def plane(frame: av.VideoFrame, index: int, height: int, width: int) -> np.ndarray:
    """A plane as a (height, width) uint8 view on the frame's buffer (no copy; rows may be padded)."""
    buffer = frame.planes[index]
    return np.frombuffer(buffer, np.uint8).reshape(-1, buffer.line_size)[:height, :width]


def crop_resize(frame: av.VideoFrame, box: facemod.CropBox, size: int) -> av.VideoFrame:
    """Crop the box out of each yuv420p plane and resize to ``size``: no RGB round trip, only the crop is scaled."""
    x, y, s = box.x, box.y, box.side
    half = size // 2
    luma = plane(frame, 0, frame.height, frame.width)[y : y + s, x : x + s]
    u = plane(frame, 1, frame.height // 2, frame.width // 2)[y // 2 : (y + s) // 2, x // 2 : (x + s) // 2]
    v = plane(frame, 2, frame.height // 2, frame.width // 2)[y // 2 : (y + s) // 2, x // 2 : (x + s) // 2]
    # INTER_AREA averages when shrinking (no aliasing); when the crop is smaller than size it acts bilinear.
    out = np.empty(size * size * 3 // 2, np.uint8)  # PyAV's yuv420p array: Y, then U, then V, back to back
    luma_size, chroma_size = size * size, half * half
    out[:luma_size] = cv2.resize(luma, (size, size), interpolation=cv2.INTER_AREA).ravel()
    out[luma_size : luma_size + chroma_size] = cv2.resize(u, (half, half), interpolation=cv2.INTER_AREA).ravel()
    out[luma_size + chroma_size :] = cv2.resize(v, (half, half), interpolation=cv2.INTER_AREA).ravel()
    return av.VideoFrame.from_ndarray(out.reshape(size * 3 // 2, size), format="yuv420p")


def encode_webm(
    frames: list[av.VideoFrame], boxes: list[facemod.CropBox], rate: Fraction, size: int, threads: int,
    keyint: int = 0,
) -> bytes:
    return mux_webm((crop_resize(frame, box, size) for frame, box in zip(frames, boxes)), rate, size, threads, keyint)


def black_webm(count: int, rate: Fraction, size: int, threads: int, keyint: int = 0) -> bytes:
    """The placeholder of a missing picture: ``count`` black ``size``² frames, encoded like a real clip."""
    planes = np.full(size * size * 3 // 2, BLACK_UV, np.uint8)
    planes[: size * size] = BLACK_Y
    black = planes.reshape(size * 3 // 2, size)
    return mux_webm(
        (av.VideoFrame.from_ndarray(black, format="yuv420p") for _ in range(count)), rate, size, threads, keyint
    )


def mux_webm(small_frames, rate: Fraction, size: int, threads: int, keyint: int = 0) -> bytes:
    """``size``² yuv420p frames → VP9 webm bytes (the stored settings; same frames, same bytes)."""
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
        for index, small in enumerate(small_frames):
            small.pts, small.time_base = index, time_base
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def encode_flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, AUDIO_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def count_webm_frames(webm: bytes, size: int, expected: int) -> int:
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
        raise ClipError(f"re-encoded video does not decode: {one_line(e)}") from None
    if count != expected:  # a dropped frame would shift every later frame's time
        raise ClipError(f"re-encoded video does not decode: {count} of {expected} frames")
    return count


def count_flac_samples(flac: bytes) -> int:
    try:
        info = sf.info(io.BytesIO(flac))
        data, rate = sf.read(io.BytesIO(flac), dtype="int16")
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ClipError(f"re-encoded audio does not decode: {one_line(e)}") from None
    if rate != AUDIO_RATE or data.ndim != 1 or info.channels != 1 or not len(data):
        raise ClipError(f"re-encoded audio does not decode: {info.channels} ch at {rate} Hz, {len(data)} samples")
    return len(data)

"""Writing the raw datasets' file formats with PyAV and soundfile, byte-identical run to run.

mp4: H.264 (libx264, fast preset, one thread) + AAC stereo, muxed with ``fflags=+bitexact`` so the
container carries no run-specific fields (MEDIA.md). wav: 16-bit PCM via soundfile.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf

X264_OPTIONS = {"preset": "ultrafast", "crf": "23", "threads": "1"}
"""Fixed encoder settings: ``ultrafast`` keeps synthesis fast; one thread keeps the bytes fixed and
leaves parallelism to the worker processes."""
AUDIO_CHUNK = 1024  # AAC frame size: feeding whole frames keeps the encoder's framing fixed
_BITEXACT = {"fflags": "+bitexact"}


def write_mp4(
    path: Path,
    frames: Iterable[np.ndarray] | None,
    *,
    fps: Fraction,
    size: tuple[int, int],
    audio: np.ndarray | None,
    audio_rate: int = 48_000,
) -> None:
    """Encode BGR uint8 frames of ``size`` (w, h) and, unless ``audio`` is None, a mono float32 track
    (written as stereo AAC) into one mp4. With ``audio=None`` the file has no audio stream at all, with
    ``frames=None`` no video stream (an audio-only mp4)."""
    width, height = size
    with av.open(str(path), "w", format="mp4", options=_BITEXACT) as out:
        video = None
        if frames is not None:
            video = out.add_stream("libx264", rate=fps, options=X264_OPTIONS)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.codec_context.time_base = 1 / fps
        sound = None
        if audio is not None:
            sound = out.add_stream("aac", rate=audio_rate, layout="stereo")
            sound.codec_context.time_base = Fraction(1, audio_rate)
        for i, bgr in enumerate(frames or ()):
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
            frame.pts = i
            frame.time_base = video.codec_context.time_base
            out.mux(video.encode(frame))
        if video is not None:
            out.mux(video.encode(None))
        if sound is not None:
            stereo = np.ascontiguousarray(np.stack([audio, audio]).astype(np.float32))
            for start in range(0, stereo.shape[1], AUDIO_CHUNK):
                chunk = np.ascontiguousarray(stereo[:, start : start + AUDIO_CHUNK])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate = audio_rate
                frame.pts = start
                frame.time_base = Fraction(1, audio_rate)
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))


def copy_video_only(src: Path, dst: Path) -> None:
    """Remux the video stream of ``src`` into ``dst`` without its audio (RAVDESS' ``02-…`` twins:
    the same picture, no sound). No re-encoding, so both files hold identical video packets."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options=_BITEXACT) as out:
        in_video = inp.streams.video[0]
        out_video = out.add_stream_from_template(in_video)
        for packet in inp.demux(in_video):
            if packet.dts is None:  # the demuxer's end-of-stream flush packet
                continue
            packet.stream = out_video
            out.mux(packet)


def write_wav(path: Path, audio: np.ndarray, rate: int = 48_000) -> None:
    """Mono 16-bit PCM wav (RAVDESS' ``03-…`` audio-only files)."""
    sf.write(str(path), audio, rate, subtype="PCM_16", format="WAV")

"""Probes for the native libraries avdali loads, run in the parent process before any worker starts.

A wheel that installs but does not load (torchaudio 2.11.1 beside torch 2.11.0: ``undefined symbol`` from
``libtorchaudio.so`` at the first MelSpectrogram) would otherwise surface as a traceback from a DataLoader
worker or a packing process. ``require`` runs a tiny real call of each piece a command needs, once per
process, and turns a failure into one ``AvdaliError`` line naming the package, the reason and the fix.
``avdali doctor`` runs the same probes. Libraries are imported inside the probes only, so importing this
module stays cheap and ``packing`` can use it without importing torch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from avdali.errors import AvdaliError


@dataclass(frozen=True)
class Part:
    """One native piece: the distribution that ships it and a probe that exercises it."""

    name: str
    """Short name used by ``require`` and shown by ``avdali doctor``."""
    package: str
    """Distribution name (``pip install`` / ``importlib.metadata``)."""
    what: str
    """What the probe exercises, for the doctor's line."""
    probe: Callable[[], str]
    """Raises when the piece does not work; returns a short detail on success."""
    alternative: str = ""
    """What a user can do instead while it is broken (appended to the error)."""


def _torchaudio() -> str:
    import torch
    import torchaudio

    # The C extension loads lazily, at the first transform call: construct *and* run one.
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=40)
    out = mel(torch.sin(torch.arange(1600, dtype=torch.float32) * 0.3))
    if out.shape != (40, 11) or not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"MelSpectrogram returned shape {tuple(out.shape)} or non-finite values")
    return "MelSpectrogram runs"


def _dali() -> str:
    from avdali.data.dali import probe_cpu_pipeline  # DALI is imported in data/dali/ alone

    probe_cpu_pipeline()
    return "CPU pipeline runs"


def gradient_frames(count: int, size: int) -> np.ndarray:
    """``count`` RGB frames of ``size``² (a diagonal gradient that moves), N,H,W,3 uint8."""
    ramp = np.add.outer(np.arange(size), np.arange(size)) * (255 // (2 * size - 1))
    return np.stack([np.repeat(((ramp + 8 * i) % 256)[..., None], 3, axis=2) for i in range(count)]).astype(np.uint8)


def encode_video(frames: np.ndarray, codec: str, container: str) -> bytes:
    """Encode RGB frames (N,H,W,3) with PyAV into an in-memory ``container`` file."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=15)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return buffer.getvalue()


def decode_video(data: bytes, codec: str | None = None) -> np.ndarray:
    """Decode every frame of an in-memory video with PyAV (RGB, N,H,W,3); ``codec``: check the stream's codec."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        if codec is not None and stream.codec_context.name != codec:
            raise RuntimeError(f"expected a {codec} stream, found {stream.codec_context.name}")
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


NVDEC_MAX_ERROR = 12.0
"""Mean error (levels of 255) above which an NVDEC decode counts as wrong: VP9 at its default quality is within a
few levels of the gradient."""


class NvcuvidMissing(RuntimeError):
    """``probe_nvdec``: the driver's decode library does not load (a container without the driver's ``video``
    capability, or a driver installed without it); any other probe failure is a plain ``RuntimeError``."""


def probe_nvdec(device_id: int = 0) -> str:
    """Decode a small VP9 clip with DALI's ``mixed`` decoder (NVDEC) on ``device_id`` and compare it with the frames
    encoded; raises (naming what failed: ``NvcuvidMissing`` or ``RuntimeError``) when NVDEC cannot be used here, else
    returns a short detail."""
    import ctypes

    try:
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError as e:
        raise NvcuvidMissing(f"libnvcuvid.so.1 does not load ({e})") from None
    from avdali.data.dali import probe_video_decode  # DALI is imported in data/dali/ alone

    frames = gradient_frames(8, 128)  # NVDEC's minimum VP9 frame is 128x128
    try:
        decoded = probe_video_decode(encode_video(frames, "libvpx-vp9", "webm"), device_id)
    except Exception as e:  # noqa: BLE001 - any failure of the decoder is the finding
        raise RuntimeError(f"DALI mixed VP9 decode: {reason(e)}") from None
    if decoded.shape != frames.shape:
        raise RuntimeError(f"DALI mixed decode gave {decoded.shape}, expected {frames.shape}")
    error = float(abs(decoded.astype(float) - frames.astype(float)).mean())
    if error > NVDEC_MAX_ERROR:
        raise RuntimeError(f"DALI mixed decode differs from the clip by {error:.1f} levels on average")
    return f"libnvcuvid loads; a {len(decoded)}-frame VP9 clip decodes on NVDEC (mean error {error:.1f})"


_NVDEC_USABLE: dict[int, bool] = {}
"""``nvdec_usable`` answers per device, once per process (the probe builds a DALI pipeline: ~1 s)."""


def nvdec_usable(device_id: int = 0) -> bool:
    """Whether NVDEC decodes VP9 through DALI on ``device_id`` (False without CUDA); probed once per process."""
    if device_id not in _NVDEC_USABLE:
        import torch

        if not torch.cuda.is_available():
            return False
        try:
            probe_nvdec(device_id)
            _NVDEC_USABLE[device_id] = True
        except Exception:  # noqa: BLE001 - unusable for whatever reason; `avdali doctor` names it
            _NVDEC_USABLE[device_id] = False
    return _NVDEC_USABLE[device_id]


def _round_trip(codec: str, container: str, decoder: str) -> str:
    frames = gradient_frames(4, 64)
    decoded = decode_video(encode_video(frames, codec, container), decoder)
    if decoded.shape != frames.shape:
        raise RuntimeError(f"{codec} round trip gave {decoded.shape}, expected {frames.shape}")
    return f"{len(decoded)} frames round trip"


def _vp9() -> str:
    return "libvpx-vp9 encoder + vp9 decoder: " + _round_trip("libvpx-vp9", "webm", "vp9")


def _h264() -> str:
    import av

    # Source clips (RAVDESS, MELD) are H.264 mp4: avdali decodes them and never encodes H.264. Round-trip when an
    # H.264 encoder is present; otherwise opening the decoder is the check.
    encoder = next((c for c in ("libx264", "libopenh264") if c in av.codecs_available), None)
    if encoder is None:
        av.CodecContext.create("h264", "r")
        return "h264 decoder opens (no H.264 encoder to round-trip with)"
    return f"h264 decoder ({encoder} to make the clip): " + _round_trip(encoder, "mp4", "h264")


def _flac() -> str:
    import soundfile as sf

    samples = (np.sin(np.arange(1600) * 0.05) * 10000).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16000, format="FLAC", subtype="PCM_16")
    buffer.seek(0)
    back, rate = sf.read(buffer, dtype="int16")
    if rate != 16000 or not np.array_equal(back, samples):
        raise RuntimeError("FLAC round trip changed the samples")
    return f"libsndfile {sf.__libsndfile_version__}, FLAC round trip"


def _haar() -> str:
    import cv2

    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    if cv2.CascadeClassifier(str(path)).empty():
        raise RuntimeError(f"cannot load the bundled Haar cascade {path}")
    return "frontal-face Haar cascade loads"


PARTS: dict[str, Part] = {
    part.name: part
    for part in (
        Part("torchaudio", "torchaudio", "C extension", _torchaudio),
        Part("dali", "nvidia-dali-cuda130", "backend", _dali, 'or set data.loader = "torch"'),
        Part("pyav-vp9", "av", "VP9 encode/decode", _vp9),
        Part("pyav-h264", "av", "H.264 decode", _h264),
        Part("soundfile-flac", "soundfile", "FLAC", _flac),
        Part("opencv-haar", "opencv-python-headless", "Haar cascade", _haar),
    )
}

PACK_PARTS = ("pyav-h264", "pyav-vp9", "soundfile-flac", "opencv-haar")
"""What ``avdali shard`` (and the demo's packing) uses: decode H.264 sources, encode VP9, FLAC, face boxes."""


def loader_parts(loader: str) -> tuple[str, ...]:
    """What a loader (``data.loader``) uses: DALI alone, or PyAV's VP9 decoder + soundfile + torchaudio."""
    return ("dali",) if loader == "dali" else ("pyav-vp9", "soundfile-flac", "torchaudio")


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def reason(error: BaseException) -> str:
    """The first line of an exception as ``Type: message`` (at most 300 characters)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 300 else text[:297] + "..."


_WORKING: dict[str, str] = {}
"""Probes that passed in this process (a failure is not remembered: it is reported, and the command stops)."""


def check(name: str) -> tuple[bool, str]:
    """Run ``name``'s probe (once per process when it passes): (works, detail or reason)."""
    if name in _WORKING:
        return True, _WORKING[name]
    try:
        detail = PARTS[name].probe()
    except Exception as e:  # noqa: BLE001 - any failure of a native call (ImportError, OSError, RuntimeError …) is the finding
        return False, reason(e)
    _WORKING[name] = detail
    return True, detail


def forget() -> None:
    """Probe again at the next ``check`` (tests that break a library on purpose)."""
    _WORKING.clear()


def failure_message(name: str, why: str) -> str:
    part = PARTS[name]
    alternative = f" ({part.alternative})" if part.alternative else ""
    return (f"{part.package} {version_of(part.package)} cannot be used ({part.what}): {why} — "
            f"run `avdali doctor`, then reinstall the tested versions (pip install -e .){alternative}")


def require(names: Iterable[str]) -> None:
    """Probe each native piece in ``names`` (once per process); the first that fails → one-line AvdaliError."""
    for name in names:
        works, why = check(name)
        if not works:
            raise AvdaliError(failure_message(name, why))

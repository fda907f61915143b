"""Media probes: decode a sample's webm or flac member to count what it holds (PyAV, soundfile; no torch).

``avdali inspect`` compares these counts with ``meta.i32``; the loader benchmark counts decoded frames with them.
"""

from __future__ import annotations

import io


def count_webm_frames(webm: bytes) -> int:
    """Frames in a webm, counted by decoding it with PyAV."""
    import av

    with av.open(io.BytesIO(webm), "r") as container:
        return sum(1 for _ in container.decode(video=0))


def count_flac_samples(flac: bytes) -> tuple[int, int, int]:
    """(samples, rate, channels) of a FLAC, decoded with soundfile."""
    import soundfile as sf

    data, rate = sf.read(io.BytesIO(flac), dtype="int16", always_2d=True)
    return data.shape[0], rate, data.shape[1]

"""The packing benchmark (``avdali bench shard``): synthesize RAVDESS-like 720p H.264 clips, pack them, and measure
clips/s, bytes per packed clip and where each clip's time goes."""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from avdali.packing.run import pack
from avdali.shardformat.manifest import read_manifest
from avdali.shardformat.options import PackOptions
from avdali.shardformat.probe import count_flac_samples, count_webm_frames

RAVDESS_TRIALS_PER_ACTOR = 60
"""Speech trials per RAVDESS actor: a bench of N clips uses ceil(N / 60) actors."""


def clip_times_recorder(times: list[float]):
    """A pack progress callback that records when each clip finished."""

    def record(event) -> None:
        if event.kind == "clip":
            times.append(time.perf_counter())

    return record


def bench_shard(
    size: tuple[int, int], clips: int, workers: int, shard_size: int = 16, progress: Callable[[str], None] | None = None
) -> dict:
    """Synthesize ``clips`` RAVDESS-like H.264 clips of ``size`` at 30 fps, pack them with ``workers`` processes,
    and return the figures (clips/s overall and per core, bytes per clip, per-clip time split).
    ``progress`` hears the name of each stage as it starts."""
    from avdali.synth.ravdess import make_ravdess

    say = progress or (lambda text: None)
    options = PackOptions(shard_size=shard_size, workers=workers)
    trials = min(clips, RAVDESS_TRIALS_PER_ACTOR)
    actors = tuple(range(1, -(-clips // trials) + 1))
    clip_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="avdali-bench-") as tmp:
        src, out = Path(tmp) / "raw", Path(tmp) / "shards"
        say(f"synthesizing {clips} clips at {size[0]}x{size[1]}")
        make_ravdess(src, actors=actors, size=size, trials_per_actor=trials, seed=0)
        say(f"packing with {options.num_workers} workers")
        result = pack("ravdess", src, out, options, clip_times_recorder(clip_times), overwrite=True)
        say("decoding the packed clips back")
        # Verify cost: decoding the stored webm + flac back, as transcode does once per clip.
        verify_s, verified, source_s = 0.0, 0, []
        for shard in read_manifest(out).shards:
            with tarfile.open(out / shard.name) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
            for key in shard.keys:
                source_s.append(json.loads(members[f"{key}.json"]).get("source_media", {}).get("duration_s") or 0.0)
                tic = time.perf_counter()
                count_webm_frames(members[f"{key}.webm"])
                count_flac_samples(members[f"{key}.flac"])
                verify_s += time.perf_counter() - tic
                verified += 1
    packed = max(result.clips_packed, 1)
    per_clip_s = result.transcode_s / max(result.clips_transcoded, 1)
    detect_s = result.stage_s.get("detect", 0.0) / packed
    verify_per_clip = verify_s / max(verified, 1)
    return {
        "machine": {"cpus": os.cpu_count(), "workers": result.workers},
        "source": {
            "clips": clips,
            "width": size[0],
            "height": size[1],
            "fps": 30,
            "codec": "h264",
            "mean_duration_s": round(sum(source_s) / max(len(source_s), 1), 3),
        },
        "options": options.content_options(),
        "clips_packed": result.clips_packed,
        "skipped": len(result.manifest.skipped),
        "wall_s": round(result.elapsed_s, 3),
        "clips_per_s": round(result.clips_per_s, 3),
        # between the first and the last finished clip: without the pool's start-up (imports, ~1-3 s)
        "steady_clips_per_s": round((len(clip_times) - 1) / (clip_times[-1] - clip_times[0]), 3)
        if len(clip_times) > 2 and clip_times[-1] > clip_times[0]
        else None,
        "clips_per_s_per_core": round(1 / per_clip_s, 3) if per_clip_s else None,
        "seconds_per_clip_per_core": round(per_clip_s, 4),
        "time_split_s_per_clip": {
            "face_detection": round(detect_s, 4),
            "verify_decode_back": round(verify_per_clip, 4),
            "decode_crop_encode": round(max(per_clip_s - detect_s - verify_per_clip, 0.0), 4),
        },
        "bytes_per_clip": {
            "webm": round(result.packed_bytes["webm"] / packed),
            "flac": round(result.packed_bytes["flac"] / packed),
            "total_tar": round(result.packed_bytes["total"] / packed),
        },
    }

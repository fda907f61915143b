"""``avdali bench …``: throughput measurements. ``bench shard`` packs synthetic RAVDESS-like 720p clips."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from avdali.cli.common import console, err_console, parse_size, user_errors

app = typer.Typer(help="Throughput benchmarks (short runs; figures go into the README).", no_args_is_help=True)

RAVDESS_TRIALS_PER_ACTOR = 60
"""Speech trials per RAVDESS actor: a bench of N clips uses ceil(N / 60) actors."""


BENCH_MIN_SIDE = 64
"""Smallest source frame side the packing bench accepts."""


def clip_times_recorder(times: list[float]):
    """A pack progress callback that records when each clip finished."""

    def record(event) -> None:
        if event.kind == "clip":
            times.append(time.perf_counter())

    return record


def bench_shard(size: tuple[int, int], clips: int, workers: int, shard_size: int = 16) -> dict:
    """Synthesize ``clips`` RAVDESS-like H.264 clips of ``size`` at 30 fps, pack them with ``workers`` processes,
    and return the figures (clips/s overall and per core, bytes per clip, per-clip time split)."""
    from avdali.packing.run import pack
    from avdali.shardformat.manifest import read_manifest
    from avdali.shardformat.options import PackOptions
    from avdali.shardformat.probe import count_flac_samples, count_webm_frames
    from avdali.synth.ravdess import make_ravdess

    import tarfile

    options = PackOptions(shard_size=shard_size, workers=workers)
    trials = min(clips, RAVDESS_TRIALS_PER_ACTOR)
    actors = tuple(range(1, -(-clips // trials) + 1))
    clip_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="avdali-bench-") as tmp:
        src, out = Path(tmp) / "raw", Path(tmp) / "shards"
        with err_console.status(f"synthesizing {clips} clips at {size[0]}x{size[1]}"):
            make_ravdess(src, actors=actors, size=size, trials_per_actor=trials, seed=0)
        with err_console.status(f"packing with {options.num_workers} workers"):
            result = pack("ravdess", src, out, options, clip_times_recorder(clip_times), overwrite=True)
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


@app.command("shard")
@user_errors
def shard(
    size: Annotated[str, typer.Option("--size", help="Source frame size WxH.")] = "1280x720",
    clips: Annotated[int, typer.Option("--clips", min=1, help="Synthetic source clips to pack.")] = 16,
    workers: Annotated[int, typer.Option("--workers", "-j", min=0, help="Transcode processes (0 = all cores).")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Pack N synthetic RAVDESS-like 30 fps H.264 clips and report clips/s (overall, per core), bytes per
    packed clip, and the per-clip time split (face detection, decode-back verify, decode+crop+encode)."""
    figures = bench_shard(parse_size(size, minimum=BENCH_MIN_SIDE), clips, workers)
    table = Table(title=f"bench shard: {clips} clips {size} H.264 → 128 px VP9 + FLAC", header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("source clip mean duration", f"{figures['source']['mean_duration_s']:.2f} s")
    table.add_row("workers / cpus", f"{figures['machine']['workers']} / {figures['machine']['cpus']}")
    table.add_row("clips packed (skipped)", f"{figures['clips_packed']} ({figures['skipped']})")
    table.add_row("wall time", f"{figures['wall_s']:.2f} s")
    table.add_row("clips/s overall (incl. start-up)", f"{figures['clips_per_s']:.2f}")
    if figures["steady_clips_per_s"]:
        table.add_row("clips/s steady (first → last clip)", f"{figures['steady_clips_per_s']:.2f}")
    table.add_row("clips/s per core", f"{figures['clips_per_s_per_core']:.2f}")
    for stage, seconds in figures["time_split_s_per_clip"].items():
        table.add_row(f"  {stage.replace('_', ' ')} s/clip", f"{seconds:.3f}")
    for part, n in figures["bytes_per_clip"].items():
        table.add_row(f"bytes/clip {part}", f"{n / 1e3:.1f} KB")
    console.print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(figures, indent=2) + "\n")


from avdali.cli import bench_loader  # noqa: E402  (registration: `avdali bench loader`, owned by data)
app.command(name="loader")(bench_loader.loader)
from avdali.cli import bench_train  # noqa: E402  (registration: `avdali bench train`, owned by demo/cv)
app.command(name="train")(bench_train.train)

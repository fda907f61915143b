"""``avdali bench shard``: print what ``avdali.bench.packing`` measures (packing throughput, bytes per clip)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from avdali.cli.common import console, err_console, parse_size, user_errors

BENCH_MIN_SIDE = 64
"""Smallest source frame side the packing bench accepts."""


@user_errors
def shard(
    size: Annotated[str, typer.Option("--size", help="Source frame size WxH.")] = "1280x720",
    clips: Annotated[int, typer.Option("--clips", min=1, help="Synthetic source clips to pack.")] = 16,
    workers: Annotated[int, typer.Option("--workers", "-j", min=0, help="Transcode processes (0 = all cores).")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Pack N synthetic RAVDESS-like 30 fps H.264 clips and report clips/s (overall, per core), bytes per
    packed clip, and the per-clip time split (face detection, decode-back verify, decode+crop+encode)."""
    from avdali.bench.packing import bench_shard

    with err_console.status("bench shard") as status:
        figures = bench_shard(parse_size(size, minimum=BENCH_MIN_SIDE), clips, workers, progress=status.update)
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


"""``avdali bench loader``: clips/s of the DALI, torch and notebook-style loaders on the same shards and cores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from avdali.cli.common import console, err_console, user_errors
from avdali.errors import AvdaliError

LOADERS = ("dali", "torch", "naive")


@user_errors
def loader(
    shards: Annotated[Path, typer.Argument(help="Shard folder (with manifest.json).")],
    loaders: Annotated[str, typer.Option(help="Comma-separated: dali, torch, naive.")] = "dali,torch",
    batch_size: Annotated[int, typer.Option(help="Clips per batch.")] = 8,
    batches: Annotated[int, typer.Option(help="Batches timed per loader (after warm-up).")] = 20,
    warmup: Annotated[int, typer.Option(help="Batches consumed before timing.")] = 3,
    frames: Annotated[int, typer.Option(help="T frames per clip.")] = 16,
    threads: Annotated[int, typer.Option(help="DALI threads / DataLoader workers (default: all cores).")] = 0,
    crop_interp: Annotated[str, typer.Option(help="Random resized crop resampling: linear | nearest.")] = "linear",
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated splits (default: all).")] = None,
    src: Annotated[
        Optional[Path], typer.Option(help="Raw dataset tree the shards came from (for naive, which reads only the clips they packed).")
    ] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset of --src (for naive; default: the shards').")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the figures to this JSON file.")] = None,
):
    """Measure loader throughput (training mode: shuffle + augmentation) and the VP9 decode ceiling."""
    import os

    from avdali.data.benchmark import run_benchmark
    from avdali.data.config import DataConfig

    names = [n.strip() for n in loaders.split(",") if n.strip()]
    unknown = [n for n in names if n not in LOADERS]
    if unknown or not names:
        raise AvdaliError(f"--loaders: unknown {', '.join(unknown) or 'empty list'}; expected some of {', '.join(LOADERS)}")
    if "naive" in names and src is None:
        raise AvdaliError("--loaders naive needs --src RAW_TREE (the raw dataset the shards were packed from)")
    cfg = DataConfig(shards=str(shards), batch_size=batch_size, frames=frames, crop_interp=crop_interp,
                     num_threads=threads or os.cpu_count() or 1)
    with err_console.status("measuring") as status:
        figures = run_benchmark(
            cfg, splits.split(",") if splits else None, names, batches, warmup, str(src) if src else None, dataset,
            progress=lambda name: status.update(f"measuring {name}"),
        )
    table = Table(title=f"loader throughput: batch {batch_size}, T={frames}, {crop_interp} crops, {figures['cores']} cores, "
                        f"{cfg.num_threads} threads/workers")
    for column in ("loader", "clips/s", "frames/s", "share of decode ceiling"):
        table.add_column(column, justify="left" if column == "loader" else "right")
    for name, r in figures["results"].items():
        mark = " (ceiling)" if name == figures["ceiling"] else ""
        table.add_row(name + mark, f"{r['clips_per_s']:.1f}", f"{r['frames_per_s']:.0f}", f"{r['share_of_ceiling']:.0%}")
    console.print(table)
    for pair, ratio in figures["ratios"].items():
        console.print(f"{pair}: {ratio:.2f}×")
    if json_out:
        json_out.write_text(json.dumps(figures, indent=1) + "\n")
        console.print(f"figures written to {json_out}")

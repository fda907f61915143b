"""``avdali bench loader``: clips/s of the DALI, torch and notebook-style loaders on the same shards and cores; with
``--device cuda``, of the four ways of feeding a GPU (DALI on NVDEC, DALI hybrid, DALI on the CPU, torch workers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from avdali.cli.common import console, err_console, user_errors
from avdali.errors import AvdaliError

DEFAULT_LOADERS = {"cpu": "dali,torch,cache", "cuda": "dali-gpu,dali-hybrid,dali-cpu,torch,cache"}


@user_errors
def loader(
    shards: Annotated[Path, typer.Argument(help="Shard folder (with manifest.json).")],
    loaders: Annotated[Optional[str], typer.Option(
        help="Comma-separated. --device cpu: dali, torch, naive, cache (default dali,torch,cache); --device cuda: "
             "dali-gpu, dali-hybrid, dali-cpu, torch, cache (default all five). cache: the DALI loader with the "
             "decoded-frame cache (host memory on the CPU, GPU memory on CUDA); its first pass is reported apart.",
        show_default=False)] = None,
    device: Annotated[str, typer.Option(help="cpu, or cuda: batches delivered to the GPU, GPU memory measured.")] = "cpu",
    ceiling: Annotated[bool, typer.Option(help="Also measure the CPU decode ceiling (DALI decoder, PyAV).")] = True,
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

    from avdali.bench.loaders import run_benchmark
    from avdali.data.config import DataConfig

    from avdali.bench.loaders import check_loaders

    if device not in DEFAULT_LOADERS:
        raise AvdaliError(f"--device: expected cpu or cuda, got {device!r}")
    names = [n.strip() for n in (loaders or DEFAULT_LOADERS[device]).split(",") if n.strip()]
    check_loaders(names, device)  # before any loader starts: unknown names, and cuda without a CUDA device
    if "naive" in names and src is None:
        raise AvdaliError("--loaders naive needs --src RAW_TREE (the raw dataset the shards were packed from)")
    cfg = DataConfig(shards=str(shards), batch_size=batch_size, frames=frames, crop_interp=crop_interp,
                     num_threads=threads or os.cpu_count() or 1)
    with err_console.status("measuring") as status:
        figures = run_benchmark(
            cfg, splits.split(",") if splits else None, names, batches, warmup, str(src) if src else None, dataset,
            progress=lambda name: status.update(f"measuring {name}"), device=device, ceiling=ceiling,
        )
    on_gpu = f" → {figures['gpu']}" if device == "cuda" else ""
    table = Table(title=f"loader throughput{on_gpu}: batch {batch_size}, T={frames}, {crop_interp} crops, {figures['cores']} cores, "
                        f"{cfg.num_threads} threads/workers")
    columns = ["loader", "clips/s", "frames/s", "cores busy", "CPU ms/clip", "cores stolen", "main thread",
               "share of ceiling", "by CPU ms"]
    if device == "cuda":
        columns += ["GPU MiB (torch peak)", "GPU MiB (device)"]
    for column in columns:
        table.add_column(column, justify="left" if column == "loader" else "right", no_wrap=column == "loader")
    for name, r in figures["results"].items():
        mark = " *" if name == figures["ceiling"] else ""
        row = [name + mark, f"{r['clips_per_s']:.1f}", f"{r['frames_per_s']:.0f}", _figure(r["cpu_cores"], ".1f"),
               _figure(r["cpu_ms_per_clip"], ".2f"), _figure(r["steal_cores"], ".2f"), _figure(r["main_thread_busy"], ".0%"),
               _figure(r["share_of_ceiling"], ".0%"), _figure(r["cpu_share_of_ceiling"], ".0%")]
        if device == "cuda":
            row += [f"{r.get('gpu_peak_allocated_mb', 0) or 0:.0f}", f"{r.get('gpu_device_used_mb', 0) or 0:.0f}"]
        table.add_row(*row)
    wide = console if console.is_terminal else Console(file=console.file, width=132)  # a log or pipe: whole columns
    wide.print(table)
    if ceiling:
        console.print("* the decode ceiling the shares divide by; 'by CPU ms': its CPU per clip over the row's, which other "
                      "tenants of a shared host (cores stolen) move far less than clips/s")
    for pair, ratio in figures["ratios"].items():
        console.print(f"{pair}: {ratio:.2f}×")
    for name, r in figures["results"].items():
        if r.get("first_pass_s") is not None:
            console.print(f"{name}: first pass {r['first_pass_s']:.1f} s for {r['cache_gb']:.2f} GB (not in its clips/s)")
    if json_out:
        json_out.write_text(json.dumps(figures, indent=1) + "\n")
        console.print(f"figures written to {json_out}")


def _figure(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)

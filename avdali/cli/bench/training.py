"""``avdali bench train SHARDS``: print what ``avdali.bench.training`` measures (training throughput per loader; on
CUDA also AMP × torch.compile) as a table, and write it as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from avdali.cli.common import console, err_console, user_errors
from avdali.data.config import LOADERS
from avdali.errors import AvdaliError


@user_errors
def train(
    shards: Annotated[Path, typer.Argument(help="Shard folder (with manifest.json).")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Run config TOML (default: the demo config).", show_default=False)] = None,
    loaders: Annotated[str, typer.Option("--loaders", help="Comma-separated: dali, torch.")] = "dali,torch",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps timed per variant.")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Steps run before timing (worker start-up, allocator, compile).")] = 3,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Config override section.key=value, repeatable.", show_default=False)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the figures to this JSON file.", show_default=False)] = None,
    batch_sizes: Annotated[Optional[str], typer.Option("--batch-sizes", help="Comma-separated batch sizes per GPU to measure (default: the config's).", show_default=False)] = None,
    peak_tflops: Annotated[Optional[float], typer.Option("--peak-tflops", help="Peak TFLOP/s for MFU (default: known GPUs' dense bf16 peak).", show_default=False)] = None,
    grid: Annotated[bool, typer.Option("--amp-compile-grid/--config-only", help="On CUDA: every AMP × compile pair, or only the config's.")] = True,
) -> None:
    """Training throughput with each loader on the same model and config: clips/s, data-wait share, step time.

    On CUDA every loader runs with AMP (bf16) and torch.compile on and off. Each variant is a short real
    training run (`avdali train`'s loop) in a temporary folder; warm-up steps are not timed.
    """
    from avdali.experiments.demo import DEMO_CONFIG
    from avdali.bench.training import bench_training

    names = [n.strip() for n in loaders.split(",") if n.strip()]
    unknown = [n for n in names if n not in LOADERS]
    if unknown or not names:
        raise AvdaliError(f"--loaders: unknown {', '.join(unknown) or 'empty list'}; expected some of {', '.join(LOADERS)}")
    config = config or DEMO_CONFIG
    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()] if batch_sizes else None
    except ValueError:
        raise AvdaliError(f"--batch-sizes: expected comma-separated integers, got {batch_sizes!r}") from None
    if sizes is not None and (not sizes or min(sizes) < 1):
        raise AvdaliError(f"--batch-sizes: expected integers ≥ 1, got {batch_sizes!r}")
    with err_console.status("measuring") as status:
        figures = bench_training(
            shards, config, names, steps, warmup, list(set_ or []),
            progress=lambda v, b: status.update(f"measuring batch {b}, {v.loader} loader, amp {v.amp}, compile {v.compile}"),
            batch_sizes=sizes, peak=peak_tflops, grid=grid,
        )  # fmt: skip
    machine = figures["machine"]
    table = Table(
        title=f"training throughput: T={figures['frames']}, {figures['crop']}², "
        f"{steps} steps · {machine['device']}, {machine['cpus']} cpus, load {machine['load_average_1m']}"
    )
    for column in ("batch", "loader", "amp", "compile", "clips/s", "data wait", "step ms", "TFLOP/s", "MFU"):
        table.add_column(column, justify="left" if column in ("loader", "amp", "compile") else "right")
    for r in figures["results"]:
        table.add_row(str(r["batch_size"]), r["loader"], r["amp"], str(r["compile"]).lower(), f"{r['clips_per_s']:.1f}",
                      f"{r['data_wait_frac']:.0%}", f"{r['step_ms']:.0f}", f"{r['achieved_tflops']:.2f}",
                      "-" if r["mfu"] is None else f"{r['mfu']:.1%}")
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=2) + "\n")

"""``avdali cross``: checkpoints × shard folders → the cross-dataset table (Markdown, JSON, PNG heatmap)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from avdali.cli.common import check_choice, console, err_console, user_errors
from avdali.data.config import LOADERS
from avdali.train.config import DEVICE_CHOICES
from avdali.errors import AvdaliError


def print_outputs(paths: dict[str, Path]) -> None:
    for what, path in paths.items():
        console.print(f"{what:<9}→ {escape(str(path))}", highlight=False, soft_wrap=True)


@user_errors
def cross(
    checkpoint: Annotated[list[Path], typer.Option("--checkpoint", "-k", help="A checkpoint (a row), repeatable; its saved config says which dataset it was trained on.", show_default=False)],
    shards: Annotated[list[Path], typer.Option("--shards", "-s", help="A shard folder (a column), repeatable; its manifest says which dataset it holds.", show_default=False)],
    split: Annotated[Optional[list[str]], typer.Option("--split", help="DATASET=SPLIT[+SPLIT…] for every cell of that dataset, repeatable (e.g. ravdess=fold1, meld=dev+test). Default: in-domain the checkpoint's held-out test split; out-of-domain RAVDESS all folds, MELD test.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for cross.md, cross.json and cross.png.")] = Path("output/cross"),
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    loader: Annotated[Optional[str], typer.Option("--loader", help="dali | torch (default: each checkpoint's data.loader).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Clips per batch (default: each checkpoint's).", show_default=False)] = None,
) -> None:
    """Evaluate every checkpoint on every shard folder: accuracy, UA (unweighted accuracy), weighted and macro F1 as
    an N×M table (rows: checkpoints, columns: datasets), in-domain cells marked with *. Each cell is what
    `avdali eval` gives for the same checkpoint, folder and splits."""
    from avdali.experiments.cross import markdown, parse_split_choices, run_cross, write_outputs

    check_choice("--device", device, DEVICE_CHOICES)
    check_choice("--loader", loader, LOADERS)
    if out.exists() and not out.is_dir():
        raise AvdaliError(f"{out}: exists and is not a folder")
    chosen = parse_split_choices(split or [])
    total = len(dict.fromkeys(map(str, checkpoint))) * len(dict.fromkeys(map(str, shards)))

    def progress(i, j, table):
        cell, row, column = table.cells[i][j], table.rows[i], table.columns[j]
        err_console.print(
            f"[dim]{i * len(table.columns) + j + 1}/{total}[/] {escape(row.label)} on {escape(column.label)} "
            f"{escape('+'.join(cell.splits))}: acc {cell.metrics['acc']:.3f} · {int(cell.metrics['num_samples'])} clips · "
            f"{cell.seconds:.1f} s",
            highlight=False,
            soft_wrap=True,
        )

    with err_console.status(f"evaluating {total} checkpoint × shard pairs"):
        table = run_cross(checkpoint, shards, chosen, device=device, loader=loader, batch_size=batch_size, progress=progress)
    console.print(markdown(table), highlight=False, soft_wrap=True, markup=False)
    print_outputs(write_outputs(table, out))


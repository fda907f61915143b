"""``avdali eval``: a checkpoint over shard splits → metrics, per-class table, confusion matrix (table, PNG, JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from avdali.cli.common import check_choice, console, err_console, user_errors
from avdali.data.config import LOADERS
from avdali.train.config import DEVICE_CHOICES
from avdali.train.modality import MODALITIES, servable_modalities, unservable_reason


@user_errors
def eval_checkpoint(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-k", help="A checkpoint written by `avdali train` (best.pt / last.pt).", show_default=False)],
    shards: Annotated[Path, typer.Option("--shards", "-s", help="Shard folder to evaluate on (any dataset in the checkpoint's label space).", show_default=False)],
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Split to evaluate, repeatable (read together). Default: the test split (RAVDESS: the checkpoint's fold; MELD: test).", show_default=False)] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the metrics, per-class table and confusion matrix as JSON here.", show_default=False)] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Confusion-matrix PNG (default: next to the checkpoint).", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    loader: Annotated[Optional[str], typer.Option("--loader", help="dali | torch (default: the checkpoint's data.loader).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Clips per batch (default: the checkpoint's).", show_default=False)] = None,
    modality: Annotated[Optional[str], typer.Option("--modality", help="both | audio | video: evaluate with only that stream (audio: video removed). Default: both, plus a robustness table of every modality the checkpoint can serve.", show_default=False)] = None,
) -> None:
    """Evaluate a checkpoint on shards: accuracy, unweighted accuracy, macro and weighted F1, per-class table and
    confusion matrix. Data settings (frames, crop, features, audio window) come from the checkpoint; a model trained
    in the unified 7-class space evaluates on either dataset."""
    from avdali.infer.evaluate import evaluate_checkpoint
    from avdali.infer.load import load_model
    from avdali.infer.report import eval_report, write_confusion_png, write_json

    check_choice("--device", device, DEVICE_CHOICES)
    check_choice("--loader", loader, LOADERS)
    check_choice("--modality", modality, MODALITIES)
    with err_console.status(f"loading {checkpoint}"):
        loaded = load_model(checkpoint, device)
    if modality is not None:
        loaded.require_modality(modality)  # before the shards are read
    with err_console.status(f"evaluating on {shards}"):
        result = evaluate_checkpoint(loaded, shards, split or (), loader=loader, batch_size=batch_size, modality=modality)
    m = result.metrics
    where = f"{result.dataset} {'+'.join(result.splits)}" + ("" if result.modality == "both" else f" ({result.modality} only)")
    console.print(
        f"[bold]{escape(str(checkpoint))}[/] (epoch {loaded.epoch}, {loaded.label_space}) on [bold]{escape(where)}[/]: "
        f"{m['num_samples']} clips · {result.loader} loader on {loaded.device.type} · {result.seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    console.print(summary_table(m))
    if modality is None:
        console.print(robustness_table(result.robustness, loaded.config.to_dict()))
    console.print(class_table(m["confusion"], loaded.class_names))
    console.print(confusion_table(m["confusion"], loaded.class_names))

    suffix = "" if result.modality == "both" else f"-{result.modality}"
    png = png or checkpoint.with_name(f"{checkpoint.stem}-{result.dataset}-{'+'.join(result.splits)}{suffix}-confusion.png")
    title = f"{checkpoint.name} on {where}: acc {m['acc']:.3f}, ua {m['ua']:.3f}, wF1 {m['weighted_f1']:.3f}"
    write_confusion_png(png, m["confusion"], loaded.class_names, title=title)
    console.print(f"confusion matrix → {escape(str(png))}", highlight=False, soft_wrap=True)
    if json_path is not None:
        write_json(json_path, eval_report(loaded, result, checkpoint))
        console.print(f"metrics → {escape(str(json_path))}", highlight=False, soft_wrap=True)


def summary_table(metrics: dict) -> Table:
    """The headline numbers in one row."""
    table = Table(header_style="bold")
    columns = (("accuracy", "acc"), ("unweighted acc", "ua"), ("weighted F1", "weighted_f1"), ("macro F1", "macro_f1"), ("loss", "loss"))
    for title, _ in columns:
        table.add_column(title, justify="right")
    table.add_row(*(f"{metrics[key]:.4f}" for _, key in columns))
    return table


def robustness_table(robustness: dict, config: dict) -> Table:
    """The headline numbers per modality: both streams, audio only, video only; a modality the checkpoint cannot
    serve says which ``[train]`` key would have trained it."""
    table = Table(title="robustness (a stream removed)", header_style="bold")
    table.add_column("input")
    columns = (("accuracy", "acc"), ("unweighted acc", "ua"), ("weighted F1", "weighted_f1"), ("macro F1", "macro_f1"))
    for title, _ in columns:
        table.add_column(title, justify="right")
    names = {"both": "both", "audio": "audio only", "video": "video only"}
    for modality in MODALITIES:
        if modality in robustness:
            table.add_row(names[modality], *(f"{robustness[modality][key]:.4f}" for _, key in columns))
    servable = servable_modalities(config)
    table.caption = "; ".join(f"{names[m]}: {unservable_reason(m)}" for m in MODALITIES if m not in servable) or None
    return table


def class_table(confusion: np.ndarray, class_names) -> Table:
    """Precision, recall, F1 and support per class."""
    from avdali.infer.report import per_class

    table = Table(title="per class", header_style="bold")
    table.add_column("class")
    for title in ("precision", "recall", "F1", "support", "predicted"):
        table.add_column(title, justify="right")
    for row in per_class(confusion, class_names):
        table.add_row(row.name, f"{row.precision:.3f}", f"{row.recall:.3f}", f"{row.f1:.3f}", str(row.support), str(row.predicted))
    return table


def confusion_table(confusion: np.ndarray, class_names) -> Table:
    """Counts, rows = true class, columns = predicted; the diagonal in bold."""
    table = Table(title="confusion (rows: true, columns: predicted)", header_style="bold")
    table.add_column("true \\ pred")
    for name in class_names:
        table.add_column(name[:8], justify="right")
    for i, name in enumerate(class_names):
        cells = [f"[bold green]{int(c)}[/]" if i == j else (str(int(c)) if c else "[dim]0[/]") for j, c in enumerate(confusion[i])]
        table.add_row(name, *cells)
    return table

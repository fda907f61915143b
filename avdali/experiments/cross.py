"""``avdali cross``: N checkpoints × M shard folders → the cross-dataset table (Markdown, JSON, PNG heatmap).

Every cell is one ``evaluate_checkpoint`` call (the function behind ``avdali eval``), so a cell's numbers are
exactly what ``avdali eval --checkpoint C --shards S --split …`` prints for the same splits.

Which splits a cell reads (the rule, also in docs/evaluation.md):

- in-domain (the checkpoint was trained on the folder's dataset): ``avdali eval``'s default, the checkpoint's
  held-out test split (``data.test_splits`` when the shards hold them, else RAVDESS ``fold{data.fold}``, MELD ``test``);
- out-of-domain: RAVDESS all folds (the model never saw any of its actors, so every clip is held out),
  any other dataset its test split (MELD ``test``, the split the literature reports);
- ``--split DATASET=SPLIT[+SPLIT…]`` replaces the rule for every cell of that dataset's columns. An in-domain cell
  that then reads splits the checkpoint was trained or validated on says so (``seen_splits``, ``†``).

Everything is checked before the first evaluation (checkpoints load, manifests read, label spaces fit, splits
exist), so bad input costs one line and no waiting.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from avdali.errors import AvdaliError
from avdali.shardformat.manifest import Manifest, read_manifest
from avdali.infer.evaluate import check_label_space, default_eval_splits, evaluate_checkpoint
from avdali.infer.load import LoadedModel, load_model
from avdali.train.plan import ravdess_fold_splits
from avdali.infer.report import write_file, write_json

TABLE_METRICS = (("acc", "accuracy"), ("ua", "UA"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"))
"""The table's metrics in order: key in ``evaluate``'s dict, title (UA = unweighted accuracy = mean per-class recall)."""
CELL_KEYS = ("acc", "ua", "weighted_f1", "macro_f1", "loss", "num_samples")
"""Scalars kept per cell in the JSON."""
IN_DOMAIN_MARK = "*"
"""Appended to in-domain values in the Markdown table."""
SEEN_MARK = "†"
"""Appended to values of cells that read clips the checkpoint was trained or validated on."""
SCHEMA = "avdali.cross/1"
"""The JSON's ``schema`` value; bumped when its layout changes."""


@dataclass
class CrossRow:
    """A checkpoint (one row)."""

    path: Path
    """The checkpoint file as given."""
    label: str
    """Short name in the table: ``<run folder>/<file>``, the full path where two would read the same."""
    trained_on: str
    """Dataset it was trained on (``ravdess`` / ``meld``)."""
    label_space: str
    """``unified`` or ``ravdess8``."""
    epoch: int
    """Epochs trained when it was written (-1 when not recorded)."""


@dataclass
class CrossColumn:
    """A shard folder (one column)."""

    shards: Path
    """The folder as given."""
    label: str
    """Column title: the dataset, with the folder name where two folders hold the same dataset."""
    dataset: str
    """Dataset of its manifest."""


@dataclass
class CrossCell:
    """One checkpoint on one shard folder."""

    in_domain: bool
    """The checkpoint was trained on this dataset (its held-out split is read unless ``--split`` says otherwise)."""
    splits: tuple[str, ...]
    """The splits read (together, as one set)."""
    seen_splits: tuple[str, ...] = ()
    """Those of ``splits`` the checkpoint was trained or validated on (only an in-domain ``--split`` can cause it)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """``CELL_KEYS`` of ``evaluate``'s dict (empty until evaluated)."""
    seconds: float = 0.0
    """Wall time of the evaluation."""


@dataclass
class CrossTable:
    """The whole table: ``cells[i][j]`` is row ``i`` on column ``j``."""

    rows: list[CrossRow]
    columns: list[CrossColumn]
    cells: list[list[CrossCell]]
    device: str = "cpu"
    """Where the models ran."""

    def values(self, key: str) -> np.ndarray:
        """One metric as an N×M array."""
        return np.array([[cell.metrics[key] for cell in row] for row in self.cells], dtype=np.float64)

    def in_domain(self) -> np.ndarray:
        """N×M booleans."""
        return np.array([[cell.in_domain for cell in row] for row in self.cells], dtype=bool)

    def to_dict(self) -> dict:
        """The JSON document (``SCHEMA``)."""
        return {
            "schema": SCHEMA,
            "metrics": [key for key, _ in TABLE_METRICS],
            "device": self.device,
            "checkpoints": [
                {"path": str(r.path), "label": r.label, "trained_on": r.trained_on, "label_space": r.label_space,
                 "epoch": r.epoch} for r in self.rows
            ],  # fmt: skip
            "shards": [{"path": str(c.shards), "label": c.label, "dataset": c.dataset} for c in self.columns],
            "cells": [
                [
                    {"checkpoint": i, "shards": j, "in_domain": cell.in_domain, "splits": list(cell.splits),
                     "seen_splits": list(cell.seen_splits),
                     **{k: _number(cell.metrics[k]) for k in CELL_KEYS}, "seconds": round(cell.seconds, 3)}
                    for j, cell in enumerate(row)
                ]
                for i, row in enumerate(self.cells)
            ],  # fmt: skip
        }


# --- planning: everything checked before the first evaluation ---------------------------------------------------


def parse_split_choices(values: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``["ravdess=fold1+fold2", "meld=test"]`` → ``{"ravdess": ("fold1", "fold2"), "meld": ("test",)}``."""
    chosen: dict[str, tuple[str, ...]] = {}
    for value in values:
        dataset, sep, splits = value.partition("=")
        names = tuple(dict.fromkeys(s.strip() for s in splits.split("+") if s.strip()))
        if not sep or not dataset.strip() or not names:
            raise AvdaliError(f"--split {value!r}: expected DATASET=SPLIT[+SPLIT…], e.g. ravdess=fold1 or meld=dev+test")
        dataset = dataset.strip()
        if dataset in chosen:
            raise AvdaliError(f"--split: dataset {dataset!r} given twice")
        chosen[dataset] = names
    return chosen


def training_dataset(loaded: LoadedModel) -> str:
    """The dataset ``loaded`` was trained on: the config's ``data.dataset`` (runs record it), else the manifest of
    the config's ``data.shards`` (older runs), else RAVDESS for the RAVDESS-only ``ravdess8`` space."""
    data = loaded.config.data
    if data.dataset:
        return data.dataset
    try:
        return "+".join(read_manifest(Path(folder)).dataset for folder in data.shard_folders())
    except AvdaliError:
        pass
    if data.pipeline.label_space == "ravdess8":
        return "ravdess"
    raise AvdaliError(
        f"{loaded.path}: cannot tell which dataset it was trained on (its data.dataset is empty and its "
        f"data.shards {data.shards} has no readable manifest)"
    )


def seen_splits(loaded: LoadedModel, trained_on: str) -> tuple[str, ...]:
    """Splits of its own dataset the checkpoint was trained or validated on (explicit, else the dataset's protocol)."""
    data = loaded.config.data
    if trained_on == "ravdess":
        train, val, _ = ravdess_fold_splits(data.fold)
    elif trained_on == "meld":
        train, val = ("train",), ("dev",)
    else:
        train, val = (), ()
    return tuple(data.train_splits or train) + tuple(data.val_splits or val)


def cell_splits(loaded: LoadedModel, trained_on: str, manifest: Manifest, shards: Path, chosen: tuple[str, ...] | None) -> tuple[str, ...]:
    """The splits one cell reads (the module docstring's rule); AvdaliError naming the folder for a missing split."""
    if chosen:
        splits = chosen
    elif manifest.dataset in trained_on.split("+"):
        splits = default_eval_splits(loaded.config, manifest, shards)
    elif manifest.dataset == "ravdess":
        splits = tuple(s for s in sorted(manifest.splits) if manifest.splits[s].samples > 0)
    else:
        splits = default_eval_splits(loaded.config, manifest, shards)
    missing = [s for s in splits if s not in manifest.splits]
    if missing:
        raise AvdaliError(f"{shards}: no split {', '.join(map(repr, missing))}; it holds {', '.join(sorted(manifest.splits))}")
    return splits


def _labels(names: list[str], full: list[str]) -> list[str]:
    """Short labels, unless two would read the same (then the full ones)."""
    return names if len(set(names)) == len(names) else full


def plan_cross(
    checkpoints: Sequence[Path], shards: Sequence[Path], splits: dict[str, tuple[str, ...]] | None = None, device: str = "auto"
) -> tuple[list[LoadedModel], CrossTable]:
    """Load every checkpoint and manifest and decide every cell's splits; AvdaliError (one line) on the first problem."""
    if not checkpoints:
        raise AvdaliError("no checkpoint given; pass --checkpoint PATH (repeatable)")
    if not shards:
        raise AvdaliError("no shard folder given; pass --shards DIR (repeatable)")
    splits = splits or {}
    checkpoints = [Path(p) for p in dict.fromkeys(map(str, checkpoints))]
    shards = [Path(p) for p in dict.fromkeys(map(str, shards))]
    manifests = [read_manifest(s) for s in shards]
    datasets = {m.dataset for m in manifests}
    for dataset in splits:
        if dataset not in datasets:
            raise AvdaliError(f"--split {dataset}=…: none of the shard folders holds {dataset!r} (they hold {', '.join(sorted(datasets))})")
    models = [load_model(p, device) for p in checkpoints]
    trained = [training_dataset(m) for m in models]
    rows = [
        CrossRow(m.path, label, t, m.label_space, m.epoch)
        for m, t, label in zip(models, trained, _labels([f"{p.parent.name}/{p.name}" for p in checkpoints], [str(p) for p in checkpoints]))
    ]
    column_names = [m.dataset for m in manifests]
    if len(set(column_names)) < len(column_names):
        column_names = [f"{m.dataset} ({s.name})" for m, s in zip(manifests, shards)]
    columns = [CrossColumn(s, label, m.dataset) for s, m, label in zip(shards, manifests, _labels(column_names, [f"{m.dataset} ({s})" for m, s in zip(manifests, shards)]))]
    cells = []
    for model, trained_on in zip(models, trained):
        line = []
        for s, manifest in zip(shards, manifests):
            check_label_space(model, manifest, s)
            read = cell_splits(model, trained_on, manifest, s, splits.get(manifest.dataset))
            in_domain = manifest.dataset in trained_on.split("+")  # a joint run ("ravdess+meld") knows both
            seen = tuple(x for x in read if x in seen_splits(model, manifest.dataset)) if in_domain else ()
            line.append(CrossCell(in_domain, read, seen))
        cells.append(line)
    return models, CrossTable(rows, columns, cells, device=models[0].device.type)


def run_cross(
    checkpoints: Sequence[Path],
    shards: Sequence[Path],
    splits: dict[str, tuple[str, ...]] | None = None,
    *,
    device: str = "auto",
    loader: str | None = None,
    batch_size: int | None = None,
    progress=None,
) -> CrossTable:
    """Plan, then evaluate every cell. ``progress(i, j, table)`` is called after each cell (for the CLI)."""
    models, table = plan_cross(checkpoints, shards, splits, device)
    for i, model in enumerate(models):
        for j, column in enumerate(table.columns):
            cell = table.cells[i][j]
            tic = time.perf_counter()
            result = evaluate_checkpoint(model, column.shards, cell.splits, loader=loader, batch_size=batch_size,
                                         modality="both")  # the table is both streams; no robustness passes
            cell.metrics = {k: result.metrics[k] for k in CELL_KEYS}
            cell.seconds = time.perf_counter() - tic
            if progress is not None:
                progress(i, j, table)
    return table


# --- outputs -----------------------------------------------------------------------------------------------------


def markdown(table: CrossTable) -> str:
    """One N×M table per metric (rows = checkpoints, columns = datasets, ``*`` = in-domain), then the splits read."""
    header = "| checkpoint (trained on) | " + " | ".join(c.label for c in table.columns) + " |"
    rule = "|---|" + "---:|" * len(table.columns)
    names = [f"{r.label} ({r.trained_on})" for r in table.rows]
    parts = []
    for key, title in TABLE_METRICS:
        lines = [f"**{title}**", "", header, rule]
        for name, row in zip(names, table.cells):
            lines.append(f"| {name} | " + " | ".join(
                f"{cell.metrics[key]:.3f}{_marks(cell)}" for cell in row) + " |")
        parts.append("\n".join(lines))
    lines = ["**clips (splits)**", "", header, rule]
    for name, row in zip(names, table.cells):
        lines.append(f"| {name} | " + " | ".join(
            f"{int(cell.metrics['num_samples'])} ({'+'.join(cell.splits)})" for cell in row) + " |")
    parts.append("\n".join(lines))
    note = (f"`{IN_DOMAIN_MARK}` in-domain: the checkpoint was trained on this dataset (by default read on its held-out "
            "test split). UA = unweighted accuracy (mean per-class recall).")
    if any(cell.seen_splits for row in table.cells for cell in row):
        note += f" `{SEEN_MARK}` reads splits the checkpoint was trained or validated on (chosen with --split)."
    return "\n\n".join(parts) + "\n\n" + note + "\n"


def _marks(cell: CrossCell) -> str:
    return (IN_DOMAIN_MARK if cell.in_domain else "") + (SEEN_MARK if cell.seen_splits else "")


def heatmap_figure(table: CrossTable):
    """A 2×2 figure, one heatmap per metric (0–1 colour scale), values annotated, in-domain cells framed and starred."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n, m = len(table.rows), len(table.columns)
    in_domain = table.in_domain()
    fig = Figure(figsize=(2.2 + 2 * (1.0 + 0.9 * m), 1.6 + 2 * (0.8 + 0.5 * n)), dpi=100)
    axes = fig.subplots(2, 2, squeeze=False).ravel()
    row_names = [f"{r.label}\n({r.trained_on})" for r in table.rows]
    for ax, (key, title) in zip(axes, TABLE_METRICS):
        values = table.values(key)
        ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(m), [c.label for c in table.columns], fontsize=8)
        ax.set_yticks(range(n), row_names, fontsize=7)
        for i in range(n):
            for j in range(m):
                mark = _marks(table.cells[i][j])
                ax.text(j, i, f"{values[i, j]:.3f}{mark}", ha="center", va="center", fontsize=9,
                        color="black" if values[i, j] > 0.6 else "white")
                if in_domain[i, j]:
                    # inset so that the frame is not half clipped at the axes' edge
                    ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="red", linewidth=3))
    title = f"checkpoints (rows) × datasets (columns); framed, {IN_DOMAIN_MARK} = in-domain"
    if any(cell.seen_splits for row in table.cells for cell in row):
        title += f"; {SEEN_MARK} = reads splits it was trained or validated on"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def write_outputs(table: CrossTable, out: Path) -> dict[str, Path]:
    """``out/cross.md``, ``out/cross.json``, ``out/cross.png`` (each written atomically)."""
    out = Path(out)
    paths = {"markdown": out / "cross.md", "json": out / "cross.json", "png": out / "cross.png"}
    write_file(paths["markdown"], markdown(table).encode())
    write_json(paths["json"], table.to_dict())
    buffer = io.BytesIO()
    heatmap_figure(table).savefig(buffer, format="png")
    write_file(paths["png"], buffer.getvalue())
    return paths


def _number(value) -> float | int:
    return int(value) if isinstance(value, (int, np.integer)) else float(value)

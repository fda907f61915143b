"""``avdali cv``: RAVDESS cross-validation over actor folds; per-fold test metrics and mean ± std (table + JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from avdali.cli.common import console, user_errors

SHOWN_METRICS = ("acc", "ua", "weighted_f1", "macro_f1")


@user_errors
def cv(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config TOML (configs/ravdess.toml …).")],
    folds: Annotated[str, typer.Option("--folds", help="Comma-separated test folds to run.")] = "1,2,3,4,5",
    out: Annotated[Optional[Path], typer.Option("--out", help="Parent folder of the fold runs (default: output/cv-<name>-<time>).", show_default=False)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: section.key=value (TOML literal), repeatable.", show_default=False)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the summary here (it is always written to OUT/cv.json).", show_default=False)] = None,
) -> None:
    """Cross-validate on RAVDESS: one training run per actor fold (test fold k, validation fold k % 5 + 1),
    each in OUT/fold{k}; prints every fold's test metrics and their mean ± std (population std over folds)."""
    from avdali.cli.reporting import RichReporter
    from avdali.train.config_toml import load_config
    from avdali.experiments.cv import parse_folds, run_cv

    fold_list = parse_folds(folds)
    cfg = load_config(config, list(set_ or []))

    def announce(fold: int) -> RichReporter:
        console.rule(f"[bold]fold {fold}", align="left")
        return RichReporter()

    summary = run_cv(cfg, fold_list, out, reporter_for=announce,
                     on_message=lambda line: console.print(escape(line), highlight=False, soft_wrap=True))
    table = Table(title=f"cross-validation: {len(summary.folds)} folds · best.pt by val {summary.metric} · {escape(str(summary.parent))}")
    table.add_column("fold")
    table.add_column(f"val {summary.metric}", justify="right")
    for name in SHOWN_METRICS:
        table.add_column(f"test {name}", justify="right")
    table.add_column("clips", justify="right")
    for f in summary.folds:
        table.add_row(str(f.fold), f"{f.best_val:.4f}", *(f"{f.test[m]:.4f}" for m in SHOWN_METRICS), str(int(f.test["num_samples"])))
    mean, std = summary.mean, summary.std
    table.add_row("[bold]mean ± std[/]", "", *(f"[bold]{mean[m]:.4f} ± {std[m]:.4f}[/]" for m in SHOWN_METRICS),
                  str(sum(int(f.test["num_samples"]) for f in summary.folds)))
    console.print(table)
    console.print(f"summary: {escape(str(summary.parent / 'cv.json'))}", highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")

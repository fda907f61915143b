"""What ``avdali shard`` shows: the progress bar's clips/s, one line per skip, and the summary table at the end."""

from __future__ import annotations

import re
from collections import Counter

from rich.markup import escape
from rich.progress import Progress, ProgressColumn
from rich.table import Table
from rich.text import Text

from avdali.cli.common import console
from avdali.packing.run import PackEvent, PackResult


class ClipsPerSecond(ProgressColumn):
    """Throughput of the running task in clips/s (rich's own speed estimate)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:5.2f} clips/s" if speed else "  -   clips/s", style="progress.data.speed")


class ProgressPrinter:
    """Turns PackEvents into a progress bar and one printed line per skip."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        self.skips = 0

    def __call__(self, event: PackEvent) -> None:
        if event.kind == "plan":
            kept = f", {event.shards_kept} kept from an earlier run" if event.shards_kept else ""
            self.progress.console.print(f"{event.shards_total} shards planned{kept}; {event.clips_total} clips to transcode")
            self.task = self.progress.add_task("transcoding", total=event.clips_total)
        elif event.kind == "note":
            self.progress.console.print(escape(event.text), highlight=False, soft_wrap=True)
        elif event.kind == "clip" and self.task is not None:
            self.progress.advance(self.task)
        elif event.kind == "skip" and event.skipped is not None:
            self.skips += 1
            self.progress.console.print(
                f"[yellow]skip[/] {escape(event.skipped.source)}: {escape(event.skipped.reason)}", highlight=False, soft_wrap=True
            )


def skip_reason_kind(reason: str) -> str:
    """A reason without its per-file details in parentheses, so skips group by kind in the summary."""
    return re.sub(r"\s*\([^)]*\)", "", reason).strip() or reason


def print_summary(result: PackResult) -> None:
    """Per split samples and shards, skips by reason, faces, throughput and bytes per clip."""
    manifest = result.manifest
    table = Table(title=f"{manifest.dataset} → {result.out}", header_style="bold")
    table.add_column("split")
    table.add_column("samples", justify="right")
    table.add_column("shards", justify="right")
    for split, totals in manifest.splits.items():
        if totals.samples == 0:  # a split that packed nothing is the one thing a user must not miss
            table.add_row(f"[bold red]{split}[/]", "[bold red]0 ✗ nothing packed[/]", str(totals.shards))
        else:
            table.add_row(split, str(totals.samples), str(totals.shards))
    table.add_row("[bold]all[/]", f"[bold]{manifest.samples}[/]", f"[bold]{len(manifest.shards)}[/]")
    console.print(table)
    empty = [split for split, totals in manifest.splits.items() if totals.samples == 0]
    if empty:
        console.print(f"[bold red]problem:[/] split {', '.join(empty)} has 0 samples", highlight=False, soft_wrap=True)
    missing_folds = _missing_ravdess_folds(manifest)
    if missing_folds:
        console.print(
            f"[yellow]note:[/] no actor of {', '.join(missing_folds)} in SRC (the 5-fold protocol needs all 24 actors)",
            highlight=False, soft_wrap=True,
        )
    reasons = Counter(skip_reason_kind(s["reason"]) for s in manifest.skipped)
    if reasons:
        console.print(f"skipped {len(manifest.skipped)} sources (all listed in manifest.json):", highlight=False, soft_wrap=True)
        for reason, n in reasons.most_common():
            console.print(f"  {n:6d}  {escape(reason)}", highlight=False, soft_wrap=True)
    faces = manifest.faces
    console.print(f"faces: detected {faces.get('detected', 0)}, centre crop {faces.get('centre', 0)}", highlight=False, soft_wrap=True)
    if manifest.partial:
        console.print(partial_line(manifest), highlight=False, soft_wrap=True)
    console.print(
        f"this run: {result.clips_transcoded} clips in {result.elapsed_s:.1f} s = {result.clips_per_s:.2f} clips/s "
        f"with {result.workers} workers; {result.shards_written} shards written, {result.shards_kept} kept",
        highlight=False,
        soft_wrap=True,
    )
    if result.clips_packed:
        b, n = result.packed_bytes, result.clips_packed
        console.print(
            f"bytes per packed clip: {b['total'] / n / 1e3:.1f} KB in the tar (webm {b['webm'] / n / 1e3:.1f} KB, "
            f"flac {b['flac'] / n / 1e3:.1f} KB)",
            highlight=False,
        soft_wrap=True,
        )


def partial_line(manifest) -> str:
    """``--keep-partial``'s count: samples packed with a placeholder stream."""
    p = manifest.partial
    return (f"partial (--keep-partial): {p.get('no_audio', 0)} without audio, {p.get('no_video', 0)} without usable video "
            "(placeholders, listed in manifest.json)")


def _missing_ravdess_folds(manifest) -> list[str]:
    """RAVDESS folds neither packed nor asked for: a tree with only some actors (fine for a try, not for the protocol)."""
    if manifest.dataset != "ravdess" or manifest.options.get("splits"):
        return []
    from avdali.sources.ravdess import SPLITS

    return [fold for fold in SPLITS if fold not in manifest.splits]

"""``avdali shard ravdess|meld SRC [OUT]``: pack a raw dataset into WebDataset shards (resumable)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from avdali.cli.common import console, err_console, fail, user_errors
from avdali.packing.run import PackEvent, PackFailed, PackResult, pack
from avdali.shardformat.options import PackOptions

app = typer.Typer(
    help="Pack a raw dataset into WebDataset tar shards (VP9 webm + 16 kHz FLAC + labels, DALI .idx, manifest.json).",
    no_args_is_help=True,
)

SizeOpt = Annotated[int, typer.Option("--size", help="Side of the square face crop in pixels (≥ 128).")]
FpsOpt = Annotated[float, typer.Option("--fps", help="Stored video frame rate.")]
MaxSecondsOpt = Annotated[float, typer.Option("--max-seconds", help="Longer clips are cut to their first N seconds.")]
ShardSizeOpt = Annotated[int, typer.Option("--shard-size", help="Source clips per shard.")]
KeyintOpt = Annotated[int, typer.Option("--keyint", help="A keyframe at least every N stored frames (0: one keyframe "
                                        "per clip at the defaults); shorter means larger files. DALI 2.4's NVDEC decoder "
                                        "cannot use it: it decodes every frame from frame 0.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the shuffled order of each split's clips in its shards "
                                      "(recorded in manifest.json). Readers read shards in stored order, so shards hold a "
                                      "mix of labels, not runs of file names (RAVDESS names start with the emotion).")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-j", help="Transcode processes (0 = all cores).")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail when any source is skipped.")]
KeepPartialOpt = Annotated[bool, typer.Option(
    "--keep-partial",
    help="Pack clips with no audio stream or no usable video (no video stream, no decodable or only black frames) "
    "with a silent / black placeholder, marked in meta.i32, the sample json and manifest.json (default: skip them).",
)]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an earlier run in OUT instead of resuming it.")]


def parse_splits(text: str | None) -> tuple[str, ...] | None:
    """``"train,dev"`` → ("train", "dev"); None → None (every split). The reader checks the names."""
    if text is None:
        return None
    return tuple(s.strip() for s in text.split(",") if s.strip()) or ("",)


class ClipsPerSecond(ProgressColumn):
    """Throughput of the running task in clips/s (rich's own speed estimate)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:5.2f} clips/s" if speed else "  -   clips/s", style="progress.data.speed")


class _ProgressPrinter:
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


def run_shard(dataset: str, src: Path, out: Path, options: PackOptions, overwrite: bool) -> None:
    """Pack with a progress bar, print the summary; exit 1 when nothing was packed / strict skips, 130 on Ctrl-C."""
    if not src.exists():
        raise fail(f"{src}: no such folder (SRC must be the raw {dataset} dataset root)")
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        ClipsPerSecond(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    try:
        with progress:
            result = pack(dataset, src, out, options, _ProgressPrinter(progress), overwrite=overwrite)
    except PackFailed as e:
        print_summary(e.result)
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        err_console.print(
            f"[yellow]interrupted:[/] finished shards and {out / 'manifest.json'} are kept; "
            "re-run the same command to resume"
        )
        raise typer.Exit(130) from None
    print_summary(result)


@app.command("ravdess")
@user_errors
def ravdess(
    src: Annotated[Path, typer.Argument(help="RAVDESS folder as downloaded (Actor_XX folders somewhere below it).")],
    out: Annotated[Path, typer.Argument(help="Output folder.")] = Path("shards/ravdess"),
    size: SizeOpt = 128,
    fps: FpsOpt = 15.0,
    max_seconds: MaxSecondsOpt = 10.0,
    shard_size: ShardSizeOpt = 64,
    seed: SeedOpt = 0,
    keyint: KeyintOpt = 0,
    workers: WorkersOpt = 0,
    include_song: Annotated[bool, typer.Option("--include-song", help="Also pack the song recordings.")] = False,
    splits: Annotated[
        str | None, typer.Option("--splits", help="Pack only these actor folds, e.g. fold1,fold2 (default: every fold found).")
    ] = None,
    keep_partial: KeepPartialOpt = False,
    strict: StrictOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Pack RAVDESS (audio-video speech clips, actor folds fold1…fold5) into shards. Re-running resumes.

    SRC may be the folder the zips were unpacked into (one folder per zip or all in one), the Kaggle mirror's
    folder, or a folder up to a few levels above either (/kaggle/input)."""
    options = PackOptions(
        size=size, fps=fps, max_seconds=max_seconds, shard_size=shard_size, shuffle_seed=seed, keyint=keyint, workers=workers,
        include_song=include_song, strict=strict, splits=parse_splits(splits), keep_partial=keep_partial,
    )
    run_shard("ravdess", src, out, options, overwrite)


@app.command("meld")
@user_errors
def meld(
    src: Annotated[Path, typer.Argument(help="MELD folder as downloaded (the *_sent_emo.csv files and clip folders below it).")],
    out: Annotated[Path, typer.Argument(help="Output folder.")] = Path("shards/meld"),
    size: SizeOpt = 128,
    fps: FpsOpt = 15.0,
    max_seconds: MaxSecondsOpt = 10.0,
    shard_size: ShardSizeOpt = 64,
    seed: SeedOpt = 0,
    keyint: KeyintOpt = 0,
    workers: WorkersOpt = 0,
    splits: Annotated[
        str | None, typer.Option("--splits", help="Pack only these splits, e.g. train,dev (default: all three, each must be there).")
    ] = None,
    keep_partial: KeepPartialOpt = False,
    strict: StrictOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Pack MELD (train/dev/test) into shards; unlabeled, missing and broken clips are skipped and listed. Re-running resumes.

    SRC may be the Kaggle dataset folder, its MELD-RAW or MELD.Raw, or the release's MELD.Raw with the inner
    archives unpacked (in place, beside it, or macOS-style into folders named after them)."""
    options = PackOptions(
        size=size, fps=fps, max_seconds=max_seconds, shard_size=shard_size, shuffle_seed=seed, keyint=keyint, workers=workers,
        strict=strict, splits=parse_splits(splits), keep_partial=keep_partial,
    )
    run_shard("meld", src, out, options, overwrite)

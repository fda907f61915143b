"""``avdali shard ravdess|meld SRC [OUT]``: pack a raw dataset into WebDataset shards (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from avdali.cli.common import err_console, fail, user_errors
from avdali.cli.pack_summary import ClipsPerSecond, ProgressPrinter, print_summary
from avdali.packing.run import PackFailed, pack
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
            result = pack(dataset, src, out, options, ProgressPrinter(progress), overwrite=overwrite)
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

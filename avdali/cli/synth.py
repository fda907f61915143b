"""``avdali synth ravdess|meld OUT``: write a look-alike raw dataset tree with a learnable emotion signal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from avdali.cli.common import console, parse_size, user_errors
from avdali.errors import AvdaliError
from avdali.folder_lock import hold_folder
from avdali.synth.jobs import SynthSummary
from avdali.synth.meld import find_meld_csv_dir

app = typer.Typer(
    help="Write synthetic RAVDESS/MELD-like raw trees (real names and layouts; faces and voices that follow the emotion).",
    no_args_is_help=True,
)

OutArg = Annotated[Path, typer.Argument(help="Output folder (created).", show_default=False)]
SizeOpt = Annotated[str, typer.Option("--size", help="Frame size WIDTHxHEIGHT (even sides).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-j", help="Rendering processes.")]


def parse_actors(text: str) -> int | list[int]:
    """``"24"`` → 24 (actors 1..24); ``"1,2,5-8"`` → [1, 2, 5, 6, 7, 8]."""
    text = text.strip()
    try:
        if text.isdigit():
            return int(text)
        out: list[int] = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
        return out
    except ValueError:
        raise AvdaliError(f"--actors must be a count (24) or a list like 1,2,5-8, got {text!r}") from None


def _run_with_progress(what: str, out: Path, make) -> SynthSummary:
    """``make(progress)`` under ``out``'s folder lock (one writer per folder), with a progress bar."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    say = lambda line: console.print(escape(line), highlight=False, soft_wrap=True)  # noqa: E731
    with hold_folder(out, "avdali synth", say), Progress(*columns, console=console, transient=False) as bar:
        tasks = []  # added on the first report, so a bad option fails before any bar is drawn

        def progress(done: int, total: int) -> None:
            if not tasks:
                tasks.append(bar.add_task(what, total=total))
            bar.update(tasks[0], completed=done, total=total)

        return make(progress)


def _report(summary: SynthSummary) -> None:
    console.print(
        f"{summary.dataset}: {summary.clips} clips, {len(summary.files)} files in {summary.root} "
        f"({summary.seconds:.1f} s, {summary.clips_per_s:.2f} clips/s)",
        highlight=False,
    )
    for fault in summary.faults:
        console.print(f"  fault [yellow]{fault.kind}[/]: {fault.split}/{fault.clip}", highlight=False)


@app.command()
@user_errors
def ravdess(
    out: OutArg,
    actors: Annotated[str, typer.Option("--actors", help="Actor count (1..N) or list like 1,2,5-8.")] = "24",
    size: SizeOpt = "1280x720",
    trials: Annotated[int | None, typer.Option("--trials", help="Trials per actor (stratified over emotions); default all 60.")] = None,
    song: Annotated[bool, typer.Option("--song", help="Also write the song recordings (01-02/02-02 mp4, 03-02 wav).")] = False,
    flat: Annotated[bool, typer.Option("--flat", help="Release layout with the wavs beside the mp4s in Actor_XX.")] = False,
    layout: Annotated[
        str, typer.Option("--layout", help="release: Zenodo's zips unpacked into OUT; kaggle: one folder per zip, as the Kaggle mirror.")
    ] = "release",
    partial: Annotated[bool, typer.Option("--partial", help="Make 4 AV clips lack a stream (no audio, no video, black video, black without audio) for `avdali shard --keep-partial`.")] = False,
    seed: SeedOpt = 0,
    workers: WorkersOpt = 1,
) -> None:
    """RAVDESS-like tree: Actor_XX/01-…mp4 (AV), 02-…mp4 (video only), Audio_Speech_Actors_01-24/Actor_XX/03-…wav
    (--layout kaggle: Video_Speech_Actor_XX/Actor_XX/…)."""
    from avdali.synth.ravdess import make_ravdess

    actor_spec, frame_size = parse_actors(actors), parse_size(size)
    summary = _run_with_progress(
        "ravdess",
        out,
        lambda progress: make_ravdess(
            out, actors=actor_spec, size=frame_size, trials_per_actor=trials, song=song, flat=flat, seed=seed,
            workers=workers, progress=progress, layout=layout, partial=partial,
        ),  # fmt: skip
    )
    _report(summary)


@app.command()
@user_errors
def meld(
    out: OutArg,
    csv_dir: Annotated[
        Path | None,
        typer.Option("--csv-dir", help="Folder with the real {train,dev,test}_sent_emo.csv (default: shared/datasets/meld found above the cwd or the package)."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Rows per split, stratified over emotions (default 50; 0 = all).")] = 50,
    size: SizeOpt = "1280x720",
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Cap on a clip's length (CSV timings reach minutes).")] = 6.0,
    encoding: Annotated[str, typer.Option("--encoding", help="CSV encoding: utf-8 (repository) or cp1252 (release archive).")] = "utf-8",
    faults: Annotated[bool, typer.Option("--faults", help="Imitate the release's bad files: missing, empty, truncated, no-audio and unlabelled clips.")] = False,
    partial: Annotated[bool, typer.Option("--partial", help="Add clips lacking a stream (no audio, no video, black video, black without audio) for `avdali shard --keep-partial`.")] = False,
    layout: Annotated[
        str, typer.Option("--layout", help="release: MELD.Raw/ with the inner archives unpacked; kaggle: MELD-RAW/MELD.Raw/ as the Kaggle mirror.")
    ] = "release",
    seed: SeedOpt = 0,
    workers: WorkersOpt = 1,
) -> None:
    """MELD-like tree driven by the real CSVs: MELD.Raw/{split}_sent_emo.csv + clips in the release's folders
    (--layout kaggle: MELD-RAW/MELD.Raw/…, train's CSV in train/)."""
    from avdali.synth.meld import make_meld

    if csv_dir is None:
        csv_dir = find_meld_csv_dir([Path.cwd().resolve(), Path(__file__).resolve().parent])
        if csv_dir is None:
            raise AvdaliError("--csv-dir not given and no shared/datasets/meld/train_sent_emo.csv found above the current folder or the package")
    frame_size = parse_size(size)
    summary = _run_with_progress(
        "meld",
        out,
        lambda progress: make_meld(
            out, csv_dir=csv_dir, limit=limit or None, size=frame_size, max_seconds=max_seconds, seed=seed,
            encoding=encoding, faults=faults, workers=workers, progress=progress, layout=layout,
            partial=partial,
        ),  # fmt: skip
    )
    _report(summary)

"""``avdali demo``: the built-in main job (synthetic RAVDESS → shards → training → test on held-out actors);
``--cross`` adds a MELD model and the cross-dataset table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from avdali.cli.common import console, user_errors
from avdali.errors import AvdaliError
from avdali.synth.meld import find_meld_csv_dir


class RichDemoProgress:
    """One rich progress bar per stage; training reuses ``avdali train``'s reporter."""

    def __init__(self):
        self._bar: Progress | None = None
        self._task = None

    def stage(self, name: str, detail: str) -> None:
        console.rule(f"[bold]{name}", align="left")
        console.print(escape(detail), highlight=False, style="dim")

    def stage_done(self, stage, detail: str) -> None:
        self._stop()
        console.print(f"[green]✓[/] {stage.name} {stage.seconds:.1f} s · {escape(detail)}", highlight=False)

    def synth(self, done: int, total: int) -> None:
        self._update("rendering clips", done, total)

    def pack(self, event) -> None:
        if event.kind == "plan":
            self._update("packing clips", 0, event.clips_total)
        elif event.kind == "clip":
            self._update("packing clips", None, None, advance=1)
        elif event.kind == "note":
            self.message(event.text)
        elif event.kind == "skip" and event.skipped is not None:
            console.print(f"[yellow]skip[/] {escape(event.skipped.source)}: {escape(event.skipped.reason)}", highlight=False)

    def message(self, text: str) -> None:
        console.print(escape(text), highlight=False, soft_wrap=True)

    def reporter(self):
        from avdali.cli.reporting import RichReporter

        return RichReporter()

    def _update(self, what: str, done: int | None, total: int | None, advance: int = 0) -> None:
        if self._bar is None:
            self._bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(what, total=total)
        if advance:
            self._bar.advance(self._task, advance)
        else:
            self._bar.update(self._task, completed=done, total=total)

    def _stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Demo folder (raw/, shards/, runs/); re-running reuses raw/ and shards/.")] = Path("output/demo"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic data and of the training run.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller data (15 actors × 12 trials) and 12 epochs: a check that the whole path works, not the ≥ 90 % demo.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a training config value: section.key=value, repeatable.", show_default=False)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the result (paths, test metrics, stage times) to this JSON file.", show_default=False)] = None,
    cross: Annotated[bool, typer.Option("--cross", help="Also synthesize MELD, train a MELD model and write the cross-dataset table of both models on both datasets (OUT/cross).")] = False,
    meld_csv: Annotated[Optional[Path], typer.Option("--meld-csv", help="With --cross: folder of the real {train,dev,test}_sent_emo.csv (default: shared/datasets/meld found above the cwd or the package).", show_default=False)] = None,
) -> None:
    """Synthesize a RAVDESS-like dataset, pack it into shards, train the fusion model and test it on held-out actors.

    Runs on CPU in a few minutes. Training settings: avdali/configs/demo.toml (= configs/demo.toml). With --cross,
    also a synthetic MELD model and the table of both models on both datasets (`avdali cross`) in OUT/cross.
    """
    from avdali.experiments.demo import FULL, QUICK, run_demo

    if out.exists() and not out.is_dir():
        raise AvdaliError(f"{out}: exists and is not a folder")
    size = QUICK if quick else FULL
    if cross:
        from avdali.experiments.demo_cross import run_cross_demo

        meld_csv = meld_csv or find_meld_csv_dir([Path.cwd().resolve(), Path(__file__).resolve().parent])
        if meld_csv is None:
            raise AvdaliError("--cross needs the real MELD CSVs: pass --meld-csv DIR (no shared/datasets/meld/train_sent_emo.csv found above the current folder or the package)")
        both = run_cross_demo(out, meld_csv=meld_csv, seed=seed, size=size, overrides=tuple(set_ or []), progress=RichDemoProgress())
        result = both.ravdess
    else:
        result = run_demo(out, seed=seed, size=size, overrides=tuple(set_ or []), progress=RichDemoProgress())
    test = result.test
    console.rule("[bold]result", align="left")
    console.print(
        f"test accuracy on held-out actors {', '.join(map(str, result.test_actors))}: [bold]{test['acc']:.1%}[/] "
        f"(unweighted {test['ua']:.1%}, weighted F1 {test['weighted_f1']:.3f}, {int(test['num_samples'])} clips)",
        highlight=False,
    )
    console.print(f"best checkpoint   {escape(str(result.best_checkpoint))}", highlight=False)
    console.print(f"TensorBoard logs  tensorboard --logdir {escape(str(result.run_dir))}", highlight=False)
    console.print(
        "time              " + " · ".join(f"{s.name} {s.seconds:.0f} s{' (reused)' if s.reused else ''}" for s in result.stages)
        + f" · total {result.total_seconds:.0f} s",
        highlight=False,
    )
    if cross:
        from avdali.cli.cross import print_outputs
        from avdali.experiments.cross import markdown

        console.rule("[bold]cross-dataset table", align="left")
        console.print(markdown(both.table), highlight=False, soft_wrap=True, markup=False)
        print_outputs(both.outputs)
        console.print(
            "time (MELD, cross) " + " · ".join(f"{s.name} {s.seconds:.0f} s{' (reused)' if s.reused else ''}" for s in both.stages)
            + f" · total with RAVDESS {both.total_seconds:.0f} s",
            highlight=False,
        )
    if json_out is not None:
        json_out.write_text(json.dumps((both if cross else result).to_dict(), indent=2) + "\n")

"""How a training run shows on the console: the Reporter that ``avdali train``, ``cv`` and ``demo`` hand to
``avdali.train.run.run_training`` (the loop calls it on rank 0 only)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichReporter:
    """Rank 0's console: a progress bar per epoch and one summary line per epoch.

    Built lazily so the object pickles into the ranks ``--procs``/``--gpus`` spawns.
    """

    def __init__(self):
        self._console: Console | None = None
        self._progress: Progress | None = None
        self._task = None
        self._task_name: str | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console()
        return self._console

    def start(self, run_dir, summary: str) -> None:
        self.console.print(f"[bold]avdali train[/] → {run_dir}", highlight=False)
        self.console.print(summary, highlight=False, style="dim")

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self._stop_bar()
        self._task_name = "train"
        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, stats="")

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, steps)

    def log(self, step: int, values: dict[str, float], sums) -> None:
        if self._progress is not None:
            stats = (f"loss {values['loss']:.3f} acc {values['acc']:.3f} lr {values['lr']:.2e} "
                     f"{values['clips_per_s']:.1f} clips/s wait {values['data_wait_frac']:.0%}")
            self._progress.update(self._task, stats=stats)
        self._last_train = values

    def epoch_end(self, epoch: int, epochs: int, summary: dict) -> None:
        self._stop_bar()
        train = getattr(self, "_last_train", {})
        metric = summary["metric"]
        if "loss" in summary:
            val = (f"val loss {summary['loss']:.3f} acc {summary['acc']:.3f} "
                   f"ua {summary['ua']:.3f} wf1 {summary['weighted_f1']:.3f}")
        else:  # a joint run: each dataset's ("ravdess/ua" …) and the joint value
            datasets = dict.fromkeys(k.split("/")[0] for k in summary if "/" in k)
            val = " · ".join(f"val {d} acc {summary[f'{d}/acc']:.3f} ua {summary[f'{d}/ua']:.3f} "
                             f"wf1 {summary[f'{d}/weighted_f1']:.3f}" for d in datasets)
            val += f" · {metric} {summary[metric]:.3f}"
        self.console.print(
            f"epoch {epoch}/{epochs} step {summary['step']} · train loss {train.get('loss', float('nan')):.3f} "
            f"acc {train.get('acc', 0):.3f} {train.get('clips_per_s', 0):.1f} clips/s "
            f"wait {train.get('data_wait_frac', 0):.0%} · {val} · best {metric} {summary['best']:.4f}",
            highlight=False,
        )

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def progress(self, what: str, done: int, total: int) -> None:
        if self._progress is None or self._task_name != what:
            self._stop_bar()
            self._progress = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=self.console, transient=True)
            self._progress.start()
            self._task, self._task_name = self._progress.add_task(what, total=total), what
        self._progress.update(self._task, completed=done)
        if done >= total:
            self._stop_bar()

    def close(self) -> None:
        self._stop_bar()

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress, self._task_name = None, None

    def __getstate__(self):
        # Consoles and live progress bars hold terminals and threads: rebuild them in the rank.
        return {}

    def __setstate__(self, state):
        self.__init__()

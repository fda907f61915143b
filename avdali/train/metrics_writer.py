"""One metrics object for the run (torchtitan's habit): TensorBoard from rank 0, namespaced tags.

Tags: ``train/loss``, ``train/acc``, ``train/lr``, ``train/clips_per_s``, ``train/data_wait_frac``,
``train/step_ms``, ``train/bad_steps``, ``train/mem_gb`` (CUDA), ``val/*`` and ``test/*`` per epoch,
``val/confusion`` (figure), and the hparams table with the final metrics. Every scalar is logged at the
global optimizer step, so a resumed run (``purge_step``) continues the curves with no gaps or duplicates.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from avdali.errors import AvdaliError


def _write_errors(method):
    """A failed event write (disk full, folder gone) as one AvdaliError naming the run folder. TensorBoard writes in
    a background thread and re-raises its OSError at the next call, so every method is wrapped."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            self._writer = None  # a broken writer cannot be flushed or closed again
            raise AvdaliError(f"{self.log_dir}: cannot write TensorBoard events ({e.strerror or e})") from None

    return wrapper


class MetricsWriter:
    """Writes TensorBoard events on rank 0; every method is a no-op on the other ranks."""

    def __init__(self, log_dir: str | Path, *, enabled: bool, purge_step: int | None = None):
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self._writer = None
        if enabled:
            self._open(purge_step)

    @_write_errors
    def _open(self, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: drop events a crashed run wrote after the checkpoint we resume from.
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    @_write_errors
    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """``prefix/name`` for every float/int in ``values`` (arrays and other values are skipped)."""
        if not self._writer:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}/{name}", value, step)

    @_write_errors
    def confusion(self, tag: str, confusion: np.ndarray, class_names: Sequence[str], step: int) -> None:
        """A confusion-matrix image (rows = true class, shaded by row-normalised recall, annotated with counts)."""
        if not self._writer:
            return
        self._writer.add_figure(tag, confusion_figure(confusion, class_names), step, close=True)

    @_write_errors
    def hparams(self, hparams: dict, final_metrics: dict[str, float]) -> None:
        """The run's flattened config next to its final metrics (TensorBoard's HPARAMS tab)."""
        if not self._writer:
            return
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        metrics = {f"hparam/{k}": float(v) for k, v in final_metrics.items()}
        # run_name="." keeps the hparams events in the run folder instead of a timestamped subfolder.
        self._writer.add_hparams(flat, metrics, run_name=".")

    @_write_errors
    def flush(self) -> None:
        if self._writer:
            self._writer.flush()

    @_write_errors
    def close(self) -> None:
        if self._writer:
            self._writer.close()
            self._writer = None


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str]):
    """A matplotlib figure of a confusion matrix (a bare Figure: no pyplot state, no display needed)."""
    from matplotlib.figure import Figure

    confusion = np.asarray(confusion)
    rows = confusion.sum(1, keepdims=True)
    recall = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    n = len(class_names)
    fig = Figure(figsize=(1 + 0.7 * n, 1 + 0.6 * n), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center",
                    color="white" if recall[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    return fig

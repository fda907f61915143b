"""The training loop's logging window: what happened between two logging steps, summed on the device.

The sums stay on the device while the window is open (adding to them never syncs); ``close`` is the one sync of
the training loop: it all-reduces them over ranks and reads them on the host as a ``WindowSums``, whose raw numbers
(clips, seconds, data-wait seconds …) are what a Reporter gets beside the rates written to TensorBoard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from avdali.train.distributed import all_reduce_max, all_reduce_sum


@dataclass(frozen=True)
class WindowSums:
    """One logging window, summed over every rank."""

    steps: int
    """Optimizer steps in the window (this rank's; every rank takes the same)."""
    clips: int
    """Valid clips trained on (padding excluded)."""
    good_clips: int
    """Of those, clips of steps whose loss and gradient were finite (the loss is averaged over these)."""
    correct: int
    """Valid clips whose arg-max prediction was the label."""
    loss_sum: float
    """Sum over good clips of the batch's mean loss (per clip)."""
    bad_steps: int
    """Steps skipped for a non-finite loss or gradient (summed over ranks)."""
    bad_run: int
    """Non-finite steps in a row at the window's end (the longest over ranks)."""
    seconds: float
    """Wall time of the window on this rank: loader wait + steps + this logging step's sync."""
    data_wait_s: float
    """Part of ``seconds`` spent waiting for the next batch."""

    def rates(self) -> dict[str, float]:
        """The window as TensorBoard's ``train/*`` figures (means and rates)."""
        elapsed = self.seconds
        return {
            "loss": self.loss_sum / self.good_clips if self.good_clips else float("nan"),
            "acc": self.correct / self.clips if self.clips else 0.0,
            "clips_per_s": self.clips / elapsed if elapsed > 0 else 0.0,
            "data_wait_frac": self.data_wait_s / elapsed if elapsed > 0 else 0.0,
            "step_ms": 1000.0 * elapsed / max(1, self.steps),
        }


class LogWindow:
    """Running sums of the training steps since the last logging step, kept on ``device``."""

    def __init__(self, device: torch.device):
        self.device = device
        self._bad_run = self._zero(torch.int64)  # spans windows: a run of bad steps may cross a logging step
        self.open()

    def _zero(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros((), dtype=dtype, device=self.device)

    def open(self) -> None:
        """Start a new window now (zero sums, the clock restarted)."""
        self._loss_sum = self._zero(torch.float32)
        self._correct = self._zero(torch.int64)
        self._clips = self._zero(torch.int64)
        self._good_clips = self._zero(torch.int64)
        self._bad = self._zero(torch.int64)
        self.steps = 0
        self.data_wait_s = 0.0
        self.start = time.perf_counter()

    def restart_clock(self) -> None:
        """Time from now (an epoch's start: the loader's set-up between epochs is not a training step's)."""
        self.start = time.perf_counter()

    def add_wait(self, seconds: float) -> None:
        """Time the loop waited for a batch."""
        self.data_wait_s += seconds

    def add_step(self, loss: torch.Tensor, logits: torch.Tensor, label: torch.Tensor, valid: torch.Tensor,
                 bad: torch.Tensor) -> None:
        """One optimizer step: its mean ``loss`` over ``valid`` samples, whether it was ``bad`` (all on the device)."""
        valid = valid.bool()
        good = ~bad
        n_valid = valid.sum()
        self._loss_sum += torch.where(good, loss.detach() * n_valid, 0.0)
        self._correct += ((logits.detach().argmax(1) == label) & valid).sum()
        self._clips += n_valid
        self._bad += bad.long()
        self._bad_run = (self._bad_run + 1) * bad.long()
        self._good_clips += torch.where(good, n_valid, 0)
        self.steps += 1

    def close(self) -> WindowSums:
        """All-reduce the sums over ranks and read them on the host (a device sync), then open the next window."""
        sums = torch.stack([self._loss_sum.double(), self._correct.double(), self._clips.double(),
                            self._good_clips.double(), self._bad.double()])
        loss_sum, correct, clips, good_clips, bad = all_reduce_sum(sums).tolist()
        bad_run = int(all_reduce_max(self._bad_run.clone()).item())
        window = WindowSums(
            steps=self.steps, clips=int(clips), good_clips=int(good_clips), correct=int(correct), loss_sum=loss_sum,
            bad_steps=int(bad), bad_run=bad_run, seconds=time.perf_counter() - self.start, data_wait_s=self.data_wait_s,
        )  # fmt: skip
        self.open()
        return window

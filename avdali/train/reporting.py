"""What a training run tells: the Reporter rank 0 talks through while it runs, and the TrainResult it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from avdali.train.log_window import WindowSums


class Reporter(Protocol):
    """Where rank 0 tells a person how the run goes (the CLI gives a rich console; tests give nothing)."""

    def start(self, run_dir: Path, summary: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def advance(self, steps: int = 1) -> None: ...
    def log(self, step: int, values: dict[str, float], sums: WindowSums) -> None:
        """A logging step: ``values`` as written to TensorBoard (``train/*``), ``sums`` the raw window they came from."""
    def epoch_end(self, epoch: int, epochs: int, summary: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def progress(self, what: str, done: int, total: int) -> None:
        """A task before training (the decoded-frame cache's first pass): ``done`` of ``total``."""
    def close(self) -> None: ...


class NullReporter:
    """Says nothing (ranks other than 0, tests)."""

    def start(self, run_dir, summary): ...
    def epoch_start(self, epoch, epochs, steps): ...
    def advance(self, steps=1): ...
    def log(self, step, values, sums): ...
    def epoch_end(self, epoch, epochs, summary): ...
    def message(self, text): ...
    def progress(self, what, done, total): ...
    def close(self): ...


@dataclass
class RankReport:
    """One rank's end state, gathered by every rank (the check that DDP kept the replicas identical)."""

    rank: int
    """Global rank."""
    weights_sha256: str
    """SHA-256 of the model's parameters and buffers in state-dict order."""
    last_epoch_indices: list[int]
    """Sorted sample indices (valid ones) this rank trained on in its last epoch."""


@dataclass
class TrainResult:
    """What a finished run reports (rank 0's view; every rank gets the same numbers)."""

    run_dir: Path
    """The run folder (config.toml, last.pt, best.pt, TensorBoard events)."""
    step: int
    """Optimizer steps taken in total (including those before a resume)."""
    epoch: int
    """Epochs completed."""
    metric: str
    """Name of the validation metric that picked best.pt."""
    best_metric: float
    """Its best value."""
    val: dict[str, float] = field(default_factory=dict)
    """Last epoch's validation metrics (scalars only)."""
    test: dict[str, float] = field(default_factory=dict)
    """best.pt's test metrics (empty when there are no test splits or ``train.test_at_end`` is false)."""
    robustness: dict[str, dict[str, float]] = field(default_factory=dict)
    """best.pt's test metrics per modality it can serve ("both" = ``test``, "audio", "video"; ``avdali.train.modality``)."""
    bad_steps: int = 0
    """Steps skipped for a non-finite loss or gradient."""
    ranks: list[RankReport] = field(default_factory=list)
    """Every rank's end state (one entry per rank)."""
    rank: int = 0
    """The rank that returned this result (under torchrun every process gets one; rank 0 reports)."""

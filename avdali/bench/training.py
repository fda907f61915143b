"""Training throughput (clips/s) and data-wait share with the DALI and torch loaders side by side, on the same model
and config; on CUDA also with AMP and torch.compile on and off (``avdali bench train`` prints what this measures).

The numbers come from the real training loop (``avdali.train.loop.Trainer``): every variant is a short run of
``run_training`` in a temporary folder with ``train.log_every = 1``, and a Reporter that reads the loop's own
per-step figures (step time, data-wait time, clips) and stops the run after the measured steps. Logging every
step synchronises the device every step: that is what makes a per-step data-wait figure mean something on CUDA
(without a sync, waiting for the loader and waiting for queued kernels cannot be told apart).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
from pathlib import Path

from avdali.errors import AvdaliError
from avdali.train.config_toml import load_config, toml_literal
from avdali.train.log_window import WindowSums

UNLIMITED_EPOCHS = 1_000_000
"""Epochs asked of a bench run: it never ends on its own; the reporter stops it after the measured steps."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One measured configuration."""

    loader: str
    """``dali`` or ``torch``."""
    amp: str
    """Autocast precision (``none``, ``bf16``, ``fp16``; ``auto`` resolves per device)."""
    compile: bool | str
    """torch.compile on/off (``auto`` resolves per device)."""


@dataclasses.dataclass
class VariantFigures:
    """What one variant measured over the timed steps (warm-up excluded)."""

    variant: Variant
    """The configuration."""
    steps: int
    """Optimizer steps timed."""
    clips: int
    """Valid clips trained on in those steps."""
    seconds: float
    """Wall time of those steps (loader wait + step + per-step logging)."""
    data_wait_s: float
    """Part of ``seconds`` spent waiting for the next batch."""

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_frac(self) -> float:
        return self.data_wait_s / self.seconds if self.seconds > 0 else 0.0

    @property
    def step_ms(self) -> float:
        return 1000.0 * self.seconds / self.steps if self.steps else 0.0

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self.variant),
            "steps": self.steps,
            "clips": self.clips,
            "seconds": round(self.seconds, 4),
            "clips_per_s": round(self.clips_per_s, 3),
            "data_wait_frac": round(self.data_wait_frac, 4),
            "step_ms": round(self.step_ms, 2),
        }


class _Done(Exception):
    """Raised by the reporter once the timed steps are in: ends the bench run early."""


class StepRecorder:
    """A training Reporter that sums the loop's per-step windows after ``warmup`` steps and stops at ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int):
        self.warmup = warmup
        self.steps = steps
        self.timed_steps = 0
        self.clips = 0
        self.seconds = 0.0
        self.data_wait_s = 0.0

    def log(self, step: int, values: dict[str, float], sums: WindowSums) -> None:
        # log_every = 1: each call covers exactly one step; the window's raw sums, not its rates, are added up.
        if step > self.warmup:
            self.timed_steps += sums.steps
            self.seconds += sums.seconds
            self.data_wait_s += sums.data_wait_s
            self.clips += sums.clips
        if step >= self.warmup + self.steps:
            raise _Done

    def start(self, run_dir, summary): ...
    def epoch_start(self, epoch, epochs, steps): ...
    def advance(self, steps=1): ...
    def epoch_end(self, epoch, epochs, summary): ...
    def message(self, text): ...
    def close(self): ...


def variants_for(device: str, loaders: list[str], amp: str, compile: bool | str, grid: bool = True) -> list[Variant]:
    """Loaders side by side with the config's precision and compile; on CUDA every AMP × compile pair as well
    (``grid``), or only the config's (``auto``: bf16 and compiled)."""
    if device == "cuda" and not grid:
        return [Variant(loader, amp if amp != "auto" else "bf16", compile if compile != "auto" else True) for loader in loaders]
    if device != "cuda":
        return [Variant(loader, amp if amp != "auto" else "none", compile if compile != "auto" else False) for loader in loaders]
    return [Variant(loader, a, c) for loader in loaders for a in ("bf16", "none") for c in (True, False)]


def measure_variant(config: Path, overrides: list[str], variant: Variant, warmup: int, steps: int) -> VariantFigures:
    """One short training run of ``variant`` (in a temporary run folder); its per-step figures summed."""
    import torch

    from avdali.train.run import run_training

    torch._dynamo.reset()  # each variant compiles afresh, as its own training run would (no shared recompile budget)
    recorder = StepRecorder(warmup, steps)
    with tempfile.TemporaryDirectory(prefix="avdali-bench-train-") as tmp:
        cfg = load_config(config, [
            *overrides,
            f"data.loader={variant.loader}",
            f"train.amp={toml_literal(variant.amp)}",
            f"train.compile={toml_literal(variant.compile)}",
            "train.log_every=1",
            f"train.epochs={UNLIMITED_EPOCHS}",
            "train.test_at_end=false",
            f"train.run_dir={toml_literal(str(Path(tmp) / 'run'))}",
        ])  # fmt: skip
        try:
            run_training(cfg, reporter=recorder)
        except _Done:
            pass
    if recorder.timed_steps < steps:
        raise AvdaliError(f"bench train: the {variant.loader} run stopped after {recorder.timed_steps} of {steps} timed steps")
    return VariantFigures(variant, recorder.timed_steps, recorder.clips, recorder.seconds, recorder.data_wait_s)


def bench_training(
    shards: Path, config: Path, loaders: list[str], steps: int, warmup: int, overrides: list[str], progress=None,
    batch_sizes: list[int] | None = None, peak: float | None = None, grid: bool = True,
) -> dict:
    """Measure every variant on ``shards`` (at each of ``batch_sizes``, default the config's); the figures as a
    JSON-ready dict, with FLOPs per clip, achieved TFLOP/s and MFU (``peak`` TFLOP/s, default from the GPU's name)."""
    import torch

    from avdali.train.distributed import resolve_device
    from avdali.bench.flops import PEAK_SOURCE, peak_tflops, run_flops_per_clip, throughput_figures

    if not (shards / "manifest.json").is_file():
        raise AvdaliError(f"{shards}: no manifest.json (SHARDS must be a folder written by `avdali shard`)")
    overrides = [f"data.shards={toml_literal(str(shards))}", *overrides]
    base = load_config(config, overrides)
    device = resolve_device(base.train.device)
    flops_per_clip = run_flops_per_clip(base)
    if peak is None and device == "cuda":
        peak = peak_tflops(torch.cuda.get_device_name())
    results = []
    for batch in batch_sizes or [base.data.pipeline.batch_size]:
        for variant in variants_for(device, loaders, base.train.amp, base.train.compile, grid):
            if progress:
                progress(variant, batch)
            r = measure_variant(config, [*overrides, f"data.batch_size={batch}"], variant, warmup, steps)
            results.append({"batch_size": batch, **r.to_dict(), **throughput_figures(flops_per_clip, r.clips_per_s, peak)})
    return {
        "machine": {
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "torch": torch.__version__,
        },
        "shards": str(shards),
        "config": str(config),
        "overrides": overrides,
        "batch_size": base.data.pipeline.batch_size,
        "frames": base.data.pipeline.frames,
        "crop": base.data.pipeline.crop,
        "warmup_steps": warmup,
        "peak_tflops": peak,
        "peak_source": PEAK_SOURCE if peak is not None else None,
        "flops_counted_by": "torch.utils.flop_counter.FlopCounterMode, one forward+backward of one clip on the meta device",
        "results": results,
    }

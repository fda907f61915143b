"""``avdali train``: parse options, turn them into config overrides, call ``avdali.train.run.run_training``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from avdali.cli.common import check_choice, user_errors
from avdali.cli.reporting import RichReporter
from avdali.errors import AvdaliError
from avdali.train.config import DEVICE_CHOICES
from avdali.train.config_toml import toml_literal


@user_errors
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Run config TOML (configs/ravdess.toml …); with --resume the run folder's config.toml is the default.", show_default=False)] = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", help="Start N ranks on this node, one GPU each (NCCL).", show_default=False)] = None,
    procs: Annotated[Optional[int], typer.Option("--procs", help="Start N CPU ranks on this node (gloo).", show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu | cuda | auto (= train.device).", show_default=False)] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Run folder (default: a new output/<name>-<time>).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --run-dir from its last.pt.")] = False,
    fold: Annotated[Optional[int], typer.Option("--fold", help="RAVDESS test fold 1-5 (= data.fold).", show_default=False)] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model (= train.compile; default: on CUDA).", show_default=False)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: section.key=value (TOML literal), repeatable.", show_default=False)] = None,
) -> None:
    """Train the audio-visual fusion model; writes config.toml, last.pt, best.pt and TensorBoard events to the run folder.

    Precedence: config defaults < --config file < --set and the flags above. Multi-node: start the same
    command with `torchrun --nnodes … -m avdali train …` (each rank reads RANK/LOCAL_RANK/WORLD_SIZE).
    """
    from avdali.train.config_toml import load_config
    from avdali.train.run import run_training

    nprocs, device = _ranks(gpus, procs, device)
    if config is None:
        if not (resume and run_dir):
            raise AvdaliError("--config is required (or --resume --run-dir DIR to continue a run)")
        config = run_dir / "config.toml"
    overrides = list(set_ or [])
    if device is not None:
        overrides.append(f"train.device={device}")
    if fold is not None:
        overrides.append(f"data.fold={fold}")
    if run_dir is not None:
        overrides.append(f"train.run_dir={toml_literal(str(run_dir))}")
    if compile is not None:
        overrides.append(f"train.compile={'true' if compile else 'false'}")
    cfg = load_config(config, overrides)
    result = run_training(cfg, resume=resume, nprocs=nprocs, reporter=RichReporter())
    if result.rank != 0:
        return  # under torchrun every rank returns here; rank 0 speaks
    test = f" · test {result.metric} {result.test[result.metric]:.4f}" if result.metric in result.test else ""
    single = [f"{m} only {r[result.metric]:.4f}" for m, r in result.robustness.items() if m != "both" and result.metric in r]
    test += f" ({', '.join(single)})" if single else ""
    Console().print(
        f"[bold green]done[/] {result.epoch} epochs, {result.step} steps · best val {result.metric} "
        f"{result.best_metric:.4f}{test} · {result.run_dir}",
        highlight=False,
    )


def _ranks(gpus: int | None, procs: int | None, device: str | None) -> tuple[int, str | None]:
    """Local ranks to start and the device they use; errors for impossible combinations."""
    if gpus is not None and procs is not None:
        raise AvdaliError("--gpus and --procs exclude each other (GPU ranks vs CPU ranks)")
    check_choice("--device", device, DEVICE_CHOICES)
    if gpus is not None:
        if device == "cpu":
            raise AvdaliError("--gpus starts GPU ranks; use --procs N for CPU ranks")
        if gpus < 1:
            _bad_count("--gpus", gpus)
        from avdali.train.distributed import check_local_ranks

        check_local_ranks(gpus, "cuda")
        return gpus, "cuda"
    if procs is not None:
        if procs < 1:
            _bad_count("--procs", procs)
        if device == "cuda":
            raise AvdaliError("--procs starts CPU ranks; use --gpus N for GPU ranks")
        return procs, "cpu"
    if device is not None:
        from avdali.train.distributed import resolve_device

        resolve_device(device)  # --device cuda without CUDA fails here, before anything is loaded
    return 1, device


def _bad_count(flag: str, value: int) -> None:
    raise AvdaliError(f"{flag} must be ≥ 1, got {value}")

"""A training run from config to result: what ``avdali train`` calls (``run_training``).

``run_training`` resolves the config once (device, precision, compile, metric, run folder, ``resolve_config``) with
the run's split plan (``plan.plan_run``), holds the run folder's lock, then trains in this process or starts N local
ranks through torch.distributed's elastic launcher; every rank runs ``train``, one ``loop.Trainer``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

from avdali.errors import AvdaliError
from avdali.folder_lock import hold_folder
from avdali.machine import libraries
from avdali.train import checkpoint as ckpt
from avdali.train.config import RunConfig
from avdali.train.distributed import (
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    launch_local,
    launcher_rank,
    resolve_device,
    under_launcher,
)
from avdali.train.loop import Trainer
from avdali.train.reporting import Reporter, TrainResult
from avdali.train.plan import RunPlan, default_metric, plan_run


def resolve_config(cfg: RunConfig, *, resume: bool = False, now: datetime | None = None) -> tuple[RunConfig, RunPlan]:
    """Fill every "auto" (device, amp, compile, metric), the dataset and the run folder: the config that gets written
    down; and the run's split plan. Each shard folder's manifest is read here once: what only it knows
    (``plan.check_shards_fit``: packing finished, dataset, label space, stored frame size; a joint run's rules) is
    checked before anything is written, for every entry point (``avdali train``, ``cv``, ``demo``, ``bench train``)."""
    device = resolve_device(cfg.train.device)
    plan = plan_run(cfg.data, cfg.train)
    train = cfg.train
    run_dir = train.run_dir
    if not run_dir:
        if resume:
            raise AvdaliError("--resume needs the run folder to continue: pass --run-dir DIR")
        stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
        run_dir = str(Path("output") / f"{train.name}-{stamp}")
    resolved = dataclasses.replace(
        cfg,
        # Written down so that a checkpoint says which dataset it learned from after its shards move (`avdali cross`).
        data=dataclasses.replace(cfg.data, dataset=cfg.data.dataset or plan.dataset),
        train=dataclasses.replace(
            train,
            device=device,
            amp=train.amp if train.amp != "auto" else ("bf16" if device == "cuda" else "none"),
            compile=train.compile if train.compile != "auto" else device == "cuda",
            # a joint run keeps "auto": each dataset's own metric (plan.dataset_metric)
            metric=train.metric if train.metric != "auto" or plan.joint else default_metric(plan.dataset),
            run_dir=run_dir,
        ),
    )
    return resolved, plan


def run_training(cfg: RunConfig, *, resume: bool = False, nprocs: int = 1, reporter: Reporter | None = None) -> TrainResult:
    """Resolve ``cfg`` and train: in this process, on ``nprocs`` local ranks, or as one rank of a torchrun job.

    The run folder's lock (``avdali.folder_lock``) is held once per run: by this process when it trains alone or
    starts the local ranks, by rank 0 under torchrun. A second run into the same folder stops at once.
    """
    libraries.require(libraries.loader_parts(cfg.data.pipeline.loader))  # before ranks and DataLoader workers start
    cfg, plan = resolve_config(cfg, resume=resume)
    run_dir = Path(cfg.train.run_dir)
    if under_launcher() and launcher_rank() != 0:
        return _run_training_locked(cfg, run_dir, plan, resume, nprocs, reporter)
    say = reporter.message if reporter is not None else None
    with hold_folder(run_dir, "avdali train", say):
        return _run_training_locked(cfg, run_dir, plan, resume, nprocs, reporter)


def _run_training_locked(
    cfg: RunConfig, run_dir: Path, plan: RunPlan, resume: bool, nprocs: int, reporter: Reporter | None
) -> TrainResult:
    # checked under the lock: two runs could otherwise both see no last.pt and both start
    if not resume and (run_dir / ckpt.LAST).exists():
        raise AvdaliError(f"{run_dir} already holds a run ({ckpt.LAST}); pass --resume to continue it or choose another --run-dir")
    if resume and not (run_dir / ckpt.LAST).exists():
        raise AvdaliError(f"--resume: {run_dir / ckpt.LAST} not found")
    if nprocs > 1 and not under_launcher():
        results = launch_local(train, (cfg, plan, resume, reporter), nprocs)
        return results[0]
    return train(cfg, plan, resume=resume, reporter=reporter)


def train(cfg: RunConfig, plan: RunPlan, resume: bool = False, reporter: Reporter | None = None) -> TrainResult:
    """One rank's whole run (``cfg`` and ``plan`` from ``resolve_config``); joins and leaves the process group."""
    info = init_distributed(resolve_device(cfg.train.device))
    try:
        # Every rank must write to the folder rank 0 named (under torchrun, nodes may resolve "now" differently).
        run_dir = broadcast_object(cfg.train.run_dir)
        if run_dir != cfg.train.run_dir:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=run_dir))
        return Trainer(cfg, plan, info, resume=resume, reporter=reporter if info.is_main else None).fit()
    finally:
        cleanup_distributed()

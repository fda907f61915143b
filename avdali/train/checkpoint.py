"""Atomic checkpoints (timm's CheckpointSaver habit): write ``*.tmp``, then ``os.replace`` onto the name.

A checkpoint holds only tensors and primitive containers, so ``torch.load(weights_only=True)`` reads it:
model (the raw module's state dict: no ``_orig_mod.``/``module.`` prefixes), optimizer, GradScaler,
schedule, step, epoch, best metric, the resolved config as a plain dict, and the RNG states.
"""

from __future__ import annotations

import pickle
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avdali.errors import AvdaliError
from avdali.files import atomic_write

LAST = "last.pt"
BEST = "best.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact.

    A failed write (disk full, read-only folder) removes the ``.tmp`` and raises an AvdaliError naming ``path``.
    """
    # Through a Python file: torch.save(state, str) reports a full disk only as an opaque C++ RuntimeError
    # ("unexpected pos …"); a file object's write raises the OSError (ENOSPC) that says what happened.
    return atomic_write(path, lambda f: torch.save(state, f), what="the checkpoint")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (AvdaliError naming the file if missing or unreadable, and
    refusing one that carries arbitrary pickled objects: their code never runs)."""
    path = Path(path)
    if not path.is_file():
        raise AvdaliError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", str(e), re.IGNORECASE)
        if not found:  # not a pickle at all, or a broken one
            raise AvdaliError(f"{path}: not a readable checkpoint ({_reason(e)})") from None
        # weights_only refuses any global outside tensors and plain containers before calling it, so nothing ran
        raise AvdaliError(
            f"{path}: refused: the file holds pickled Python objects ({found.group(1)}), not only tensors and plain values; "
            "avdali checkpoints never do, and loading it could run code"
        ) from None
    except Exception as e:  # torch raises many kinds (zip, truncated file, ...)
        raise AvdaliError(f"{path}: not a readable checkpoint ({_reason(e)})") from None


def _reason(error: Exception) -> str:
    """One line of a torch.load error: the unpickler's own reason when there is one (torch's first line is advice)."""
    text = str(error).strip()
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if found:
        return found.group(1).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass
class Counters:
    """Where a run stands: what a checkpoint carries besides weights and optimizer state, and a resume restores."""

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """Epochs completed."""
    best_metric: float = float("-inf")
    """Best validation metric so far."""
    bad_steps: int = 0
    """Steps skipped for a non-finite loss or gradient."""
    val: dict[str, float] = field(default_factory=dict)
    """The latest validation metrics (scalars)."""


def training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    counters: Counters,
    *,
    schedule: dict[str, Any],
    metric: str,
    world_size: int,
    config: dict[str, Any],
    rng: list[dict[str, Any]],
) -> dict[str, Any]:
    """What ``last.pt``/``best.pt`` hold: ``model`` is the raw module (no compile/DDP prefixes), ``rng`` every rank's
    ``rng_state()`` in rank order, ``config`` the resolved run config as a plain dict."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "scheduler": schedule,
        "step": counters.step,
        "epoch": counters.epoch,
        "best_metric": counters.best_metric,
        "metric": metric,
        "val": counters.val,
        "bad_steps": counters.bad_steps,
        "world_size": world_size,
        "config": config,
        "rng": rng,
    }


def resume_training_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    device: torch.device,
    rank: int,
    world_size: int,
) -> Counters:
    """Load ``path`` into ``model``, ``optimizer`` and ``scaler``, restore this rank's RNG streams (when the run had
    as many ranks), and return the run's counters. AvdaliError naming the file when it does not fit the model."""
    state = load_checkpoint(path, map_location=device)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise AvdaliError(f"{path}: does not fit this run's [model]/[optim] config ({first})") from None
    scaler.load_state_dict(state["scaler"])
    rng = state.get("rng") or []
    if len(rng) == world_size:
        set_rng_state(rng[rank])
    return Counters(
        step=int(state["step"]),
        epoch=int(state["epoch"]),
        best_metric=float(state["best_metric"]),
        bad_steps=int(state.get("bad_steps", 0)),
        val=dict(state.get("val", {})),
    )


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) RNG states as tensors and primitives."""
    np_state = np.random.get_state()
    state = {
        "python": _listify(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved (so dropout and augmentation continue as if uninterrupted)."""
    random.setstate(_tuplify(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, tuple) else value


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value

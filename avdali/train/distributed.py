"""The one place that knows about ranks: init from torchrun's environment, collectives, and the launcher.

A rank learns its place from the environment torch.distributed's elastic launcher sets (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT), whether ``avdali train --procs N``/``--gpus N`` started it
through ``launch_local`` or ``torchrun --nnodes … -m avdali train …`` did. NCCL on CUDA, gloo on CPU.
(The habit of open_clip's ``init_distributed_device``.)
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from avdali.errors import AvdaliError

COLLECTIVE_TIMEOUT = timedelta(minutes=10)
"""How long a rank waits in a collective for the others before failing (gloo's default is 30 min). A rank that
dies is noticed at once (the launcher stops the group); this bounds the wait for one that hangs or whose node
vanished. Generous because rank 0 writes checkpoints while the others wait at the next collective."""


@dataclass(frozen=True)
class DistInfo:
    """This process' place in the job."""

    rank: int
    """Global rank, 0 … world_size-1."""
    local_rank: int
    """Rank on this node (the GPU index on CUDA)."""
    world_size: int
    """Number of ranks in the job."""
    device: torch.device
    """Where this rank computes: ``cpu`` or ``cuda:LOCAL_RANK``."""
    local_world_size: int = 1
    """Ranks on this node (they share its CPU cores: ``data.num_threads = 0``)."""

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder, checkpoints and TensorBoard."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_launcher() -> bool:
    """True when a torch.distributed launcher started this process (it set WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launcher_rank() -> int:
    """This process's global rank as the launcher set it (0 when no launcher started it)."""
    return int(os.environ.get("RANK", 0))


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when CUDA is available, else ``cpu``; ``cuda`` without CUDA is an AvdaliError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise AvdaliError("--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is False)")
    if device not in ("cpu", "cuda"):
        raise AvdaliError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return device


def init_distributed(device: str) -> DistInfo:
    """Join the process group when launched with several ranks; pick this rank's device.

    ``device`` is ``cpu`` or ``cuda`` (resolved). Multi-rank CPU runs use gloo, CUDA runs NCCL.
    """
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise AvdaliError(
                f"LOCAL_RANK {local_rank} needs GPU {local_rank}, but only {torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        # device_id binds NCCL to this rank's GPU eagerly (no guessing in barrier()).
        kwargs = {"device_id": torch_device} if device == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=COLLECTIVE_TIMEOUT, **kwargs)
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=torch_device,
                    local_world_size=local_world_size)


def cleanup_distributed() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (identity on one rank); a synchronising collective."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Max of a tensor over ranks in place (identity on one rank)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order ([obj] on one rank). Used for evaluation results."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself on one rank)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each training forward, so after an epoch's last step every rank
    still holds statistics of its own last batch; evaluation and checkpoints need one set.
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def check_local_ranks(nprocs: int, device: str) -> None:
    """Refuse a local multi-rank launch that cannot run (AvdaliError naming the option)."""
    if nprocs < 1:
        raise AvdaliError(f"--procs/--gpus must be ≥ 1, got {nprocs}")
    if device == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if nprocs > available:
            raise AvdaliError(f"--gpus {nprocs}: only {available} CUDA GPU(s) available on this machine")


def launch_local(entrypoint: Callable[..., Any], args: tuple, nprocs: int) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` on ``nprocs`` ranks of this node through torch.distributed's elastic launcher.

    The same settings as ``torchrun --standalone --nproc-per-node N``: a c10d rendezvous on a free local
    port, spawned workers (never fork: audio and CUDA libraries do not survive it), no restarts.
    Returns each local rank's return value. When a rank fails (an error, or killed by a signal) the launcher stops
    the others at once (SIGTERM, then SIGKILL) and this raises AvdaliError naming the rank and its error line.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nprocs,
        run_id=f"avdali-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        start_method="spawn",
        monitor_interval=0.1,
    )
    try:
        return elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = _failure_message(failure)
        others = f"; the other {nprocs - 1} rank(s) were stopped" if nprocs > 1 else ""
        raise AvdaliError(f"rank {rank} failed: {message}{others}") from None


def _failure_message(failure) -> str:
    """One line from a worker failure: the exception message its error file recorded, or the signal that killed it."""
    if failure.exitcode < 0:  # a signal: the process could not record anything itself
        return f"killed by {failure.signal_name()} (exit code {failure.exitcode}, pid {failure.pid})"
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "") or message.get("extraInfo", {}).get("py_callstack", "")
    text = str(message or f"exit code {failure.exitcode}").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # The recorded message is "ExceptionType: text" (possibly with a traceback); keep the last line.
    return lines[-1] if lines else text

"""Choosing and building a loader: the one entry point training, evaluation and the benchmark use."""

from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence

from avdali.machine import libraries as native  # the library probes (machine/libraries.py)
from avdali.data import order
from avdali.data.batch import Batch
from avdali.data.config import DataConfig, resolve_threads
from avdali.data.integrity import verify_shards
from avdali.data.shards import list_splits, probe_frame_size, resolve
from avdali.errors import AvdaliError

__all__ = ["Loader", "build_loader", "list_splits"]


class Loader(Protocol):
    """What both loaders offer."""

    num_samples: int
    """Samples in the chosen splits (all ranks together)."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int:
        """Batches per epoch per rank (the same on every rank)."""

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (training: seed per rank and epoch)."""


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise AvdaliError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise AvdaliError("device 'cuda' asked for, but CUDA is not available here (use device 'cpu')")


def build_loader(
    cfg: DataConfig,
    splits: Sequence[str],
    *,
    train: bool,
    device: str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    local_ranks: int = 1,
    say: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Loader:
    """A loader over ``splits`` of ``cfg.shards`` for one rank.

    ``train``: every epoch a new share of the tars for this rank (``order.py``), shuffled and (with ``cfg.augment``)
    augmented; otherwise read in order, every sample exactly once over all ranks (padding marked ``valid=False``).
    ``device``: ``"cpu"`` or ``"cuda"`` (batches arrive on the current CUDA device, which the caller sets to
    LOCAL_RANK). ``local_ranks``: ranks on this machine, which share its cores (``data.num_threads = 0``). With
    ``cfg.verify`` the tars this rank can read are checked against the manifest's SHA-256 first (in training: all
    of them, since ranks trade tars between epochs). With ``cfg.speaker_norm`` every batch passes through the speaker
    stage (``speakers.SpeakerNorm``) on its device. With ``cfg.cache`` the decoded-frame cache (``cache.py``) may
    serve the DALI loader's batches: ``say`` gets the one line that says whether and why, ``progress(done, total)``
    follows its first pass.
    """
    _check_device(device)
    native.require(native.loader_parts(cfg.loader))  # in this process, before any worker or pipeline thread starts
    if not 0 <= rank < world_size:
        raise AvdaliError(f"rank {rank} is outside world size {world_size}")
    shardset = resolve(cfg.shards, list(splits))
    if cfg.verify:
        parts = order.rank_epoch(shardset, rank, world_size, train=False)
        verify_shards(shardset, [f.tar for f in shardset.files] if train else [p.span.tar for p in parts])
    cfg = resolve_threads(cfg, local_ranks)
    loader = None
    if cfg.cache != "off" and cfg.loader == "dali":  # "auto" with the torch loader streams
        from avdali.data.cache import build_cached

        loader = build_cached(cfg, shardset, train=train, device=device, rank=rank, world_size=world_size, seed=seed,
                              frame_size=probe_frame_size(shardset), say=say, progress=progress)
    if loader is None:
        loader = _build(cfg, shardset, train=train, device=device, rank=rank, world_size=world_size, seed=seed)
    if not cfg.speaker_norm:
        return loader
    from avdali.data import speakers

    store = getattr(loader, "store", None)  # a decoded-frame cache: its statistics need no second pass
    compute = (lambda: speakers.stats_from_cache(store, shardset, cfg)) if store is not None else None
    stats = speakers.load_speaker_stats(shardset.root, cfg, compute)
    return speakers.SpeakerNormalised(loader, speakers.SpeakerNorm.for_shards(stats, shardset))


def _build(cfg: DataConfig, shardset, *, train: bool, device: str, rank: int, world_size: int, seed: int) -> Loader:
    if cfg.loader == "dali":
        try:
            from avdali.data.dali import DaliLoader
        except ImportError as e:
            raise AvdaliError(f"NVIDIA DALI cannot be imported ({e}); install nvidia-dali or set data.loader = \"torch\"") from None
        return DaliLoader(
            cfg, shardset, train=train, device=device, rank=rank, world_size=world_size, seed=seed,
            frame_size=probe_frame_size(shardset),  # DALI's crop needs it before the first frame is decoded
        )
    from avdali.data.torch_loader import TorchLoader

    return TorchLoader(cfg, shardset, train=train, device=device, rank=rank, world_size=world_size, seed=seed)

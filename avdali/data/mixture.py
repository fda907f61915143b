"""One training loader over several datasets' training loaders: every sample's dataset drawn by weight.

A joint run (``data.shards`` = several folders) trains on each folder's own loader (DALI or torch, unchanged) through
``MixtureLoader``. It keeps a buffer of valid samples per dataset and builds each batch of ``batch_size`` samples
by drawing every sample's dataset with probability ∝ its weight (``data.mix``), so a batch mixes datasets and
BatchNorm's statistics never see one dataset alone. A buffer that runs short pulls the next batch of its loader;
an exhausted loader starts its next pass (a new ``set_epoch``: reshuffled). Padding rows (``valid`` False) are
dropped from the buffers, so every row of a mixture batch is a real sample and ``valid`` is all True.

Determinism: the draws come from a generator seeded by (seed, rank, epoch); pass k of a dataset's loader in
mixture epoch e is that loader's epoch ``e * PASS_STRIDE + k``. Each mixture epoch starts with empty buffers and
fresh passes, so epoch e is the same whether or not the run resumed before it.

Steps per epoch: ``num_samples // (batch_size · world_size)`` with ``num_samples`` the union of the training splits,
the same on every rank: one epoch draws about as many samples as the union holds (a dataset with a large weight
is seen more than once per epoch, one with a small weight partly).

``index`` stays unique across datasets: dataset d's indices are shifted by the sizes of the datasets before it
(``offsets``), so the training loop's per-rank index lists still name each sample once.

Rows of a batch are grouped by dataset in ``loaders`` order (the order inside a batch means nothing to the loss
or to BatchNorm). A CUDA batch's ``valid`` is read on the host once per pulled batch (one small copy).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Sequence

import numpy as np
import torch

from avdali.data.batch import Batch
from avdali.errors import AvdaliError

PASS_STRIDE = 1000
"""Loader epochs reserved per mixture epoch (pass k of epoch e is loader epoch e * PASS_STRIDE + k)."""
_MIX_TAG = 0x6D6978  # "mix": keeps the draw stream apart from the loaders' own (seed, rank, epoch) streams


class MixtureLoader:
    """The Loader contract (``num_samples``, ``len``, ``set_epoch``, iteration) over weighted per-dataset loaders."""

    def __init__(self, loaders: Sequence, weights: Sequence[float], *, batch_size: int, world_size: int = 1,
                 rank: int = 0, seed: int = 0, names: Sequence[str] = ()):
        if len(loaders) != len(weights) or not loaders:
            raise AvdaliError(f"a mixture needs one weight per loader, got {len(weights)} for {len(loaders)}")
        if any(not np.isfinite(w) or w <= 0 for w in weights):
            raise AvdaliError(f"mixture weights must be positive, got {list(weights)}")
        self.loaders = list(loaders)
        self.names = list(names) or [f"loader{i}" for i in range(len(loaders))]
        self.probs = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        """Probability of each loader per sample (the weights normalised)."""
        self.batch_size, self.world_size, self.rank, self.seed = batch_size, world_size, rank, seed
        sizes = [int(loader.num_samples) for loader in self.loaders]
        self.num_samples = sum(sizes)
        """Samples in all loaders' splits together (all ranks)."""
        self.offsets = [int(x) for x in np.cumsum([0, *sizes[:-1]])]
        """Added to each loader's ``index``: indices stay unique across datasets."""
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch and rank: the union's samples over (batch_size · world_size)."""
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Seeds the draws of ``epoch``; the loaders' passes in it are their epochs ``epoch * PASS_STRIDE + k``."""
        self.epoch = epoch

    def draws(self, epoch: int | None = None) -> np.ndarray:
        """The dataset of every sample of ``epoch`` (this rank), ``len() × batch_size``: what ``__iter__`` follows."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, self.rank, epoch, _MIX_TAG])
        return rng.choice(len(self.loaders), size=(len(self), self.batch_size), p=self.probs)

    def __iter__(self):
        sources = [_Source(loader, offset, self.epoch, name)
                   for loader, offset, name in zip(self.loaders, self.offsets, self.names)]
        try:
            for row in self.draws():
                counts = np.bincount(row, minlength=len(sources))
                yield concat_batches([source.take(int(n)) for source, n in zip(sources, counts) if n])
        finally:
            for source in sources:
                source.close()  # an abandoned DALI epoch is rebuilt on its next pass


class _Source:
    """One loader's buffer of valid samples, refilled batch by batch; restarts the loader when it runs out."""

    def __init__(self, loader, offset: int, epoch: int, name: str):
        self.loader, self.offset, self.epoch, self.name = loader, offset, epoch, name
        self.passes = 0
        self.iterator = None
        self.pass_rows = 0
        self.chunks: list[Batch] = []
        self.buffered = 0

    def take(self, n: int) -> Batch:
        while self.buffered < n:
            self._pull()
        out, need = [], n
        while need:
            chunk = self.chunks[0]
            if len(chunk) <= need:
                out.append(self.chunks.pop(0))
                need -= len(chunk)
            else:
                out.append(select_rows(chunk, torch.arange(need)))
                self.chunks[0] = select_rows(chunk, torch.arange(need, len(chunk)))
                need = 0
        self.buffered -= n
        return concat_batches(out)

    def _pull(self) -> None:
        if self.iterator is None:
            self.loader.set_epoch(self.epoch * PASS_STRIDE + self.passes)
            self.passes += 1
            self.iterator = iter(self.loader)
            self.pass_rows = 0
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.iterator = None
            if self.pass_rows == 0:
                raise AvdaliError(f"the {self.name} training loader gave no sample to this rank") from None
            return
        keep = batch.valid.detach().to("cpu", torch.bool)
        if not bool(keep.all()):
            batch = select_rows(batch, keep.nonzero().squeeze(1))
        if len(batch):
            batch.index = batch.index + self.offset
            self.chunks.append(batch)
            self.buffered += len(batch)
            self.pass_rows += len(batch)

    def close(self) -> None:
        iterator, self.iterator = self.iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()


def select_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """The rows ``rows`` (int64 positions, on the CPU) of every field of ``batch``."""
    return Batch(**{f.name: _select(getattr(batch, f.name), rows) for f in fields(batch)})


def concat_batches(parts: Sequence[Batch]) -> Batch:
    """``parts`` stacked along N, every field (new Batch fields included); one part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    return Batch(**{f.name: _cat([getattr(p, f.name) for p in parts]) for f in fields(parts[0])})


def _select(value, rows: torch.Tensor):
    if not isinstance(value, torch.Tensor):
        return value
    channels_last = _channels_last_view(value)
    if channels_last is not None:  # keep the DALI loader's N,T,H,W,C memory under its N,T,C,H,W view
        return channels_last.index_select(0, rows.to(value.device)).permute(0, 1, 4, 2, 3)
    return value.index_select(0, rows.to(value.device))


def _cat(values: list):
    if not isinstance(values[0], torch.Tensor):
        return values[0]
    views = [_channels_last_view(v) for v in values]
    if all(v is not None for v in views):
        return torch.cat(views).permute(0, 1, 4, 2, 3)
    return torch.cat([v.contiguous() for v in values])


def _channels_last_view(value: torch.Tensor) -> torch.Tensor | None:
    """The N,T,H,W,C tensor under an N,T,C,H,W view of it (the DALI loader's video), else None."""
    if value.dim() != 5 or value.is_contiguous():
        return None
    memory = value.permute(0, 1, 3, 4, 2)
    return memory if memory.is_contiguous() else None

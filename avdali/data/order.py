"""Which samples each rank reads in an epoch: the one sample order both loaders follow.

**Evaluation** reads the chosen splits in stored order (splits in the order asked for, tars in manifest order,
samples in tar order); rank r reads the contiguous range ``rank_range(N, r, W)`` of it, so every sample is read
exactly once over all ranks, every epoch the same.

**Training** deals the tars out afresh every epoch: the tars are put in an order drawn from (seed, epoch), the same
on every rank, and rank r reads the samples ``rank_range(N, r, W)`` of that order (whole tars, and parts of the two
at its range's ends). So every training sample is read once per epoch over all ranks (padding aside), a rank's
samples change from epoch to epoch (about 1/W of them stay), and, because the packer shuffles each split before
cutting it into tars (shard format 3), every rank sees the split's mix of emotions and speakers. Each loader then
shuffles its rank's stream through a buffer (``data.shuffle_buffer``). An epoch's order depends on (seed, epoch)
alone, so a resumed run reads what an uninterrupted one would.

Shards of formats 1–2 were written in file-name order (RAVDESS names start with the emotion): they still read, but a
tar holds one or two emotions, so a rank's mix is as coarse as its tars; re-pack them for the shuffled order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from avdali.data.shards import ShardSet, ShardSpan

_ORDER_TAG = 0x6F7264  # "ord": keeps this stream apart from the loaders' per-rank augmentation seeds


def rank_range(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous range ``[lo, hi)`` of a reading order that one rank reads (DALI's reader splits a file list's
    samples into ``num_shards`` ranges the same way)."""
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Batches every rank yields per epoch: enough for the largest rank range; smaller ranks pad."""
    largest = -(-num_samples // world_size)
    return -(-largest // batch_size)


RUN_CLIPS = 32
"""Clips a DALI run aims to hold: a CPU operator works on a whole run, one operator at a time, and each costs a
fixed overhead per run and leaves threads idle at its end, so runs of several small batches cost less CPU per clip
(``batches_per_run``)."""


def batches_per_run(batches: int, batch_size: int, run_clips: int = RUN_CLIPS) -> int:
    """k: the training batches one DALI run holds (its batch is k × ``batch_size`` clips): the largest divisor of an
    epoch's ``batches`` with k × ``batch_size`` ≤ ``run_clips`` (at least 1), so the epoch's runs hold exactly its
    batches and nothing is decoded to be thrown away."""
    most = max(1, run_clips // batch_size)
    return max(k for k in range(1, min(most, max(batches, 1)) + 1) if batches % k == 0)


def epoch_batches_per_run(num_samples: int, batch_size: int, world_size: int, run_clips: int = RUN_CLIPS) -> int:
    """``batches_per_run`` of an epoch of ``num_samples`` over ``world_size`` ranks: what a ``DaliLoader`` runs."""
    return batches_per_run(batches_per_epoch(num_samples, batch_size, world_size), batch_size, run_clips)


def reading_order(shardset: ShardSet, *, train: bool, seed: int = 0, epoch: int = 0) -> tuple[ShardSpan, ...]:
    """The tars in the order an epoch reads them: stored order in evaluation; in training a permutation drawn from
    (seed, epoch), the same on every rank."""
    if not train:
        return shardset.files
    perm = np.random.default_rng([seed, epoch, _ORDER_TAG]).permutation(len(shardset.files))
    return tuple(shardset.files[i] for i in perm)


@dataclass(frozen=True)
class RankPart:
    """The samples ``[lo, hi)`` (positions in tar order) of one tar that a rank reads this epoch."""

    span: ShardSpan
    lo: int
    hi: int

    @property
    def indices(self) -> range:
        """The samples' indices in the chosen splits (``Batch.index``)."""
        return range(self.span.first + self.lo, self.span.first + self.hi)


def rank_parts(files: Sequence[ShardSpan], rank: int, world_size: int) -> list[RankPart]:
    """The tars (in ``files``' order) and sample ranges that make up rank ``rank``'s range of the order ``files``."""
    total = sum(f.count for f in files)
    lo, hi = rank_range(total, rank, world_size)
    parts, start = [], 0
    for f in files:
        a, b = max(lo, start), min(hi, start + f.count)
        if a < b:
            parts.append(RankPart(f, a - start, b - start))
        start += f.count
    return parts


def rank_epoch(shardset: ShardSet, rank: int, world_size: int, *, train: bool, seed: int = 0,
               epoch: int = 0) -> list[RankPart]:
    """What rank ``rank`` reads in ``epoch``: ``rank_parts`` of ``reading_order``."""
    return rank_parts(reading_order(shardset, train=train, seed=seed, epoch=epoch), rank, world_size)

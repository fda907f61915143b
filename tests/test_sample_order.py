"""What every training rank reads, on a RAVDESS-sized plan without media: the packer's shuffled tars dealt out afresh
every epoch (order.py) give every rank the split's mix of emotions, new samples each epoch, and every sample once per
epoch over the ranks. (That both loaders read exactly ``order.rank_epoch`` is tested on real shards in
test_data_loaders.py and test_cache.py.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from avdali import labels
from avdali.data import order
from avdali.data.shards import ShardSet, ShardSpan
from avdali.packing.run import plan_groups
from avdali.shardformat.manifest import ShardEntry
from avdali.sources.ravdess import ACTOR_FOLDS, parse_ravdess_name
from avdali.sources.records import ClipRecord, Scan

TRAIN = ("fold3", "fold4", "fold5")  # fold 1's training folds (validation fold 2)
EMOTIONS = (1, 2, 3, 4, 5, 6, 7, 8)


def ravdess_scan() -> Scan:
    """The 24 actors' 60 speech trials each, named as RAVDESS names them (the emotion comes first)."""
    fold_of = {actor: f"fold{k}" for k, actors in ACTOR_FOLDS.items() for actor in actors}
    records = []
    for actor in range(1, 25):
        for emotion in EMOTIONS:
            for intensity in (1, 2) if emotion != 1 else (1,):
                for statement in (1, 2):
                    for repetition in (1, 2):
                        key = f"01-01-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}"
                        native = labels.NATIVE_RAVDESS[emotion - 1]
                        records.append(ClipRecord(key, "ravdess", fold_of[actor], Path(f"{key}.mp4"),
                                                  labels.ravdess_unified_id(native), native))
    records.sort(key=lambda r: (r.split, r.key))
    return Scan(records, [])


def shardset_of(groups) -> ShardSet:
    """The training folds of a plan as the loaders see them (no files: order.py reads counts and keys only)."""
    files, first = [], 0
    for g in (g for g in groups if g.split in TRAIN):
        keys = [r.key for r in g.records]
        entry = ShardEntry(name=g.name, index_name=g.name[:-4] + ".idx", samples=len(keys), keys=keys, sha256="0" * 64,
                           bytes=0, split=g.split)
        files.append(ShardSpan(entry, g.name, g.name[:-4] + ".idx", first, (), ()))
        first += len(keys)
    return ShardSet(Path("."), TRAIN, tuple(files))


def emotion_of(shardset: ShardSet) -> dict[int, int]:
    return {f.first + j: parse_ravdess_name(key + ".mp4").emotion for f in shardset.files for j, key in enumerate(f.keys)}


def tvd(counts: Counter, whole: Counter) -> float:
    n, m = sum(counts.values()), sum(whole.values())
    return 0.5 * sum(abs(counts[k] / n - whole[k] / m) for k in whole)


def random_split_tvd(emotions: list[int], size: int, draws: int = 400) -> float:
    rng = np.random.default_rng(0)
    whole = Counter(emotions)
    return float(np.mean([tvd(Counter(rng.choice(emotions, size, replace=False).tolist()), whole) for _ in range(draws)]))


def rank_reads(shardset: ShardSet, world: int, epochs: int) -> list[list[set[int]]]:
    return [[{i for p in order.rank_epoch(shardset, r, world, train=True, seed=0, epoch=e) for i in p.indices}
             for r in range(world)] for e in range(epochs)]


@pytest.mark.parametrize("world", [4, 8])
def test_every_rank_sees_the_mix_and_new_samples_every_epoch(world):
    shardset = shardset_of(plan_groups(ravdess_scan(), shard_size=64, seed=0))
    emotion = emotion_of(shardset)
    whole = Counter(emotion.values())
    reads = rank_reads(shardset, world, epochs=12)
    for epoch in reads:  # every training clip once per epoch over all ranks
        assert sorted(i for share in epoch for i in share) == list(range(shardset.num_samples))
    distances = [tvd(Counter(emotion[i] for i in share), whole) for epoch in reads for share in epoch]
    baseline = random_split_tvd(list(emotion.values()), shardset.num_samples // world)
    assert np.mean(distances) <= 1.5 * baseline, (np.mean(distances), baseline)
    unseen = sum(1 for share in reads[0] for k in whole if not any(emotion[i] == k for i in share))
    assert unseen == 0
    kept = [len(reads[e][r] & reads[e + 1][r]) / len(reads[e][r]) for e in range(11) for r in range(world)]
    assert 0.5 / world <= np.mean(kept) <= 2.0 / world, np.mean(kept)


def test_file_name_order_would_not_give_the_mix():
    """The same deal over tars cut in file-name order (what format-2 shards hold): the emotions clump by tar, and a
    rank's mix is far from the whole. What makes the test above able to fail."""
    scan = ravdess_scan()
    by_split: dict[str, list[ClipRecord]] = {}  # each split in name order, cut as the packer cuts
    for r in scan.records:
        by_split.setdefault(r.split, []).append(r)
    from avdali.packing.run import _Group

    sorted_groups = [_Group(split, i // 64, recs[i : i + 64]) for split, recs in sorted(by_split.items())
                     for i in range(0, len(recs), 64)]
    shardset = shardset_of(sorted_groups)
    emotion = emotion_of(shardset)
    whole = Counter(emotion.values())
    reads = rank_reads(shardset, 8, epochs=6)
    distances = [tvd(Counter(emotion[i] for i in share), whole) for epoch in reads for share in epoch]
    assert np.mean(distances) > 1.5 * random_split_tvd(list(emotion.values()), shardset.num_samples // 8)


def test_evaluation_reads_the_stored_order_in_contiguous_ranges():
    shardset = shardset_of(plan_groups(ravdess_scan(), shard_size=64, seed=0))
    seen = []
    for rank in range(3):
        parts = order.rank_epoch(shardset, rank, 3, train=False, epoch=rank * 7)  # the epoch does not matter
        got = [i for p in parts for i in p.indices]
        lo, hi = order.rank_range(shardset.num_samples, rank, 3)
        assert got == list(range(lo, hi))
        seen += got
    assert seen == list(range(shardset.num_samples))


@pytest.mark.parametrize("batches, batch_size, run_clips, want", [
    (18, 8, 32, 3),  # 4 would leave 2 batches of 20 decoded for nothing: the largest divisor within 32 clips
    (20, 8, 32, 4),
    (7, 8, 32, 1),  # a prime count: one batch a run
    (36, 32, 32, 1),  # the batch alone fills a run
    (5, 64, 32, 1),
    (1, 2, 32, 1),
    (12, 3, 32, 6),  # 12 and 4 divide, 6 × 3 = 18 ≤ 32 is the largest
])
def test_a_dali_run_holds_whole_batches_of_the_epoch(batches, batch_size, run_clips, want):
    k = order.batches_per_run(batches, batch_size, run_clips)
    assert k == want
    assert batches % k == 0 and (k == 1 or k * batch_size <= run_clips)
    assert all(batches % j or j * batch_size > run_clips for j in range(k + 1, batches + 1))  # none larger fits

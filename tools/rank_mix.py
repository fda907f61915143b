"""What every training rank reads: label mix, emotions never seen, and samples kept from one epoch to the next.

For each loader and world size, builds the training loader of every rank (``build_loader(..., train=True, rank=r,
world_size=W)``), reads epochs 0 … E-1, and reports:

- ``tvd``: the mean over ranks and epochs of the total-variation distance between a rank's label mix and the mix of
  the whole training split, beside ``tvd_random``: the same for random subsets of the same sizes (what a perfect
  shuffle gives);
- ``unseen``: (rank, emotion) pairs with no sample in epoch 0, of ranks × emotions;
- ``kept``: the share of a rank's samples of epoch e it reads again in epoch e + 1, averaged over ranks and epochs
  (about 1/W for a fresh deal each epoch; 1 for a fixed share);
- ``coverage``: whether every training sample was read exactly once per epoch over all ranks.

    python tools/rank_mix.py SHARDS --splits fold2,fold3,fold4 --loaders dali,torch --world-sizes 4,8
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np


def tvd(counts: Counter, whole: Counter) -> float:
    """Total-variation distance between two label histograms (as distributions)."""
    n, m = sum(counts.values()), sum(whole.values())
    return 0.5 * sum(abs(counts[k] / n - whole[k] / m) for k in whole)


def random_split_tvd(labels: list[int], sizes: list[int], draws: int = 2000, seed: int = 0) -> float:
    """Mean TVD to the whole of random subsets of ``labels`` with the given sizes (a perfect shuffle's figure)."""
    rng = np.random.default_rng(seed)
    whole = Counter(labels)
    arr = np.asarray(labels)
    values = [tvd(Counter(rng.choice(arr, size=s, replace=False).tolist()), whole) for s in sizes for _ in range(draws // len(sizes))]
    return float(np.mean(values))


def epoch_labels(loader, epoch: int) -> dict[int, int]:
    """index → label of the valid samples a loader reads in ``epoch``."""
    loader.set_epoch(epoch)
    out = {}
    for batch in loader:
        for i, label, ok in zip(batch.index.tolist(), batch.label.tolist(), batch.valid.tolist()):
            if ok:
                assert i not in out, f"sample {i} read twice in one epoch by one rank"
                out[i] = label
    return out


def measure(cfg, splits: list[str], world_size: int, epochs: int = 4, seed: int = 0) -> dict:
    """The figures of one loader configuration at ``world_size`` ranks over ``epochs`` epochs."""
    from avdali.data.build import build_loader

    read = []  # read[rank][epoch]: index → label
    for rank in range(world_size):
        loader = build_loader(cfg, splits, train=True, rank=rank, world_size=world_size, seed=seed)
        read.append([epoch_labels(loader, e) for e in range(epochs)])
        del loader
    whole = {i: label for r in read for i, label in r[0].items()}
    total = Counter(whole.values())
    coverage = all(sorted(i for r in read for i in r[e]) == list(range(len(whole))) for e in range(epochs))
    mixes = [Counter(r[e].values()) for r in read for e in range(epochs)]
    return {
        "world_size": world_size,
        "epochs": epochs,
        "samples": len(whole),
        "tvd": float(np.mean([tvd(c, total) for c in mixes])),
        "tvd_random": random_split_tvd(list(whole.values()), [len(r[0]) for r in read]),
        "unseen": sum(1 for r in read for k in total if Counter(r[0].values())[k] == 0),
        "pairs": world_size * len(total),
        "kept": float(np.mean([len(r[e].keys() & r[e + 1].keys()) / len(r[e]) for r in read for e in range(epochs - 1)])),
        "coverage": coverage,
    }


def main() -> None:
    from avdali.data.config import DataConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards")
    ap.add_argument("--splits", default="fold2,fold3,fold4", help="training splits (default: RAVDESS fold 1's)")
    ap.add_argument("--loaders", default="dali,torch")
    ap.add_argument("--world-sizes", default="4,8")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    rows = []
    for name in args.loaders.split(","):
        cfg = DataConfig(shards=args.shards, loader=name, batch_size=8, frames=2, crop=32, n_mels=16, num_threads=1,
                         augment=False, verify=False)
        for w in map(int, args.world_sizes.split(",")):
            row = {"loader": name, **measure(cfg, args.splits.split(","), w, args.epochs)}
            rows.append(row)
            print(f"{name:5s} W={w}: tvd {row['tvd']:.2f} (random {row['tvd_random']:.2f}), unseen "
                  f"{row['unseen']}/{row['pairs']}, kept {row['kept']:.0%}, coverage {row['coverage']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

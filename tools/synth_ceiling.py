"""How separable are the synthetic RAVDESS emotions from the clips' *true* expression parameters?

The demo's model has to perceive mouth, brows, eyes, tint, pitch, tempo, ... from pixels and log-mels. This script
skips the perception: it draws each clip's ``Expression`` exactly as ``avdali synth ravdess`` renders it for
``avdali demo --seed S`` (the demo's ``FULL`` tree), fits a multinomial logistic regression on the demo's training
folds and scores its held-out actors (test fold 1 of the 5-fold protocol): the accuracy a model would reach with
perfect perception and a linear read-out. Face and voice parameters also alone.

    python tools/synth_ceiling.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from dataclasses import astuple
from pathlib import Path

import numpy as np
import torch

from avdali.experiments.demo import FULL, DemoSize
from avdali.labels import LABEL_SPACES, ravdess_unified_id
from avdali.sources.ravdess import actor_fold, parse_ravdess_name
from avdali.synth.expression import expression_for
from avdali.synth.identity import seeded_rng
from avdali.synth.ravdess import plan_ravdess
from avdali.train.plan import ravdess_fold_splits

DEMO_FOLD = 1
"""The demo's test fold (``avdali/configs/demo.toml``); ``ravdess_fold_splits`` gives its training folds."""
FACE, VOICE = slice(0, 8), slice(8, None)
"""Columns of ``Expression``'s fields: mouth, brows, eyes and tint; then pitch, tempo, energy and timbre."""


def clip_parameters(seed: int, size: DemoSize = FULL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parameters N×F, unified labels N, fold N) of the demo's tree of ``size`` for ``seed``."""
    x, y, fold = [], [], []
    for job in plan_ravdess(Path("unused"), actors=size.actors, trials_per_actor=size.trials_per_actor,
                            size=size.source_size, seed=seed):
        # render_clip's first draw from its seeded stream is the expression: the same values as the rendered clip
        expr = expression_for(job.emotion, intensity=job.intensity, actor_bias=np.asarray(job.identity.bias),
                              rng=seeded_rng(*job.seed))
        x.append(astuple(expr))
        y.append(ravdess_unified_id(job.emotion))
        fold.append(actor_fold(parse_ravdess_name(job.mp4_path.name).actor))
    return np.array(x), np.array(y), np.array(fold)


def split_masks(fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the demo's training clips and its held-out (test) clips, by fold."""
    train_splits, _, test_splits = ravdess_fold_splits(DEMO_FOLD)  # split names "fold3", …
    return (np.isin(fold, [int(s.removeprefix("fold")) for s in train_splits]),
            np.isin(fold, [int(s.removeprefix("fold")) for s in test_splits]))


def linear_accuracy(x_train, y_train, x_test, y_test, classes: int) -> float:
    """Held-out accuracy of an L2-regularised multinomial logistic regression on standardised features."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-9
    xt = torch.tensor((x_train - mean) / std, dtype=torch.float64)
    xv = torch.tensor((x_test - mean) / std, dtype=torch.float64)
    yt = torch.tensor(y_train)
    w = torch.zeros(xt.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xv @ w + b).argmax(1).numpy() == y_test).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    for seed in args.seeds:
        x, y, fold = clip_parameters(seed)
        train, test = split_masks(fold)
        row = []
        for label, cols in (("both", slice(None)), ("face", FACE), ("voice", VOICE)):
            acc = linear_accuracy(x[train][:, cols], y[train], x[test][:, cols], y[test], len(LABEL_SPACES["unified"]))
            row.append(f"{label} {acc:.4f}")
        print(f"seed {seed}: held-out actors (fold {DEMO_FOLD}, {int(test.sum())} clips): " + ", ".join(row))


if __name__ == "__main__":
    main()

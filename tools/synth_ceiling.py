"""How separable are the synthetic RAVDESS emotions from the clips' *true* expression parameters?

The demo's model has to perceive mouth, brows, eyes, tint, pitch, tempo, ... from pixels and log-mels. This script
skips the perception: it draws each clip's ``Expression`` exactly as ``avdali synth ravdess`` renders it (same
seed, actors and trials as ``avdali demo --seed S``), fits a multinomial logistic regression on the training
actors of fold 1 (folds 3-5) and scores the held-out actors (fold 1): the accuracy a model would reach with
perfect perception and a linear read-out. Face and voice parameters also alone.

    python tools/synth_ceiling.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from dataclasses import astuple, fields
from pathlib import Path

import numpy as np
import torch

from avdali.labels import LABEL_SPACES, ravdess_unified_id
from avdali.sources.ravdess import actor_fold
from avdali.synth.expression import Expression, expression_for
from avdali.synth.identity import seeded_rng
from avdali.synth.ravdess import plan_ravdess

FACE = [f.name for f in fields(Expression)][:8]  # mouth, brows, eyes, tint; the rest is the voice


def clip_parameters(seed: int, trials: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parameters N×F, unified labels N, fold N) of the demo's tree for ``seed``."""
    x, y, fold = [], [], []
    for job in plan_ravdess(Path("unused"), actors=24, trials_per_actor=trials, size=(256, 144), seed=seed):
        # render_clip's first draw from its seeded stream is the expression: the same values as the rendered clip
        expr = expression_for(job.emotion, intensity=job.intensity, actor_bias=np.asarray(job.identity.bias),
                              rng=seeded_rng(*job.seed))
        x.append(astuple(expr))
        y.append(ravdess_unified_id(job.emotion))
        fold.append(actor_fold(int(job.name[-2:])))
    return np.array(x), np.array(y), np.array(fold)


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
    parser.add_argument("--trials", type=int, default=16, help="trials per actor (the demo: 16)")
    args = parser.parse_args()
    names = [f.name for f in fields(Expression)]
    face = [names.index(n) for n in FACE]
    voice = [i for i in range(len(names)) if i not in face]
    for seed in args.seeds:
        x, y, fold = clip_parameters(seed, args.trials)
        train, test = np.isin(fold, [3, 4, 5]), fold == 1
        row = []
        for label, cols in (("both", list(range(len(names)))), ("face", face), ("voice", voice)):
            acc = linear_accuracy(x[train][:, cols], y[train], x[test][:, cols], y[test], len(LABEL_SPACES["unified"]))
            row.append(f"{label} {acc:.4f}")
        print(f"seed {seed}: held-out actors (fold 1, {int(test.sum())} clips): " + ", ".join(row))


if __name__ == "__main__":
    main()

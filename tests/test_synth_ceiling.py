"""tools/synth_ceiling.py: the clip parameters it draws separate the emotions; on shuffled labels it nears chance."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from avdali.experiments.demo import FULL
from tests.test_gpu_check import load_tool


def test_parameters_follow_the_emotion_and_the_readout_scores_held_out_clips():
    tool = load_tool("synth_ceiling")
    x, y, fold = tool.clip_parameters(seed=0, size=replace(FULL, trials_per_actor=8))
    assert x.shape == (24 * 8, 15) and set(fold.tolist()) == {1, 2, 3, 4, 5} and set(y.tolist()) <= set(range(7))
    train, test = tool.split_masks(fold)
    assert set(fold[train].tolist()) == {3, 4, 5} and set(fold[test].tolist()) == {1}  # demo: test fold 1, val fold 2
    assert tool.linear_accuracy(x[train], y[train], x[test], y[test], 7) >= 0.9  # the emotions are separable
    shuffled = np.random.default_rng(0).permutation(y[train])  # labels unrelated to the parameters: near chance
    assert tool.linear_accuracy(x[train], shuffled, x[test], y[test], 7) < 0.5

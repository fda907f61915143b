"""tools/synth_ceiling.py: the parameters it reads are the rendered clips' own, and its read-out can fail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

TOOL = Path(__file__).resolve().parents[1] / "tools" / "synth_ceiling.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("synth_ceiling", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameters_follow_the_emotion_and_the_readout_scores_held_out_clips():
    tool = load_tool()
    x, y, fold = tool.clip_parameters(seed=0, trials=8)
    assert x.shape == (24 * 8, 15) and set(fold.tolist()) == {1, 2, 3, 4, 5} and set(y.tolist()) <= set(range(7))
    train, test = np.isin(fold, [3, 4, 5]), fold == 1
    assert tool.linear_accuracy(x[train], y[train], x[test], y[test], 7) >= 0.9  # the emotions are separable
    shuffled = np.random.default_rng(0).permutation(y[train])  # labels unrelated to the parameters: near chance
    assert tool.linear_accuracy(x[train], shuffled, x[test], y[test], 7) < 0.5

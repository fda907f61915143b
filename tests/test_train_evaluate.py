"""Evaluation metrics against scikit-learn, with padding and rank duplicates removed; split protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from avdali.data.batch import Batch
from avdali.errors import ConfigError
from avdali.train.evaluate import classification_metrics, evaluate
from avdali.train.plan import balanced_class_weights, ravdess_fold_splits


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 6, 200)  # class 6 never occurs in the labels
    pred = np.where(rng.random(200) < 0.6, label, rng.integers(0, 7, 200))
    m = classification_metrics(pred, label, 7)
    assert m["acc"] == pytest.approx(accuracy_score(label, pred))
    assert m["ua"] == pytest.approx(balanced_accuracy_score(label, pred))
    assert m["weighted_f1"] == pytest.approx(f1_score(label, pred, average="weighted"))
    assert m["macro_f1"] == pytest.approx(f1_score(label, pred, average="macro"))
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(label, pred, labels=range(7)))
    assert m["num_samples"] == 200


class Constant(torch.nn.Module):
    """Predicts the class written in the audio's first value (so predictions are known)."""

    def forward(self, video, audio, audio_len=None, audio_present=None, video_present=None):
        assert video.dtype == torch.float32  # uint8 went through prepare_video
        return torch.nn.functional.one_hot(audio[:, 0, 0].long(), 7).float() * 5


def test_evaluate_counts_valid_samples_once():
    pred = torch.tensor([0, 1, 2, 3, 3, 5])
    label = torch.tensor([0, 1, 2, 2, 3, 5])
    batches = []
    # sample 5 appears twice (rank padding repeats it) and one padding sample is marked invalid
    for idx in ([0, 1, 2], [3, 4, 5], [5, 0, 1]):
        idx = torch.tensor(idx)
        audio = torch.zeros(3, 4, 8)
        audio[:, 0, 0] = pred[idx].float()
        batches.append(Batch(
            video=torch.zeros(3, 2, 3, 8, 8, dtype=torch.uint8), audio=audio,
            audio_len=torch.full((3,), 8), label=label[idx], index=idx,
            valid=torch.tensor([True, True, True]) if idx[0] != 5 else torch.tensor([True, False, False]),
        ))
    m = evaluate(Constant(), batches, device=torch.device("cpu"), num_classes=7)
    assert m["num_samples"] == 6
    assert m["acc"] == pytest.approx(5 / 6)
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(label, pred, labels=range(7)))


def test_ravdess_fold_protocol_keeps_roles_apart():
    for fold in range(1, 6):
        train, val, test = ravdess_fold_splits(fold)
        assert test == (f"fold{fold}",) and val == (f"fold{fold % 5 + 1}",)
        assert len(train) == 3 and not set(train) & (set(val) | set(test))
    assert ravdess_fold_splits(5) == (("fold2", "fold3", "fold4"), ("fold1",), ("fold5",))
    with pytest.raises(ConfigError, match="data.fold"):
        ravdess_fold_splits(0)


def test_balanced_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    counts = [10, 5, 0, 20, 1, 4, 4]
    y = np.repeat(np.arange(7), counts)
    present = np.unique(y)
    expected = compute_class_weight("balanced", classes=present, y=y)
    weights = balanced_class_weights(counts)
    np.testing.assert_allclose([weights[c] for c in present], expected)
    assert weights[2] == 0.0

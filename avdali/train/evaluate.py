"""Validation and test metrics: run the model over a loader, gather every rank's predictions, score them.

Only ``valid`` samples count (padding of the last batch or of ranks is not a sample), and each sample
counts once, by its ``index`` in the chosen splits (DALI's rank padding repeats samples).
Metrics follow scikit-learn's definitions (the tests compare with it): accuracy, unweighted accuracy
(mean per-class recall over classes present in the labels = ``balanced_accuracy_score``), weighted
and macro F1 (over classes present in labels or predictions), and the confusion matrix.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from avdali.train.distributed import all_gather_objects
from avdali.train.model_inputs import autocast, model_video, to_device
from avdali.train.modality import presence


def evaluate(
    model: torch.nn.Module,
    loader,
    *,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    modality: str = "both",
) -> dict:
    """Metrics of ``model`` over one pass of ``loader`` (all ranks together; every rank gets the same dict).

    ``modality`` (``avdali.train.modality.MODALITIES``): "both" uses the batch's own presence masks; "audio" marks
    every clip's video absent, "video" every clip's audio. Returns ``loss`` (mean cross-entropy), ``acc``, ``ua``,
    ``weighted_f1``, ``macro_f1``, ``confusion`` (num_classes² int64 array, rows = true class), ``num_samples``.
    """
    return evaluate_modalities(model, loader, (modality,), device=device, num_classes=num_classes,
                               amp_dtype=amp_dtype, channels_last=channels_last)[modality]


@torch.no_grad()
def evaluate_modalities(
    model: torch.nn.Module,
    loader,
    modalities: Sequence[str],
    *,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, dict]:
    """``evaluate``'s metrics for each of ``modalities`` (modality → dict), from one pass of ``loader``: each batch
    is read once and run through the model once per modality."""
    was_training = model.training
    model.eval()
    parts = {m: ([], [], [], []) for m in modalities}  # preds, labels, indices, losses
    try:
        for batch in loader:
            batch = to_device(batch, device)
            video = model_video(batch.video, channels_last)
            keep = batch.valid.bool()
            for modality, (preds, labels, indices, losses) in parts.items():
                logits = forward_logits(model, batch, video, modality, device, amp_dtype)
                loss = F.cross_entropy(logits, batch.label, reduction="none")
                preds.append(logits.argmax(1)[keep].cpu())
                labels.append(batch.label[keep].cpu())
                indices.append(batch.index[keep].cpu())
                losses.append(loss[keep].cpu())
    finally:
        model.train(was_training)
    return {m: _score(lists, num_classes) for m, lists in parts.items()}


def forward_logits(model: torch.nn.Module, batch, video: torch.Tensor, modality: str, device: torch.device,
                   amp_dtype: torch.dtype | None) -> torch.Tensor:
    """float32 logits of a Batch already on ``device`` (``video`` = its ``model_video``), with the stream masks of
    ``modality`` (``presence``): the one forward of evaluation and ``avdali predict``."""
    audio_present, video_present = presence(modality, batch.audio_present.bool(), batch.video_present.bool())
    with autocast(device, amp_dtype):
        logits = model(video, batch.audio, batch.audio_len, audio_present=audio_present, video_present=video_present)
    return logits.float()


def _score(lists: tuple[list, list, list, list], num_classes: int) -> dict:
    local = tuple(_cat(x) for x in lists)
    gathered = all_gather_objects(local)
    pred, label, index, loss = (np.concatenate([g[i] for g in gathered]) for i in range(4))
    # Rank padding repeats real samples: keep each index once.
    _, first = np.unique(index, return_index=True)
    pred, label, loss = pred[first], label[first], loss[first]
    metrics = classification_metrics(pred, label, num_classes)
    metrics["loss"] = float(loss.mean()) if len(loss) else float("nan")
    return metrics


def classification_metrics(pred: np.ndarray, label: np.ndarray, num_classes: int) -> dict:
    """Accuracy, unweighted accuracy, weighted/macro F1 and the confusion matrix of integer predictions."""
    pred = np.asarray(pred, dtype=np.int64)
    label = np.asarray(label, dtype=np.int64)
    confusion = np.bincount(label * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
    n = int(confusion.sum())
    true_pos = np.diag(confusion).astype(np.float64)
    support = confusion.sum(1).astype(np.float64)
    predicted = confusion.sum(0).astype(np.float64)
    recall = np.divide(true_pos, support, out=np.zeros(num_classes), where=support > 0)
    precision = np.divide(true_pos, predicted, out=np.zeros(num_classes), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(num_classes), where=denom > 0)
    in_labels = support > 0
    in_either = in_labels | (predicted > 0)
    return {
        "acc": float(true_pos.sum() / n) if n else 0.0,
        "ua": float(recall[in_labels].mean()) if in_labels.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / support.sum()) if n else 0.0,
        "macro_f1": float(f1[in_either].mean()) if in_either.any() else 0.0,
        "confusion": confusion,
        "num_samples": n,
    }


def _cat(parts: list[torch.Tensor]) -> np.ndarray:
    return torch.cat(parts).numpy() if parts else np.zeros(0, dtype=np.int64)

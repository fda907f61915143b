"""What ``avdali eval`` reports: per-class precision/recall/F1/support, the JSON of the metrics, the confusion PNG.

Plain functions of a confusion matrix (rows = true class, columns = predicted), so they agree with
``classification_metrics`` by construction; the per-class numbers follow scikit-learn's
``precision_recall_fscore_support(labels=range(n), zero_division=0)`` (the tests compare with it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from avdali.files import atomic_write_bytes, write_error
from avdali.train.metrics_writer import confusion_figure

SUMMARY_KEYS = ("acc", "ua", "weighted_f1", "macro_f1", "loss", "num_samples")
"""Scalar metrics of ``evaluate`` in report order (acc = accuracy, ua = unweighted accuracy)."""


@dataclass
class ClassRow:
    """One class's line of the per-class table."""

    name: str
    """Class name in the model's label space."""
    precision: float
    """Correct predictions of this class / all predictions of it (0 when it is never predicted)."""
    recall: float
    """Correct predictions of this class / its true samples (0 when it has none)."""
    f1: float
    """Harmonic mean of precision and recall (0 when both are 0)."""
    support: int
    """True samples of this class."""
    predicted: int
    """Samples predicted as this class."""


def per_class(confusion: np.ndarray, class_names: Sequence[str]) -> list[ClassRow]:
    """Precision, recall, F1, support (and predicted count) per class of a square confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.int64)
    n = len(class_names)
    if confusion.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {confusion.shape} for {n} classes")
    true_pos = np.diag(confusion).astype(np.float64)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    precision = np.divide(true_pos, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    return [
        ClassRow(str(name), float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]), int(predicted[i]))
        for i, name in enumerate(class_names)
    ]


def report_dict(metrics: dict, class_names: Sequence[str], **context: Any) -> dict:
    """The JSON-ready report: ``context`` (checkpoint, shards, splits …), the scalar metrics, per-class rows,
    class names and the confusion matrix as nested lists."""
    confusion = np.asarray(metrics["confusion"], dtype=np.int64)
    return {
        **{k: _plain(v) for k, v in context.items()},
        "metrics": {k: _plain(metrics[k]) for k in SUMMARY_KEYS if k in metrics},
        "per_class": [asdict(row) for row in per_class(confusion, class_names)],
        "class_names": list(class_names),
        "confusion": confusion.tolist(),
    }


def robustness_dict(robustness: dict[str, dict]) -> dict[str, dict]:
    """``eval --json``'s "robustness": modality ("both", "audio", "video") → its scalar metrics (``SUMMARY_KEYS``),
    for each modality evaluated."""
    return {modality: {k: _plain(m[k]) for k in SUMMARY_KEYS if k in m} for modality, m in robustness.items()}


def eval_report(loaded, result, checkpoint: str | Path) -> dict:
    """``avdali eval --json``: ``report_dict`` of ``result`` (an ``evaluate.EvalResult`` of ``loaded``, the
    ``load.LoadedModel`` read from ``checkpoint``) with what was evaluated, and the metrics per modality."""
    report = report_dict(result.metrics, loaded.class_names, checkpoint=checkpoint, epoch=loaded.epoch,
                         step=loaded.step, label_space=loaded.label_space, dataset=result.dataset, shards=result.shards,
                         splits=result.splits, loader=result.loader, device=loaded.device.type,
                         seconds=round(result.seconds, 3), modality=result.modality)
    report["robustness"] = robustness_dict(result.robustness)
    return report


def write_json(path: str | Path, report: dict) -> Path:
    """Write ``report`` as indented JSON (atomically: ``*.tmp`` then rename); AvdaliError naming the file on failure."""
    path = Path(path)
    text = json.dumps(report, indent=1, allow_nan=True) + "\n"
    return write_file(path, text.encode())


def write_confusion_png(path: str | Path, confusion: np.ndarray, class_names: Sequence[str], title: str = "") -> Path:
    """The confusion matrix as a PNG (the same figure TensorBoard shows: shaded by recall, annotated with counts)."""
    import io

    path = Path(path)
    fig = confusion_figure(confusion, class_names)
    if title:
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_file(path, buffer.getvalue())


def write_file(path: Path, data: bytes) -> Path:
    """``data`` into ``path`` atomically, making its folder first; AvdaliError naming the file on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    return atomic_write_bytes(path, data)


def _plain(value: Any) -> Any:
    """JSON-friendly: paths as strings, tuples as lists, numpy scalars and arrays as Python values."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

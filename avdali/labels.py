"""The unified 7-class emotion space and the datasets' own label maps: the one source of truth.

Both datasets map to ids 0-6 in this order (DATASETS.md), so a model trained on one can be
evaluated on the other. The original label is kept in every sample's metadata, so RAVDESS'
native 8-class task stays possible (``NATIVE_RAVDESS``).
"""

UNIFIED = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
"""Unified class names; the index is the class id stored in every shard's ``cls``."""

RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
"""RAVDESS file-name field EE → RAVDESS emotion name."""

NATIVE_RAVDESS = tuple(RAVDESS_EMOTIONS.values())
"""RAVDESS' native 8 classes, ids 0-7 in file-name order (neutral … surprised)."""

RAVDESS_TO_UNIFIED = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "happy",
    "sad": "sad",
    "angry": "angry",
    "fearful": "fearful",
    "disgust": "disgust",
    "surprised": "surprised",
}

MELD_EMOTIONS = ("neutral", "joy", "sadness", "anger", "fear", "disgust", "surprise")
"""MELD's 7 emotion strings as they appear in the CSV ``Emotion`` column."""

MELD_TO_UNIFIED = {
    "neutral": "neutral",
    "joy": "happy",
    "sadness": "sad",
    "anger": "angry",
    "fear": "fearful",
    "disgust": "disgust",
    "surprise": "surprised",
}

LABEL_SPACES = {"unified": UNIFIED, "ravdess8": NATIVE_RAVDESS}
"""Label spaces a model can be trained in, by name."""


def unified_id(name: str) -> int:
    """Unified class id of a unified class name (``ValueError`` naming the valid choices)."""
    try:
        return UNIFIED.index(name)
    except ValueError:
        raise ValueError(f"unknown emotion {name!r}; expected one of {', '.join(UNIFIED)}") from None


def ravdess_unified_id(emotion: str) -> int:
    """Unified id of a RAVDESS emotion name (``calm`` → neutral)."""
    return unified_id(RAVDESS_TO_UNIFIED[emotion])


def meld_unified_id(emotion: str) -> int:
    """Unified id of a MELD emotion string (case and surrounding space ignored)."""
    key = emotion.strip().lower()
    if key not in MELD_TO_UNIFIED:
        raise ValueError(f"unknown MELD emotion {emotion!r}; expected one of {', '.join(MELD_EMOTIONS)}")
    return unified_id(MELD_TO_UNIFIED[key])


def native_ravdess_id(emotion: str) -> int:
    """Id of a RAVDESS emotion name in the native 8-class space."""
    return NATIVE_RAVDESS.index(emotion)

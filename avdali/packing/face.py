"""Face crop boxes for a clip: sparse Haar detections → one smooth square box per kept frame.

Detection runs on a downscaled grey image (the luma plane) every few kept frames only: MEDIA.md
measured that a Haar pass on every 720p frame costs more than the whole transcode. The track
between detections is interpolated, so the crop glides instead of jumping.
No torch here (ARCHITECTURE.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]
"""A detection ``(x, y, w, h)`` in the pixels of the image it was found in."""

FaceDetector = Callable[[np.ndarray], Sequence[Box]]
"""Takes a grey uint8 image (H, W) and returns face boxes in its pixels (injectable for tests)."""

DETECT_WIDTH = 320
"""Frames are shrunk to this width before detection: a 720p face (~250 px) stays ~60 px, plenty for
the 24 px Haar window, at 1/16 of the pixels."""
ENLARGE = 1.5
"""A Haar box spans brows to mouth; 1.5x its side takes in forehead, chin and cheeks."""
CENTRE_WINDOW = 3
"""Detections averaged (moving average) for the centre track; damps the Haar box jitter."""
OUTLIER_DISTANCE = 1.0
"""A detection whose centre lies farther than this many median sides from the median of its
neighbours (2 detections either side) is dropped: a false positive, or a one-off switch to the
other person in a MELD two-shot."""


@dataclass(frozen=True)
class CropBox:
    """A square crop in source pixels; x, y and side are even so yuv420p chroma planes crop exactly."""

    x: int
    """Left edge."""
    y: int
    """Top edge."""
    side: int
    """Width = height."""


@functools.lru_cache(maxsize=1)
def _haar_cascade() -> cv2.CascadeClassifier:
    # Loaded once per worker process (parsing the XML takes ~50 ms); the only global state here.
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV could not load its bundled Haar cascade {path}")
    return cascade


def haar_detect(grey: np.ndarray, min_side: int | None = None, max_side: int | None = None) -> list[Box]:
    """Frontal faces in a small grey image, with OpenCV's bundled Haar cascade.

    Without ``min_side``, faces smaller than 1/8 of the image's short side are ignored (background people).
    """
    min_side = min_side or max(24, min(grey.shape) // 8)
    max_size = (max_side, max_side) if max_side else None
    found = _haar_cascade().detectMultiScale(
        grey, scaleFactor=1.2, minNeighbors=4, minSize=(min_side, min_side), maxSize=max_size
    )
    return [tuple(int(v) for v in box) for box in found]


def detection_image(luma: np.ndarray) -> tuple[np.ndarray, float]:
    """The luma plane shrunk to ``DETECT_WIDTH`` (never enlarged), and the factor back to source pixels."""
    height, width = luma.shape
    if width <= DETECT_WIDTH:
        return np.ascontiguousarray(luma), 1.0
    scale = width / DETECT_WIDTH
    small = cv2.resize(luma, (DETECT_WIDTH, max(1, round(height / scale))), interpolation=cv2.INTER_AREA)
    return small, scale


def largest_face(boxes: Sequence[Box], scale: float) -> tuple[float, float, float] | None:
    """The biggest box as ``(centre_x, centre_y, side)`` in source pixels, or None."""
    if not len(boxes):
        return None
    x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
    return ((x + w / 2) * scale, (y + h / 2) * scale, max(w, h) * scale)


class FaceFinder:
    """The largest face in successive frames of one clip, as ``(cx, cy, side)`` in source pixels.

    With the default Haar detector it first searches a window around the last face, at 0.7-1.4x its
    size, and only then the whole frame: ~3x cheaper per detection and it sticks to the same person.
    An injected ``detector`` always gets the whole (shrunk) frame.
    """

    def __init__(self, detector: FaceDetector | None = None):
        self.detector = detector
        self.last: tuple[float, float, float] | None = None
        """The last face found, in detection-image pixels."""

    def __call__(self, luma: np.ndarray) -> tuple[float, float, float] | None:
        small, scale = detection_image(luma)
        found = self._near_last(small) if self.detector is None and self.last is not None else None
        if found is None:
            found = largest_face((self.detector or haar_detect)(small), 1.0)
        if found is None:
            return None
        self.last = found
        cx, cy, side = found
        return (cx * scale, cy * scale, side * scale)

    def _near_last(self, small: np.ndarray) -> tuple[float, float, float] | None:
        cx, cy, side = self.last
        x0, y0 = int(max(0.0, cx - side)), int(max(0.0, cy - side))
        window = small[y0 : int(cy + side), x0 : int(cx + side)]
        found = largest_face(haar_detect(window, min_side=int(side * 0.7), max_side=int(side * 1.4) + 1), 1.0)
        return None if found is None else (found[0] + x0, found[1] + y0, found[2])


def _even(v: float) -> int:
    return int(v) // 2 * 2


def clamp_square(cx: float, cy: float, side: float, width: int, height: int) -> CropBox:
    """A square of ``side`` centred on (cx, cy), shrunk to fit and shifted inside the frame."""
    side = _even(min(side, width, height))
    side = max(side, 2)
    x = min(max(cx - side / 2, 0), width - side)
    y = min(max(cy - side / 2, 0), height - side)
    return CropBox(_even(x), _even(y), side)


def centre_box(width: int, height: int) -> CropBox:
    """The largest centred square: the crop when no face is found."""
    return clamp_square(width / 2, height / 2, min(width, height), width, height)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < 2 or window < 2:
        return values
    pad = window // 2
    padded = np.pad(values, pad, mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")[: len(values)]


def smooth_track(
    detections: dict[int, tuple[float, float, float] | None], num_frames: int, width: int, height: int
) -> list[CropBox] | None:
    """One crop box per frame from sparse detections ``{frame index: (cx, cy, side) or None}``.

    The side is the median detected side (constant, so the face keeps its scale), enlarged by
    ``ENLARGE``; the centre is a moving average of detections, linearly interpolated between them
    and held before the first / after the last. Returns None when nothing usable was detected.
    """
    found = sorted((i, d) for i, d in detections.items() if d is not None)
    if not found:
        return None
    centres = np.array([(d[0], d[1]) for _, d in found], dtype=np.float64)
    sides = np.array([d[2] for _, d in found], dtype=np.float64)
    # Compare each detection with its neighbours in time (not the clip's median: faces do move).
    local = np.array([np.median(centres[max(0, i - 2) : i + 3], axis=0) for i in range(len(centres))])
    distance = np.linalg.norm(centres - local, axis=1)
    keep = distance <= OUTLIER_DISTANCE * np.median(sides)
    if not keep.any():  # detections scattered with no majority: trust the most central one
        keep = distance == distance.min()
    frames = np.array([i for i, _ in found], dtype=np.float64)[keep]
    centres, sides = centres[keep], sides[keep]
    side = float(np.median(sides)) * ENLARGE
    cx = _moving_average(centres[:, 0], CENTRE_WINDOW)
    cy = _moving_average(centres[:, 1], CENTRE_WINDOW)
    at = np.arange(num_frames, dtype=np.float64)
    track_x, track_y = np.interp(at, frames, cx), np.interp(at, frames, cy)
    return [clamp_square(x, y, side, width, height) for x, y in zip(track_x, track_y)]


def median_box(boxes: Sequence[CropBox]) -> list[int]:
    """``[x, y, side]``, the element-wise median of a clip's boxes (what the sample's json records)."""
    arr = np.array([(b.x, b.y, b.side) for b in boxes])
    return [int(v) for v in np.median(arr, axis=0).round()]

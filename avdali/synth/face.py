"""Drawing a face-like frame: textured background, shoulders, hair, shaded oval face whose mouth,
brows, eyes and tint follow the clip's Expression.

The shading copies what OpenCV's Haar frontal-face cascade keys on (darker eye sockets and brows
above a lighter cheek/nose band, a darker mouth line), so the packer's face detector finds it.
Everything is drawn with OpenCV on the face's region only; the background is made once per clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avdali.synth.expression import Expression
from avdali.synth.identity import Identity, seeded_rng

_AA = cv2.LINE_AA
_SHIFT = 4  # cv2 sub-pixel bits: coordinates are multiplied by 16 so slow motion stays smooth
_ONE = 1 << _SHIFT


def make_background(identity: Identity, width: int, height: int) -> np.ndarray:
    """The person's static scene: smooth colour blobs, a few soft panels and fine grain (BGR uint8)."""
    rng = seeded_rng(identity.background_seed, width, height)
    blobs = rng.normal(0, 1, (6, 10, 3)).astype(np.float32)
    scene = cv2.resize(blobs, (width, height), interpolation=cv2.INTER_CUBIC) * 22
    scene += np.asarray(identity.background_bgr, np.float32)
    xs = np.arange(width, dtype=np.float32)
    period = width / rng.uniform(3, 7)
    panels = 14 * np.sign(np.sin(2 * np.pi * xs / period + rng.uniform(0, 6.3)))
    panels = cv2.GaussianBlur(panels[None, :].astype(np.float32), (0, 0), max(1.0, width / 300))
    scene += panels[:, :, None]
    grain = rng.normal(0, 5, (height, width, 1)).astype(np.float32)
    return np.clip(scene + grain, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Pose:
    """Where the face is in one frame (pixels) and how much of the mouth the speech opens."""

    cx: float
    """Face centre x."""
    cy: float
    """Face centre y."""
    height: float
    """Face height."""
    speech_open: float
    """Extra lip gap from the voice envelope (0..1, fraction of the mouth width)."""


def head_pose(identity: Identity, t: float, *, width: int, height: int, phase: float, speech_open: float) -> Pose:
    """Slow head drift (a few % of the frame over seconds) around the person's off-centre rest point."""
    cx = identity.centre[0] * width + 0.025 * width * np.sin(2 * np.pi * 0.23 * t + phase)
    cy = identity.centre[1] * height + 0.02 * height * np.sin(2 * np.pi * 0.31 * t + 1.7 * phase)
    h = identity.face_height * height * (1.0 + 0.02 * np.sin(2 * np.pi * 0.17 * t + phase))
    return Pose(cx=float(cx), cy=float(cy), height=float(h), speech_open=speech_open)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _ax(a: float, b: float) -> tuple[int, int]:
    return max(1, int(round(a * _ONE))), max(1, int(round(b * _ONE)))


def skin_colour(identity: Identity, expr: Expression) -> np.ndarray:
    """The skin with the emotion's tint (the tint is a strong but imperfect cue: skins differ)."""
    tint = 60.0 * np.array([expr.tint_b, expr.tint_g, expr.tint_r])
    return np.clip(np.asarray(identity.skin_bgr) + tint, 20, 250)


def draw_face(frame: np.ndarray, identity: Identity, expr: Expression, pose: Pose) -> None:
    """Draw the person into ``frame`` (BGR uint8, modified in place) at ``pose``."""
    H, W = frame.shape[:2]
    u = pose.height
    fw = identity.face_aspect * u
    # Work on the region around the head only: drawing and blurring the whole 720p frame is slow.
    x0, x1 = int(max(0, pose.cx - 0.9 * fw)), int(min(W, pose.cx + 0.9 * fw))
    y0, y1 = int(max(0, pose.cy - 0.75 * u)), int(min(H, pose.cy + 1.0 * u))
    if x1 <= x0 or y1 <= y0:
        return
    roi = frame[y0:y1, x0:x1]
    cx, cy = pose.cx - x0, pose.cy - y0

    skin = skin_colour(identity, expr)
    shadow = skin * 0.62
    hair = np.asarray(identity.hair_bgr)
    clothes = np.asarray(identity.background_bgr)[::-1] * 0.5

    def col(c) -> tuple[float, float, float]:
        return tuple(float(v) for v in c)

    # Shoulders and neck.
    cv2.ellipse(roi, _pt(cx, cy + 0.95 * u), _ax(1.0 * fw, 0.4 * u), 0, 180, 360, col(clothes), -1, _AA, _SHIFT)
    cv2.rectangle(roi, (int(cx - 0.22 * fw), int(cy + 0.3 * u)), (int(cx + 0.22 * fw), int(cy + 0.7 * u)), col(shadow), -1)
    # Hair cap behind the face, then the face oval.
    cv2.ellipse(roi, _pt(cx, cy - 0.08 * u), _ax(0.56 * fw, 0.56 * u), 0, 0, 360, col(hair), -1, _AA, _SHIFT)
    cv2.ellipse(roi, _pt(cx, cy), _ax(0.5 * fw, 0.5 * u), 0, 0, 360, col(skin * 0.8), -1, _AA, _SHIFT)
    # Lighter centre band (forehead, nose, cheeks): what the cascade's centre-bright features want.
    cv2.ellipse(roi, _pt(cx, cy + 0.02 * u), _ax(0.38 * fw, 0.44 * u), 0, 0, 360, col(skin), -1, _AA, _SHIFT)
    cv2.ellipse(roi, _pt(cx, cy + 0.02 * u), _ax(0.1 * fw, 0.22 * u), 0, 0, 360, col(np.minimum(skin * 1.12, 255)), -1, _AA, _SHIFT)

    # Eyes: dark sockets, sclera, iris; brows above them.
    eye_y = cy - 0.1 * u
    eye_h = 0.035 * u * expr.eye_open
    for side in (-1, 1):
        ex = cx + side * identity.eye_spacing * fw
        cv2.ellipse(roi, _pt(ex, eye_y - 0.01 * u), _ax(0.15 * fw, 0.075 * u), 0, 0, 360, col(shadow), -1, _AA, _SHIFT)
        cv2.ellipse(roi, _pt(ex, eye_y), _ax(0.1 * fw, eye_h), 0, 0, 360, (215, 215, 215), -1, _AA, _SHIFT)
        iris_r = min(0.032 * u, eye_h * 1.1)
        cv2.circle(roi, _pt(ex, eye_y), int(iris_r * _ONE), (35, 30, 25), -1, _AA, _SHIFT)
        brow_y = eye_y - 0.085 * u - expr.brow_raise * 0.06 * u
        inner = (cx + side * 0.06 * fw, brow_y - expr.brow_tilt * 0.045 * u)
        outer = (cx + side * 0.34 * fw, brow_y + expr.brow_tilt * 0.015 * u)
        cv2.line(roi, _pt(*inner), _pt(*outer), col(hair * 0.8), max(1, int(0.03 * u)), _AA, _SHIFT)

    # Nose: two darker nostril marks below the bright bridge.
    for side in (-1, 1):
        cv2.ellipse(roi, _pt(cx + side * 0.07 * fw, cy + 0.12 * u), _ax(0.04 * fw, 0.02 * u), 0, 0, 360, col(shadow), -1, _AA, _SHIFT)

    # Mouth: corners lifted by the curve, lips parted by emotion + speech.
    half = 0.2 * fw
    mouth_y = cy + 0.26 * u
    lift = expr.mouth_curve * 0.07 * u
    gap = (expr.mouth_open + pose.speech_open) * 2 * half * 0.5
    xs = np.linspace(-1, 1, 17)
    bend = 1 - xs**2
    corner_y = mouth_y - lift
    upper = np.stack([cx + xs * half, corner_y + (lift - gap / 2) * bend], 1)
    lower = np.stack([cx + xs * half, corner_y + (lift + gap / 2) * bend], 1)[::-1]
    lips = np.concatenate([upper, lower]) * _ONE
    lips = lips.round().astype(np.int32)[None]
    cv2.fillPoly(roi, lips, (45, 35, 95), _AA, _SHIFT)
    cv2.polylines(roi, lips, True, (60, 60, 140), max(1, int(0.02 * u)), _AA, _SHIFT)

    # Soft shading: real faces have no hard edges, and the cascade was trained on real faces.
    k = max(1, int(0.012 * u)) * 2 + 1
    cv2.GaussianBlur(roi, (k, k), 0, dst=roi)

"""Pose hints drawn as the ControlNet 1.1 openpose models were trained (shared/research/preprocessors_next.md §1a;
ControlNet-v1-1-nightly annotator/openpose/util.py draw_bodypose / draw_handpose / draw_facepose).

Black 8-bit RGB canvas at the hint's size; keypoints are normalised to [0, 1] by their canvas and scaled to it.
Body: the 17 drawn limbs of every person as filled ellipses (semi-minor axis 4), then the whole canvas x 0.6 once
(truncated), then the 18 joints as radius-4 discs. Hands: 20 bone lines (thickness 2, HSV rainbow) and blue
radius-4 joints; face: white radius-3 dots; a hand or face point is skipped unless int(x * W) and int(y * H) are
above 0.01 (so row/column 0 never shows). Drawing uses OpenCV's integer rasteriser, as the training code did.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPS = 0.01
STICK_WIDTH = 4
# 1-based joint pairs (the list in the training code has 19; its loop draws the first 17)
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = tuple((0 if i % 4 == 0 else i, i + 1) for i in range(20))  # 5 fingers of 4 bones from the wrist


@dataclass(frozen=True)
class Person:
    """One person's keypoints normalised to [0, 1] by their canvas; a missing point is NaN.

    body (18, 2) OpenPose-18 order; hands: left, right (21, 2) each or None; face (70, 2) or None."""

    body: np.ndarray
    left_hand: np.ndarray | None = None
    right_hand: np.ndarray | None = None
    face: np.ndarray | None = None


def hand_color(edge: int) -> tuple[float, float, float]:
    """RGB of hand bone `edge` (0..19): HSV hue edge / 20 at full saturation and value, x 255 as floats (the
    training code passes matplotlib's float triple to OpenCV, which rounds it)."""
    h6 = edge / 20.0 * 6.0
    sector = int(h6)
    f = h6 - sector
    q, t = 1.0 - f, 1.0 - (1.0 - f)  # as hsv_to_rgb computes v * (1 - s * f) and v * (1 - s * (1 - f))
    rgb = [(1.0, t, 0.0), (q, 1.0, 0.0), (0.0, 1.0, t), (0.0, q, 1.0), (t, 0.0, 1.0), (1.0, 0.0, q)][sector % 6]
    return tuple(c * 255.0 for c in rgb)


def stick_width(height: int, width: int, xinsir: bool) -> int:
    """Limb half-width: 4, or for xinsir's SDXL openpose model x (1 below 500 px, else min(2 + side // 1000, 7))."""
    side = max(height, width)
    return STICK_WIDTH * (1 if not xinsir or side < 500 else min(2 + side // 1000, 7))


def draw_bodies(canvas: np.ndarray, bodies: Sequence[np.ndarray], stickwidth: int = STICK_WIDTH) -> np.ndarray:
    """(H, W, 3) uint8 canvas + bodies (18, 2) normalised, NaN = missing -> new canvas: limbs, x 0.6, joints."""
    import cv2

    h, w = canvas.shape[:2]
    canvas = canvas.copy()
    for limb, (a, b) in enumerate(LIMBS):
        for body in bodies:
            pa, pb = body[a - 1], body[b - 1]
            if np.isnan(pa).any() or np.isnan(pb).any():
                continue
            ys = np.array([pa[1], pb[1]]) * float(h)  # rows
            xs = np.array([pa[0], pb[0]]) * float(w)  # columns
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            poly = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), stickwidth), int(angle),
                                    0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, COLORS[limb])
    canvas = (canvas * 0.6).astype(np.uint8)  # the "alpha": the whole canvas, once, truncated (255 -> 153)
    for joint in range(18):
        for body in bodies:
            if not np.isnan(body[joint]).any():
                x, y = body[joint]
                cv2.circle(canvas, (int(x * w), int(y * h)), 4, COLORS[joint], thickness=-1)
    return canvas


def _visible(point: np.ndarray, h: int, w: int) -> tuple[int, int] | None:
    """Pixel of a hand/face point, or None when missing or int(x * W) / int(y * H) is not above 0.01."""
    if np.isnan(point).any():
        return None
    x, y = int(point[0] * w), int(point[1] * h)
    return (x, y) if x > EPS and y > EPS else None


def draw_hands(canvas: np.ndarray, hands: Sequence[np.ndarray]) -> np.ndarray:
    """Hands (21, 2) normalised: bone lines (thickness 2, rainbow), then blue radius-4 joints, hand by hand."""
    import cv2

    h, w = canvas.shape[:2]
    canvas = canvas.copy()
    for hand in hands:
        for edge, (a, b) in enumerate(HAND_EDGES):
            pa, pb = _visible(hand[a], h, w), _visible(hand[b], h, w)
            if pa is not None and pb is not None:
                cv2.line(canvas, pa, pb, hand_color(edge), thickness=2)
        for point in hand:
            p = _visible(point, h, w)
            if p is not None:
                cv2.circle(canvas, p, 4, (0, 0, 255), thickness=-1)
    return canvas


def draw_faces(canvas: np.ndarray, faces: Sequence[np.ndarray]) -> np.ndarray:
    """Faces (70, 2) normalised: white radius-3 dots."""
    import cv2

    h, w = canvas.shape[:2]
    canvas = canvas.copy()
    for face in faces:
        for point in face:
            p = _visible(point, h, w)
            if p is not None:
                cv2.circle(canvas, p, 3, (255, 255, 255), thickness=-1)
    return canvas


def draw_people(people: Sequence[Person], height: int, width: int, body: bool = True, hands: bool = True,
                face: bool = True, xinsir_sticks: bool = False) -> np.ndarray:
    """One frame's hint (height, width, 3) uint8: all bodies (limbs, x 0.6, joints), then hands, then faces."""
    canvas = np.zeros((height, width, 3), np.uint8)
    if body:
        canvas = draw_bodies(canvas, [p.body for p in people], stick_width(height, width, xinsir_sticks))
    if hands:
        canvas = draw_hands(canvas, [h for p in people for h in (p.left_hand, p.right_hand) if h is not None])
    if face:
        canvas = draw_faces(canvas, [p.face for p in people if p.face is not None])
    return canvas

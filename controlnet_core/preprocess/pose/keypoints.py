"""POSE_KEYPOINT: OpenPose JSON frames in and out (shared/research/preprocessors_next.md §1b).

A clip is a list with one dict per frame: {"people": [...], "canvas_width": W, "canvas_height": H}; a person holds
flat [x, y, c, ...] lists: "pose_keypoints_2d" (18 points), "hand_left_keypoints_2d" / "hand_right_keypoints_2d"
(21 each) and "face_keypoints_2d" (70), the last three optional (null). We write pixel coordinates of the canvas and
c = 1.0 for a present point (the consumers in the wild drop points with c < 1), 0, 0, 0 for a missing one. We read
pixels or normalised coordinates (all present points within [0, 1]), as the editors and controlnet_aux write both;
a point is present when c > 0.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import PreprocessError
from .draw import Person

FIELDS = (("pose_keypoints_2d", 18), ("hand_left_keypoints_2d", 21), ("hand_right_keypoints_2d", 21),
          ("face_keypoints_2d", 70))


def _flat(points: np.ndarray | None, width: int, height: int) -> list[float] | None:
    """(n, 2) normalised, NaN = missing -> [x, y, c] * n in pixels (c 1.0 present, 0, 0, 0 missing)."""
    if points is None:
        return None
    out: list[float] = []
    for x, y in points:
        out += [0.0, 0.0, 0.0] if math.isnan(x) or math.isnan(y) else [float(x) * width, float(y) * height, 1.0]
    return out


def frame_json(people: Sequence[Person], width: int, height: int) -> dict[str, Any]:
    """One frame's OpenPose dict (pixels of a `width` x `height` canvas)."""
    return {"people": [{"pose_keypoints_2d": _flat(p.body, width, height),
                        "face_keypoints_2d": _flat(p.face, width, height),
                        "hand_left_keypoints_2d": _flat(p.left_hand, width, height),
                        "hand_right_keypoints_2d": _flat(p.right_hand, width, height)} for p in people],
            "canvas_height": int(height), "canvas_width": int(width)}


def _frames(data: Any) -> list[Any]:
    """A JSON string, one frame dict or a list of frame dicts -> list of frame objects."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise PreprocessError(f"POSE_KEYPOINT is not valid JSON ({exc}): pass OpenPose JSON, one dict per "
                                  "frame") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, (list, tuple)) or not data:
        raise PreprocessError(f"POSE_KEYPOINT must be a list of frame dicts, got {type(data).__name__}"
                              f"{' (empty)' if isinstance(data, (list, tuple)) else ''}")
    return list(data)


def _canvas(frame: dict, where: str) -> tuple[int, int]:
    size = []
    for key in ("canvas_width", "canvas_height"):
        value = frame.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or value != int(value):
            raise PreprocessError(f"POSE_KEYPOINT {where}.{key}: expected a positive whole number of pixels, got "
                                  f"{value!r}")
        size.append(int(value))
    return size[0], size[1]


def _points(value: Any, count: int, where: str) -> np.ndarray | None:
    """A flat [x, y, c] * count list (or null / []) -> (count, 3) float64, or None."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 3 * count:
        n = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
        raise PreprocessError(f"POSE_KEYPOINT {where}: expected a flat list of {3 * count} numbers ({count} x, y, "
                              f"confidence), got {n}")
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(count, 3)
    except (TypeError, ValueError):
        raise PreprocessError(f"POSE_KEYPOINT {where}: every entry must be a number") from None
    if not np.isfinite(arr).all():
        raise PreprocessError(f"POSE_KEYPOINT {where}: entries must be finite numbers")
    return arr


def parse(data: Any) -> list[tuple[list[Person], int, int]]:
    """POSE_KEYPOINT (list of frame dicts, one dict, or their JSON text) -> per frame (people normalised, canvas
    width, canvas height); a PreprocessError naming the frame and field otherwise."""
    out = []
    for f, frame in enumerate(_frames(data)):
        where = f"frame {f}"
        if not isinstance(frame, dict):
            raise PreprocessError(f"POSE_KEYPOINT {where}: expected a dict, got {type(frame).__name__}")
        width, height = _canvas(frame, where)
        people = frame.get("people", [])
        if not isinstance(people, (list, tuple)):
            raise PreprocessError(f"POSE_KEYPOINT {where}.people: expected a list, got {type(people).__name__}")
        raw = []
        for p, person in enumerate(people):
            if not isinstance(person, dict):
                raise PreprocessError(f"POSE_KEYPOINT {where}.people[{p}]: expected a dict")
            raw.append([_points(person.get(key), n, f"{where}.people[{p}].{key}") for key, n in FIELDS])
        present = [a[a[:, 2] > 0, :2] for parts in raw for a in parts if a is not None]
        coords = np.concatenate(present) if present else np.zeros((0, 2))
        normalised = coords.size > 0 and coords.min() >= 0.0 and coords.max() <= 1.0
        scale = np.array([1.0, 1.0]) if normalised else np.array([float(width), float(height)])
        out.append(([_person(parts, scale) for parts in raw], width, height))
    return out


def _person(parts: list[np.ndarray | None], scale: np.ndarray) -> Person:
    def norm(a):
        if a is None:
            return None
        xy = a[:, :2] / scale
        xy[a[:, 2] <= 0] = np.nan
        return xy

    body = norm(parts[0])
    return Person(body if body is not None else np.full((18, 2), np.nan), norm(parts[1]), norm(parts[2]),
                  norm(parts[3]))

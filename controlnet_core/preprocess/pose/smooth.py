"""Video: follow people across frames and smooth their keypoints with a One-Euro filter (Casiez, Roussel and
Vogel, CHI 2012; shared/research/preprocessors_next.md §4), so that a clip's skeletons do not jitter.

Tracking: people of consecutive frames are matched by the mean distance of their shared body joints (Hungarian
assignment), accepted below half the previous person's size; unmatched people start new tracks. Filtering: every
coordinate of a track runs through a One-Euro filter (cutoff = min_cutoff + beta * |speed|, speed itself low-passed
at d_cutoff), in canvas-normalised units at `fps`; a point missing in a frame stays missing, and its filter restarts
when it comes back. The clip is filtered forwards and backwards and the two are averaged: a causal One-Euro filter
lags behind motion (on the test clip its error against the clean skeleton doubles), the average of the two
directions does not (`both_ways=False` gives the causal filter, for chunk-by-chunk use).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .draw import Person

PARTS = ("body", "left_hand", "right_hand", "face")


@dataclass(frozen=True)
class OneEuro:
    """One-Euro filter settings: cutoffs in Hz at `fps` frames per second, `beta` per canvas-width per second."""

    min_cutoff: float = 1.0
    beta: float = 5.0
    d_cutoff: float = 1.0
    fps: float = 30.0

    def alpha(self, cutoff: np.ndarray) -> np.ndarray:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * self.fps)


@dataclass
class _State:
    """Filter state of one keypoint array (n, 2): last output, last derivative, whether each point is live."""

    x: np.ndarray
    dx: np.ndarray
    live: np.ndarray


def one_euro_step(state: _State | None, value: np.ndarray, f: OneEuro) -> tuple[np.ndarray, _State]:
    """Filter one frame of points (n, 2), NaN = missing -> (filtered points, new state)."""
    present = ~np.isnan(value).any(axis=1)
    if state is None:
        state = _State(value.copy(), np.zeros_like(value), present.copy())
        return value.copy(), state
    restart = present & ~state.live
    dx = np.where(present[:, None], (value - state.x) * f.fps, 0.0)
    a_d = f.alpha(np.full_like(dx, f.d_cutoff))
    dx_hat = a_d * dx + (1 - a_d) * state.dx
    speed = np.linalg.norm(dx_hat, axis=1, keepdims=True)
    a = f.alpha(f.min_cutoff + f.beta * speed)
    x_hat = a * value + (1 - a) * state.x
    x_hat[restart] = value[restart]
    dx_hat[restart] = 0.0
    out = np.where(present[:, None], x_hat, np.nan)
    new = _State(np.where(present[:, None], x_hat, state.x), np.where(present[:, None], dx_hat, state.dx),
                 present)
    return out, new


def _size(body: np.ndarray) -> float:
    pts = body[~np.isnan(body).any(axis=1)]
    return float(np.linalg.norm(pts.max(0) - pts.min(0))) if len(pts) > 1 else 0.0


def match(previous: list[np.ndarray], current: list[np.ndarray]) -> dict[int, int]:
    """Bodies (18, 2) of the previous and the current frame -> {current index: previous index}."""
    from scipy.optimize import linear_sum_assignment

    if not previous or not current:
        return {}
    cost = np.full((len(current), len(previous)), 1e6)
    for i, c in enumerate(current):
        for j, p in enumerate(previous):
            shared = ~np.isnan(c).any(1) & ~np.isnan(p).any(1)
            if shared.any():
                d = float(np.linalg.norm(c[shared] - p[shared], axis=1).mean())
                if d < max(0.05, 0.5 * _size(p)):
                    cost[i, j] = d
    rows, cols = linear_sum_assignment(cost)
    return {int(i): int(j) for i, j in zip(rows, cols) if cost[i, j] < 1e6}


@dataclass
class _Track:
    body: np.ndarray  # last raw body, for matching
    states: dict = field(default_factory=dict)  # part -> _State


def smooth_people(frames: list[list[Person]], settings: OneEuro = OneEuro(),
                  both_ways: bool = True) -> list[list[Person]]:
    """People per frame (normalised) -> the same people, each followed across frames and One-Euro filtered
    (the mean of the forward and the backward pass when `both_ways`)."""
    forward = _one_way(frames, settings)
    if not both_ways:
        return forward
    backward = _one_way(frames[::-1], settings)[::-1]
    return [[_mean(a, b) for a, b in zip(fa, fb)] for fa, fb in zip(forward, backward)]


def _mean(a: Person, b: Person) -> Person:
    """The average of two filtered versions of one detection (same parts present)."""
    return replace(a, **{part: (getattr(a, part) + getattr(b, part)) / 2 for part in PARTS
                         if getattr(a, part) is not None})


def _one_way(frames: list[list[Person]], settings: OneEuro) -> list[list[Person]]:
    """Causal tracking and filtering, frame by frame."""
    out, tracks, previous = [], [], []  # previous: track index of each person of the last frame
    for people in frames:
        pairs = match([tracks[t].body for t in previous], [p.body for p in people])
        current, smoothed = [], []
        for i, person in enumerate(people):
            if i in pairs:
                t = previous[pairs[i]]
            else:
                tracks.append(_Track(person.body))
                t = len(tracks) - 1
            track = tracks[t]
            track.body = person.body
            parts = {}
            for part in PARTS:
                value = getattr(person, part)
                if value is None:
                    track.states.pop(part, None)
                    continue
                parts[part], track.states[part] = one_euro_step(track.states.get(part), value, settings)
            current.append(t)
            smoothed.append(replace(person, **parts))
        previous = current
        out.append(smoothed)
    return out

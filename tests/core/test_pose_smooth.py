"""Video smoothing of pose keypoints: tracking + One-Euro filter on a synthetic clip (a skeleton moved smoothly,
plus keypoint noise). Goal (issue 10): mean frame-to-frame jitter falls by >= 50 % while the mean error against
the clean skeleton does not grow."""
from __future__ import annotations

import numpy as np
import pytest

from controlnet_core.preprocess.pose.draw import Person
from controlnet_core.preprocess.pose.smooth import match, smooth_people

SKELETON = np.array([[0.50, 0.20], [0.50, 0.30], [0.42, 0.30], [0.38, 0.42], [0.36, 0.54], [0.58, 0.30],
                     [0.62, 0.42], [0.64, 0.54], [0.45, 0.55], [0.45, 0.70], [0.45, 0.85], [0.55, 0.55],
                     [0.55, 0.70], [0.55, 0.85], [0.48, 0.18], [0.52, 0.18], [0.46, 0.19], [0.54, 0.19]])


def clip(frames: int = 90, offset: float = 0.0, seed: int = 0, noise: float = 0.004):
    """(clean, noisy) bodies (frames, 18, 2): the skeleton swaying and walking, then noise of `noise` canvas."""
    t = np.arange(frames)[:, None, None] / 30.0
    clean = SKELETON[None] * 0.6 + 0.2 + offset
    clean = clean + np.concatenate([0.1 * np.sin(2 * np.pi * 0.4 * t), 0.03 * np.sin(2 * np.pi * 0.7 * t)], 2)
    noisy = clean + np.random.default_rng(seed).normal(0, noise, clean.shape)
    return clean, noisy


def jitter(x: np.ndarray) -> float:
    """Mean norm of the frame-to-frame change of velocity (second difference): 0 for steady motion."""
    return float(np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=-1).mean())


def error(x: np.ndarray, clean: np.ndarray) -> float:
    return float(np.linalg.norm(x - clean, axis=-1).mean())


@pytest.mark.parametrize("noise", (0.002, 0.004, 0.008))
def test_jitter_halves_and_error_does_not_grow(noise):
    clean, noisy = clip(noise=noise)
    out = smooth_people([[Person(b)] for b in noisy])
    smoothed = np.stack([frame[0].body for frame in out])
    assert jitter(smoothed) <= 0.5 * jitter(noisy)
    assert error(smoothed, clean) <= error(noisy, clean)


def test_the_causal_filter_lags():
    """Why both directions: one way, the error against the clean skeleton grows on this clip."""
    clean, noisy = clip()
    out = smooth_people([[Person(b)] for b in noisy], both_ways=False)
    smoothed = np.stack([frame[0].body for frame in out])
    assert jitter(smoothed) <= 0.5 * jitter(noisy) and error(smoothed, clean) > error(noisy, clean)


def test_people_are_followed_when_their_order_changes():
    (ca, na), (cb, nb) = clip(offset=-0.15, seed=1), clip(offset=0.15, seed=2)
    frames = [[Person(a), Person(b)] if t % 3 else [Person(b), Person(a)] for t, (a, b) in enumerate(zip(na, nb))]
    out = smooth_people(frames)
    for t, frame in enumerate(out):
        a, b = (frame[0], frame[1]) if t % 3 else (frame[1], frame[0])  # the frame's order is kept
        assert np.linalg.norm(a.body - ca[t], axis=1).mean() < 0.02
        assert np.linalg.norm(b.body - cb[t], axis=1).mean() < 0.02
    assert match([ca[0]], [cb[0], ca[0]]) == {1: 0}


def test_missing_points_stay_missing_and_empty_frames_pass():
    _, noisy = clip(frames=10)
    noisy[4:6, 3] = np.nan
    frames = [[Person(b, face=None)] for b in noisy]
    frames[7] = []
    out = smooth_people(frames)
    assert np.isnan(out[4][0].body[3]).all() and not np.isnan(out[6][0].body[3]).any()
    causal = smooth_people(frames, both_ways=False)
    np.testing.assert_allclose(causal[6][0].body[3], noisy[6, 3])  # a point that comes back restarts its filter
    assert out[7] == [] and len(out[8]) == 1

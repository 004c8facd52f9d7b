"""Edge and threshold preprocessors: canny (OpenCV-exact, batched torch or OpenCV), threshold / binary (Otsu).

The ControlNet canny models were trained on `cv2.Canny(rgb_uint8, 100, 200)` (lllyasviel/ControlNet
annotator/canny/__init__.py): 3x3 Sobel with replicated borders, L1 gradient magnitude, on a 3-channel image the
channel with the largest magnitude per pixel, non-maximum suppression in four sectors, hysteresis with
8-connectivity. `canny_torch` reproduces that bit for bit (the tests compare with cv2 on real photographs).
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from ..errors import PreprocessError
from ._choices import CANNY_BACKENDS
from ._image import batch_slices, rgb_to_gray_u8, to_bchw, to_bhwc, to_uint8

logger = logging.getLogger(__name__)

_TG22 = 13573  # round(tan(22.5 deg) * 2**15): OpenCV's fixed-point sector boundary
_SHIFT = 15
_FLT_EPSILON = 1.1920928955078125e-07
TORCH_CHUNK_FRAMES = 16  # frames per batched torch Canny call (bounds the int32 temporaries)


def canny(image: torch.Tensor, low_threshold: int = 100, high_threshold: int = 200, backend: str = "auto",
          progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Canny edges as cv2.Canny(rgb_uint8, low, high) computes them; thresholds on the 0-255 gradient scale."""
    if backend not in CANNY_BACKENDS:
        raise PreprocessError(f"canny backend {backend!r} is not one of {CANNY_BACKENDS}")
    use_cv2 = backend == "opencv" or (backend == "auto" and image.device.type == "cpu")
    out = torch.empty(image.shape[:3] + (3,), dtype=torch.float32, device="cpu" if use_cv2 else image.device)
    if use_cv2:
        _canny_frames_opencv(image, out, low_threshold, high_threshold, progress)
        return out.to(image.device)
    for part in batch_slices(image.shape[0], TORCH_CHUNK_FRAMES):
        edges = canny_torch(to_uint8(to_bchw(image[part])), low_threshold, high_threshold)  # (b, H, W) bool
        out[part] = edges[..., None].expand(-1, -1, -1, 3)
        if progress is not None:
            progress(part.stop, image.shape[0])
    return out


def _canny_frames_opencv(image: torch.Tensor, out: torch.Tensor, low: float, high: float,
                         progress: Callable[[int, int], None] | None) -> None:
    """cv2.Canny frame by frame into `out` (B, H, W, 3) float32; frames in parallel threads (OpenCV drops the GIL).

    Each frame is converted, edged and written back while it is in cache, which is what makes a batch faster
    than the usual convert-all, loop, stack-all sequence.
    """
    import cv2
    import numpy as np

    # Worker threads write through a NumPy view: inference mode (the host runs nodes in it) is thread-local, so a
    # torch in-place write from a worker into an inference tensor would raise.
    out_np = out.numpy()  # (B, H, W, 3) float32, shares memory with `out`

    def one(i: int) -> int:
        rgb = to_uint8(image[i].cpu()).numpy()  # (H, W, 3) uint8, contiguous
        edges = cv2.Canny(rgb, float(low), float(high))  # (H, W) uint8 in {0, 255}
        np.right_shift(edges, 7, out=edges)  # {0, 1}
        out_np[i] = edges[..., None]  # broadcast to 3 channels
        return i

    total = image.shape[0]
    with ThreadPoolExecutor(max_workers=min(total, max(1, os.cpu_count() or 1), 8)) as pool:
        for done, _ in enumerate(pool.map(one, range(total)), start=1):
            if progress is not None:
                progress(done, total)


def canny_opencv(rgb: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, H, W) bool with cv2.Canny frame by frame."""
    import cv2
    import numpy as np

    frames = rgb.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) uint8
    out = np.empty(frames.shape[:3], dtype=np.uint8)
    for i, frame in enumerate(frames):
        cv2.Canny(np.ascontiguousarray(frame), float(low), float(high), edges=out[i])
    return torch.from_numpy(out).to(rgb.device) > 0


def canny_torch(rgb: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """(B, C, H, W) uint8 -> (B, H, W) bool; batched, on the input's device, equal to cv2.Canny (L1, aperture 3)."""
    low, high = sorted((float(low), float(high)))
    dx, dy = _sobel(rgb)  # (B, C, H, W) int16 each
    mag, dx, dy = _strongest_channel(dx, dy)  # (B, H, W) int32 each
    candidate = _non_maximum_suppression(mag, dx, dy) & (mag > math.floor(low))
    strong = candidate & (mag > math.floor(high))
    return hysteresis(candidate, strong)


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3 Sobel derivatives with BORDER_REPLICATE, in int16 (exact: |d| <= 4 * 255)."""
    p = x.to(torch.int16)
    p = torch.cat([p[..., :1, :], p, p[..., -1:, :]], dim=-2)  # replicate the border rows
    p = torch.cat([p[..., :1], p, p[..., -1:]], dim=-1)  # (B, C, H+2, W+2)
    smooth_v = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]  # (B, C, H, W+2)
    smooth_h = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]  # (B, C, H+2, W)
    return smooth_v[..., 2:] - smooth_v[..., :-2], smooth_h[..., 2:, :] - smooth_h[..., :-2, :]


def _strongest_channel(dx: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel, the channel with the largest |dx| + |dy| (the first one on ties), as OpenCV does for cn > 1."""
    mag = dx.abs() + dy.abs()  # (B, C, H, W)
    best_mag, best_dx, best_dy = mag[:, 0], dx[:, 0], dy[:, 0]
    for c in range(1, mag.shape[1]):
        better = mag[:, c] > best_mag
        best_mag = torch.where(better, mag[:, c], best_mag)
        best_dx = torch.where(better, dx[:, c], best_dx)
        best_dy = torch.where(better, dy[:, c], best_dy)
    return best_mag.to(torch.int32), best_dx.to(torch.int32), best_dy.to(torch.int32)


def _non_maximum_suppression(mag: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Keep local maxima along the gradient in four sectors (OpenCV's fixed-point tan(22.5)/tan(67.5) tests)."""
    h, w = mag.shape[-2:]
    p = F.pad(mag, (1, 1, 1, 1))  # magnitudes outside the image are 0

    def at(oy: int, ox: int) -> torch.Tensor:
        return p[:, 1 + oy: 1 + oy + h, 1 + ox: 1 + ox + w]

    ax, ay = dx.abs(), dy.abs() << _SHIFT
    tg22x = ax * _TG22
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg22x + (ax << (_SHIFT + 1)))
    diagonal = ~(horizontal | vertical)
    same_sign = (dx ^ dy) >= 0
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep_d = torch.where(same_sign, (mag > at(-1, -1)) & (mag > at(1, 1)), (mag > at(-1, 1)) & (mag > at(1, -1)))
    return (horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d)


def hysteresis(candidate: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """Keep the 8-connected components of `candidate` (B, H, W) that hold a `strong` pixel.

    Connected components by label propagation with hooking and pointer jumping over the candidate pixels only
    (a few percent of the image); it converges in a handful of rounds, each a few gathers, on any device.
    """
    b, h, w = candidate.shape
    where = candidate.nonzero()  # (K, 3): frame, row, col
    k = where.shape[0]
    out = torch.zeros_like(candidate)
    if k == 0:
        return out
    neighbours = _neighbour_table(where, (b, h, w))  # (8, K) candidate ids (self where none)
    label = torch.arange(k, device=candidate.device)
    while True:
        lowest = label[neighbours].amin(dim=0)  # (K,)
        merged = torch.minimum(label.scatter_reduce(0, label, lowest, "amin"), lowest)  # hook roots
        merged = _compress(merged)
        if torch.equal(merged, label):
            break
        label = merged
    is_strong = strong[where[:, 0], where[:, 1], where[:, 2]].to(torch.int8)
    root_strong = torch.zeros(k, dtype=torch.int8, device=candidate.device).scatter_reduce(0, label, is_strong, "amax")
    out[where[:, 0], where[:, 1], where[:, 2]] = root_strong[label] > 0
    return out


def _neighbour_table(where: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """(K, 3) candidate coordinates -> (8, K) ids of their 8 neighbours that are candidates, else their own id."""
    b, h, w = shape
    k = where.shape[0]
    ids = torch.full((b, h + 2, w + 2), -1, dtype=torch.int64, device=where.device)
    own = torch.arange(k, device=where.device)
    f, y, x = where[:, 0], where[:, 1] + 1, where[:, 2] + 1
    ids[f, y, x] = own
    columns = []
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            if oy or ox:
                n = ids[f, y + oy, x + ox]
                columns.append(torch.where(n < 0, own, n))
    return torch.stack(columns, dim=0)


def _compress(label: torch.Tensor) -> torch.Tensor:
    """Pointer jumping: follow label -> label[label] until every label is a root."""
    while True:
        jumped = label[label]
        if torch.equal(jumped, label):
            return label
        label = jumped


# ---------------------------------------------------------------------------------------------- threshold / Otsu

def threshold(image: torch.Tensor, threshold: int = 127, invert: bool = False,
              temporal_normalize: bool = False) -> torch.Tensor:
    """White where the grey level (cv2 RGB2GRAY) is above `threshold` (0-255); 0 picks it by Otsu's method."""
    return _threshold(image, threshold, invert, temporal_normalize)


def binary(image: torch.Tensor, threshold: int = 100, invert: bool = True,
           temporal_normalize: bool = False) -> torch.Tensor:
    """comfyui_controlnet_aux's Binary: the inverted threshold (dark strokes become white), 0 for Otsu."""
    return _threshold(image, threshold, invert, temporal_normalize)


def _threshold(image: torch.Tensor, level: int, invert: bool, temporal: bool) -> torch.Tensor:
    gray = rgb_to_gray_u8(to_uint8(to_bchw(image)))  # (B, 1, H, W) uint8
    if int(level) == 0:
        cut = otsu_threshold(gray, temporal).view(-1, 1, 1, 1)
    else:
        cut = torch.tensor(int(level), device=gray.device)
    mask = gray.to(torch.int32) > cut  # cv2.THRESH_BINARY: src > thresh
    return to_bhwc((~mask if invert else mask).to(torch.float32))


def otsu_threshold(gray: torch.Tensor, temporal: bool = False) -> torch.Tensor:
    """Otsu's threshold of (B, 1, H, W) uint8 per frame (B,), or one for the batch, as cv2.THRESH_OTSU picks it."""
    frames = gray.reshape(1 if temporal else gray.shape[0], -1).to(torch.int64)
    offsets = torch.arange(frames.shape[0], device=gray.device)[:, None] * 256
    hist = torch.bincount((frames + offsets).reshape(-1), minlength=256 * frames.shape[0])
    levels = [_otsu_from_histogram(h) for h in hist.view(-1, 256).cpu().tolist()]
    out = torch.tensor(levels, dtype=torch.int32, device=gray.device)
    return out.expand(gray.shape[0]) if temporal else out


def _otsu_from_histogram(hist: list[int]) -> int:
    """Otsu (1979) on a 256-bin histogram, the same running sums and epsilon guard as OpenCV's getThreshVal_Otsu."""
    scale = 1.0 / sum(hist)
    mu = sum(i * n for i, n in enumerate(hist)) * scale
    q1 = mu1 = best_sigma = 0.0
    best = 0
    for i, n in enumerate(hist):
        p = n * scale
        mu1 *= q1
        q1 += p
        q2 = 1.0 - q1
        if min(q1, q2) < _FLT_EPSILON or max(q1, q2) > 1.0 - _FLT_EPSILON:
            continue
        mu1 = (mu1 + i * p) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) ** 2
        if sigma > best_sigma:
            best_sigma, best = sigma, i
    return best

"""The ControlNet 1.1 OpenPose annotator (ControlNet-v1-1-nightly annotator/openpose/{body,hand,face,util}.py, as
controlnet_aux 0.0.10 packages it): the networks in ../nets/openpose.py run batched (all frames, then all hand
crops per scale, then all face crops); resizing and peak grouping follow the annotator step by step on the CPU
(OpenCV resizes with its INTER_AREA / INTER_LANCZOS4 choice, scipy's Gaussian, the PAF matching), so the
keypoints equal the annotator's.

Body: one scale (0.5 x 368 / H), padded to a multiple of 8 with grey 128, BGR / 256 - 0.5; heat maps and PAFs
back to the picture; peaks of the sigma-3 smoothed heat maps above 0.1; limbs scored by 10 PAF samples; people
with at least 4 parts and a mean score of 0.4. Hands: a square box from wrist, elbow and shoulder, 4 scales
(184 .. 736 px) averaged at 128 px, the largest blob above 0.05 per joint. Face: a square box from nose, eyes and
ears, 384 px, the maximum above 0.05 per landmark.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..nets.openpose import OPENPOSE_BODY, OPENPOSE_FACE, OPENPOSE_HAND
from .draw import Person

BOX, STRIDE, PAD_VALUE = 368, 8, 128
# 1-based limb pairs of the 18 body parts and the PAF channel pair of each (annotator body.py)
LIMB_SEQ = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
            (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18))
PAF_IDX = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
           (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))


def resize_to(x: np.ndarray, height: int, width: int, k: float | None = None) -> np.ndarray:
    """(h, w, C) -> (height, width, C) with the annotator's choice: INTER_AREA when shrinking (`k`, by default the
    summed sides' ratio, below 1), INTER_LANCZOS4 otherwise; channel by channel when C is not 1 or 3, as it does."""
    import cv2

    k = (height + width) / (x.shape[0] + x.shape[1]) if k is None else k
    mode = cv2.INTER_AREA if k < 1 else cv2.INTER_LANCZOS4
    if x.ndim == 3 and x.shape[2] not in (1, 3):
        return np.stack([cv2.resize(x[..., c], (width, height), interpolation=mode) for c in range(x.shape[2])], 2)
    out = cv2.resize(x, (width, height), interpolation=mode)
    return out[..., None] if x.ndim == 3 and out.ndim == 2 else out


def pad_grey(img: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(h, w, 3) uint8 -> padded right/down to multiples of 8 with 128, and the padding (down, right)."""
    down, right = -img.shape[0] % STRIDE, -img.shape[1] % STRIDE
    return np.pad(img, ((0, down), (0, right), (0, 0)), constant_values=PAD_VALUE), (down, right)


def net_input(imgs: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-size (h, w, 3) uint8 BGR pictures -> (N, 3, h, w) float32 / 256 - 0.5."""
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 256.0 - 0.5


def maps_back(maps: np.ndarray, padded: tuple[int, int], pad: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Network maps (h/8, w/8, C) -> x8, padding removed, resized to `size` (H, W): (H, W, C) float."""
    up = resize_to(maps, maps.shape[0] * STRIDE, maps.shape[1] * STRIDE)
    up = up[: padded[0] - pad[0], : padded[1] - pad[1]]
    return resize_to(up, *size)


def _peaks(heat: np.ndarray, threshold: float = 0.1) -> list[list[tuple[float, float, float, int]]]:
    """Per body part: (x, y, score, id) of the local maxima of the sigma-3 smoothed heat map above `threshold`."""
    from scipy.ndimage import gaussian_filter

    out, counter = [], 0
    for part in range(18):
        raw = heat[..., part]
        s = gaussian_filter(raw, sigma=3)
        ok = s > threshold
        ok[1:] &= s[1:] >= s[:-1]
        ok[:-1] &= s[:-1] >= s[1:]
        ok[:, 1:] &= s[:, 1:] >= s[:, :-1]
        ok[:, :-1] &= s[:, :-1] >= s[:, 1:]
        ys, xs = np.nonzero(ok)
        out.append([(int(x), int(y), float(raw[y, x]), counter + i) for i, (y, x) in enumerate(zip(ys, xs))])
        counter += len(xs)
    return out


def _connections(peaks, paf: np.ndarray, height: int, threshold: float = 0.05):
    """Per limb: accepted (id A, id B, score, index A, index B) rows, or None when a side has no candidate."""
    out = []
    for (a, b), (px, py) in zip(LIMB_SEQ, PAF_IDX):
        cand_a, cand_b = peaks[a - 1], peaks[b - 1]
        if not cand_a or not cand_b:
            out.append(None)
            continue
        scored = []
        for i, pa in enumerate(cand_a):
            for j, pb in enumerate(cand_b):
                dx, dy = pb[0] - pa[0], pb[1] - pa[1]
                norm = max(0.001, math.sqrt(dx * dx + dy * dy))
                xs = np.round(np.linspace(pa[0], pb[0], num=10)).astype(int)
                ys = np.round(np.linspace(pa[1], pb[1], num=10)).astype(int)
                along = paf[ys, xs, px] * (dx / norm) + paf[ys, xs, py] * (dy / norm)
                prior = sum(along) / len(along) + min(0.5 * height / norm - 1, 0)  # sequential sum, as upstream
                if np.count_nonzero(along > threshold) > 0.8 * len(along) and prior > 0:
                    scored.append((i, j, prior))
        scored.sort(key=lambda s: s[2], reverse=True)  # stable, as the annotator's sorted()
        rows, used_a, used_b = [], set(), set()
        for i, j, s in scored:
            if i not in used_a and j not in used_b:
                rows.append((cand_a[i][3], cand_b[j][3], s, i, j))
                used_a.add(i)
                used_b.add(j)
                if len(rows) >= min(len(cand_a), len(cand_b)):
                    break
        out.append(rows)
    return out


def _group(connections, candidate: np.ndarray) -> np.ndarray:
    """People as rows of 20: candidate id per part (-1 missing), total score, part count (annotator body.py)."""
    subset = np.zeros((0, 20))
    for k, rows in enumerate(connections):
        if rows is None:
            continue
        ia, ib = LIMB_SEQ[k][0] - 1, LIMB_SEQ[k][1] - 1
        for id_a, id_b, score, _, _ in rows:
            hits = [j for j in range(len(subset)) if subset[j][ia] == id_a or subset[j][ib] == id_b][:2]
            overlap = len(hits) == 2 and ((subset[hits[0]][:-2] >= 0) & (subset[hits[1]][:-2] >= 0)).any()
            if len(hits) == 1 and subset[hits[0]][ib] != id_b or overlap:  # extend (when overlapping: always)
                j = hits[0]
                subset[j][ib] = id_b
                subset[j][-1] += 1
                subset[j][-2] += candidate[int(id_b), 2] + score
            elif len(hits) == 2:  # two disjoint people joined by this limb: merge
                j1, j2 = hits
                subset[j1][:-2] += subset[j2][:-2] + 1
                subset[j1][-2:] += subset[j2][-2:]
                subset[j1][-2] += score
                subset = np.delete(subset, j2, 0)
            elif not hits and k < 17:
                row = -np.ones(20)
                row[ia], row[ib] = id_a, id_b
                row[-1] = 2
                row[-2] = candidate[int(id_a), 2] + candidate[int(id_b), 2] + score
                subset = np.vstack([subset, row])
    keep = (subset[:, -1] >= 4) & (subset[:, -2] / np.maximum(subset[:, -1], 1e-12) >= 0.4)
    return subset[keep]


def decode_body(heat: np.ndarray, paf: np.ndarray) -> list[np.ndarray]:
    """Heat maps (H, W, 19) and PAFs (H, W, 38) at the picture's size -> people: (18, 2) pixel coords, NaN missing."""
    heat, paf = heat.astype(np.float64), paf.astype(np.float64)  # the annotator accumulates in float64
    peaks = _peaks(heat)
    candidate = np.array([p for part in peaks for p in part], dtype=np.float64).reshape(-1, 4)
    subset = _group(_connections(peaks, paf, heat.shape[0]), candidate)
    people = []
    for row in subset:
        body = np.full((18, 2), np.nan)
        for part in range(18):
            if row[part] >= 0:
                body[part] = candidate[int(row[part]), :2]
        people.append(body)
    return people


def hand_boxes(body: np.ndarray, height: int, width: int) -> list[tuple[int, int, int, bool]]:
    """(x, y, side, is_left) square crops for the hands of a body (pixels), from wrist, elbow and shoulder."""
    out = []
    for shoulder, elbow, wrist, is_left in ((5, 6, 7, True), (2, 3, 4, False)):
        pts = body[[shoulder, elbow, wrist]]
        if np.isnan(pts).any():
            continue
        (x1, y1), (x2, y2), (x3, y3) = pts
        x, y = x3 + 0.33 * (x3 - x2), y3 + 0.33 * (y3 - y2)
        side = 1.5 * max(math.hypot(x3 - x2, y3 - y2), 0.9 * math.hypot(x2 - x1, y2 - y1))
        x, y = max(x - side / 2, 0), max(y - side / 2, 0)
        side = min(width - x if x + side > width else side, height - y if y + side > height else side)
        if side >= 20:
            out.append((int(x), int(y), int(side), is_left))
    return out


def face_box(body: np.ndarray, height: int, width: int) -> tuple[int, int, int] | None:
    """(x, y, side) square crop for the face of a body (pixels), from the nose, eyes and ears."""
    nose = body[0]
    if np.isnan(nose).any() or np.isnan(body[14:18]).any(axis=1).all():
        return None
    side = 0.0
    for part, factor in ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5)):
        if not np.isnan(body[part]).any():
            side = max(side, factor * float(np.abs(nose - body[part]).max()))
    x, y = max(nose[0] - side, 0), max(nose[1] - side, 0)
    w1 = width - x if x + side > width else side * 2  # the annotator tests x + half-side here
    w2 = height - y if y + side > height else side * 2
    side = min(w1, w2)
    return (int(x), int(y), int(side)) if side >= 20 else None


def _hand_peaks(heat: np.ndarray, crop: int) -> np.ndarray:
    """Averaged hand maps (128, 128, 22) -> (21, 2) pixel coords in the crop; (0, 0) where nothing is above 0.05."""
    from scipy.ndimage import gaussian_filter, label

    out = np.zeros((21, 2))
    for part in range(21):
        raw = heat[..., part].copy()
        blobs, count = label(gaussian_filter(raw, sigma=3) > 0.05, structure=np.ones((3, 3)))
        if count == 0:
            continue
        best = 1 + int(np.argmax([raw[blobs == i].sum() for i in range(1, count + 1)]))
        raw[blobs != best] = 0
        y, x = np.unravel_index(np.argmax(raw), raw.shape)
        out[part] = (int(float(x) * crop / 128.0), int(float(y) * crop / 128.0))
    return out


def run_hands(net: torch.nn.Module, crops: list[np.ndarray], device, dtype) -> list[np.ndarray]:
    """Square BGR crops -> (21, 2) peaks each (crop pixels): 4 scales, each scale one batch of all crops."""
    import cv2

    if not crops:
        return []
    blurred = [cv2.GaussianBlur(c, (0, 0), 0.8) for c in crops]
    avg = np.zeros((len(crops), 128, 128, 22))
    for scale in (0.5, 1.0, 1.5, 2.0):
        side = int(scale * BOX)
        padded = [pad_grey(resize_to(c, side, side)) for c in blurred]
        with torch.inference_mode():
            maps = net(net_input([p for p, _ in padded]).to(device, dtype)).float().cpu().numpy()
        for n, (p, pad) in enumerate(padded):
            avg[n] += maps_back(maps[n].transpose(1, 2, 0), p.shape[:2], pad, (128, 128)) / 4
    return [_hand_peaks(avg[n], crops[n].shape[0]) for n in range(len(crops))]


def run_faces(net: torch.nn.Module, crops: list[np.ndarray], device, dtype) -> list[np.ndarray]:
    """Square BGR crops -> (70, 2) landmarks each (crop pixels, NaN where nothing is above 0.05), one batch."""
    import torch.nn.functional as F

    if not crops:
        return []
    x = net_input([resize_to(c, 384, 384) for c in crops]).to(device, dtype)
    with torch.inference_mode():
        maps = net(x).float()  # (N, 71, 48, 48)
    out = []
    for n, crop in enumerate(crops):
        heat = F.interpolate(maps[n: n + 1], crop.shape[:2], mode="bilinear", align_corners=True)[0, :70]
        flat = heat.flatten(1)
        best = flat.argmax(1).cpu().numpy()
        ok = (flat.max(1).values > 0.05).cpu().numpy()
        pts = np.stack([best % crop.shape[1], best // crop.shape[1]], 1).astype(np.float64)
        pts[~ok] = np.nan
        out.append(pts)
    return out


def _crop_dirs(models_dir):
    """Hand and face files sit beside the body file: a file in `models_dir` stands for its folder."""

    from ..nets import search_dirs

    return [p.parent if p.is_file() else p for p in search_dirs(models_dir)]


def _missing_below(points: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Crop peaks (n, 2) -> picture pixels; a coordinate below 1e-6 in the crop means missing (annotator rule)."""
    out = points + (x0, y0)
    out[(points < 1e-6).any(axis=1)] = np.nan
    return out


def load_nets(cache, models_dir, hands: bool, face: bool):
    """(body, hand or None, face or None, device) from the NetCache; hand and face files beside the body file."""
    _, body, device = cache.get(models_dir, [OPENPOSE_BODY], image_device="cpu")
    hand = cache.get(_crop_dirs(models_dir), [OPENPOSE_HAND], image_device="cpu")[1] if hands else None
    facenet = cache.get(_crop_dirs(models_dir), [OPENPOSE_FACE], image_device="cpu")[1] if face else None
    return body, hand, facenet, device


def detect_bodies(bgr: np.ndarray, net: torch.nn.Module, device, batch_size: int = 4,
                  progress=None) -> list[list[np.ndarray]]:
    """(B, H, W, 3) uint8 BGR -> per frame the bodies (18, 2) in pixels (NaN missing); frames batched."""
    count, height, width = bgr.shape[:3]
    dtype = next(net.parameters()).dtype
    scale = 0.5 * BOX / height
    small = [pad_grey(resize_to(f, int(height * scale), int(width * scale), k=scale)) for f in bgr]
    bodies = []
    for start in range(0, count, batch_size):
        part = small[start: start + batch_size]
        with torch.inference_mode():
            paf, heat = net(net_input([p for p, _ in part]).to(device, dtype))  # (b, 38 | 19, h/8, w/8)
        paf, heat = paf.float().cpu().numpy(), heat.float().cpu().numpy()
        for n, (p, pad) in enumerate(part):
            bodies.append(decode_body(maps_back(heat[n].transpose(1, 2, 0), p.shape[:2], pad, (height, width)),
                                      maps_back(paf[n].transpose(1, 2, 0), p.shape[:2], pad, (height, width))))
        if progress is not None:
            progress(min(start + batch_size, count), count)
    return bodies


def detect(frames: np.ndarray, body_net, hand_net, face_net, device, batch_size: int = 4,
           progress=None) -> list[list[Person]]:
    """(B, H, W, 3) uint8 RGB -> per frame the people, normalised by (W, H); hands / face when their net is given."""
    height, width = frames.shape[1:3]
    bgr = np.ascontiguousarray(frames[..., ::-1])
    bodies = detect_bodies(bgr, body_net, device, batch_size, progress)
    extra = {}  # (frame, person) -> {"left_hand" | "right_hand" | "face": (n, 2) pixels}
    if hand_net is not None:
        boxes = [(f, i, box) for f, people in enumerate(bodies) for i, b in enumerate(people)
                 for box in hand_boxes(b, height, width)]
        crops = [bgr[f][y: y + s, x: x + s] for f, _, (x, y, s, _) in boxes]
        dtype = next(hand_net.parameters()).dtype
        for (f, i, (x, y, _, left)), peaks in zip(boxes, run_hands(hand_net, crops, device, dtype)):
            extra.setdefault((f, i), {})["left_hand" if left else "right_hand"] = _missing_below(peaks, x, y)
    if face_net is not None:
        boxes = [(f, i, box) for f, people in enumerate(bodies) for i, b in enumerate(people)
                 if (box := face_box(b, height, width)) is not None]
        crops = [bgr[f][y: y + s, x: x + s] for f, _, (x, y, s) in boxes]
        dtype = next(face_net.parameters()).dtype
        for (f, i, (x, y, _)), peaks in zip(boxes, run_faces(face_net, crops, device, dtype)):
            extra.setdefault((f, i), {})["face"] = _missing_below(peaks, x, y)
    scale_xy = np.array([float(width), float(height)])
    return [[Person(b / scale_xy, **{k: v / scale_xy for k, v in extra.get((f, i), {}).items()})
             for i, b in enumerate(people)] for f, people in enumerate(bodies)]

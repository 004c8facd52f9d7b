"""DWPose whole-body pose (the `dwpose` preprocessor) as the ControlNet annotator runs it (IDEA-Research/DWPose, ControlNet-v1-1-nightly
annotator/dwpose/{onnxdet,onnxpose,wholebody}.py; rtmlib's YOLOX / RTMPose tools do the same), with the networks
of ../nets/yolox.py and ../nets/rtmpose.py batched: a chunk of frames goes through YOLOX in one call, and every
person found in those frames through RTMPose in one call, on the networks' device.

Detector: letterbox to 640x640 (cv2 INTER_LINEAR resize by min(640 / H, 640 / W), grey 114 padding right/down),
the RGB pixels as they are (0-255, no mean/std; YOLOX was trained on BGR, the annotator feeds RGB and so do we),
boxes from the grid decode, person score = objectness x class 0, kept above 0.3 after a greedy NMS at IoU 0.45
with the annotator's "+1 pixel" box areas. Pose: each box -> centre and size x 1.25, widened to 288:384, an affine
crop (cv2.warpAffine INTER_LINEAR, black outside) to 288x384, (x - mean) / std; SimCC argmax per axis, score =
min of the two maxima, bin / 2 back through the crop. 133 COCO-WholeBody keypoints -> OpenPose 18 (neck = mean of
the shoulders, present when both shoulder scores are above 0.3) + 68 face + 2 x 21 hands; a point is present when
its score is above 0.3 (body) or at least 0.3 (hands, face). The face gets the two eyes appended as OpenPose's
points 68, 69 (as comfyui_controlnet_aux writes it). Differs from the annotator on purpose: a frame with no person
found has no people (the annotator then runs the pose net on the whole frame and draws whatever it returns).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from ..nets.rtmpose import DWPOSE_L, INPUT_H, INPUT_W, SPLIT_RATIO
from ..nets.yolox import YOLOX_L, decode_boxes
from .draw import Person

DET_SIZE, DET_PAD = 640, 114
NMS_IOU, DET_SCORE, KPT_SCORE = 0.45, 0.3, 0.3
PADDING = 1.25
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
POSE_BATCH = 32  # person crops per RTMPose call
# COCO-WholeBody (neck inserted at 17) -> OpenPose 18: openpose index <- mmpose index (annotator wholebody.py)
OPENPOSE_IDX = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)
MMPOSE_IDX = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)


def letterbox(frame: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 -> (640, 640, 3) uint8 resized into the top-left corner on grey 114, and the ratio."""
    import cv2

    h, w = frame.shape[:2]
    ratio = min(DET_SIZE / h, DET_SIZE / w)
    out = np.full((DET_SIZE, DET_SIZE, 3), DET_PAD, np.uint8)
    nh, nw = int(h * ratio), int(w * ratio)
    out[:nh, :nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, ratio


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Greedy NMS, highest score first; areas and overlaps count pixels inclusively (w = x2 - x1 + 1)."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        lo, hi = np.maximum(boxes[i, :2], boxes[rest, :2]), np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.maximum(0.0, hi - lo + 1), axis=1)
        order = rest[inter / (area[i] + area[rest] - inter) <= iou]
    return keep


def run_detector(frames: np.ndarray, net: torch.nn.Module, device) -> list[np.ndarray]:
    """(B, H, W, 3) uint8 RGB -> per frame the person boxes (n, 4) float32 x1, y1, x2, y2 in frame pixels,
    highest score first; one network call for the batch."""
    boxed = [letterbox(f) for f in frames]
    dtype = next(net.parameters()).dtype
    x = torch.from_numpy(np.stack([b for b, _ in boxed])).to(device).permute(0, 3, 1, 2).to(dtype)  # (B,3,640,640)
    with torch.inference_mode():
        boxes, scores = decode_boxes(net(x).float(), DET_SIZE, DET_SIZE)  # (B, N, 4), (B, N)
    out = []
    for (_, ratio), b, s in zip(boxed, boxes, scores):
        hit = s > DET_SCORE
        b, s = (b[hit] / ratio).cpu().numpy(), s[hit].cpu().numpy()
        out.append(b[nms(b, s)] if len(s) else np.zeros((0, 4), np.float32))
    return out


def box_to_crop(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(4,) x1, y1, x2, y2 -> (centre (2,), size (2,)): size x 1.25, widened or heightened to 288:384."""
    centre = (box[:2].astype(np.float64) + box[2:]) * 0.5
    w, h = (box[2:].astype(np.float64) - box[:2]) * PADDING
    aspect = INPUT_W / INPUT_H
    size = np.array([w, w / aspect] if w > h * aspect else [h * aspect, h])
    return centre, size


def crop_matrix(centre: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The 2x3 affine map of the crop box onto the 288x384 input, from three float32 point pairs (the centre, the
    point half a width above it, and that one turned 90 degrees), solved by cv2.getAffineTransform."""
    import cv2

    def three(c, half):
        p = np.zeros((3, 2), np.float32)
        p[0], p[1] = c, c + np.array([0.0, -half])
        d = p[0] - p[1]
        p[2] = p[1] + np.array([-d[1], d[0]], np.float32)
        return p

    return cv2.getAffineTransform(three(centre, size[0] * 0.5), three(np.array([INPUT_W * 0.5, INPUT_H * 0.5]),
                                                                      INPUT_W * 0.5))


def crops(frames: np.ndarray, boxes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame boxes -> (crops (P, 384, 288, 3) uint8, centres (P, 2), sizes (P, 2)) for all P people."""
    import cv2

    out, centres, sizes = [], [], []
    for frame, frame_boxes in zip(frames, boxes):
        for box in frame_boxes:
            centre, size = box_to_crop(box)
            out.append(cv2.warpAffine(frame, crop_matrix(centre, size), (INPUT_W, INPUT_H), flags=cv2.INTER_LINEAR))
            centres.append(centre)
            sizes.append(size)
    if not out:
        return np.zeros((0, INPUT_H, INPUT_W, 3), np.uint8), np.zeros((0, 2)), np.zeros((0, 2))
    return np.stack(out), np.stack(centres), np.stack(sizes)


def simcc_decode(simcc_x: torch.Tensor, simcc_y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """SimCC logits (P, K, Wx), (P, K, Wy) -> (bins (P, K, 2) float32, -1 where the score is <= 0; scores (P, K) =
    min of the two maxima)."""
    vx, ix = simcc_x.max(-1)
    vy, iy = simcc_y.max(-1)
    scores = torch.minimum(vx, vy)
    locs = torch.stack([ix, iy], -1).float()
    locs[scores <= 0] = -1
    return locs.cpu().numpy(), scores.float().cpu().numpy()


def run_pose(pixels: np.ndarray, centres: np.ndarray, sizes: np.ndarray, net: torch.nn.Module,
             device) -> tuple[np.ndarray, np.ndarray]:
    """Crops (P, 384, 288, 3) uint8 -> (keypoints (P, 133, 2) frame pixels, scores (P, 133)), POSE_BATCH a call."""
    dtype = next(net.parameters()).dtype
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    locs, scores = [], []
    for start in range(0, len(pixels), POSE_BATCH):
        x = torch.from_numpy(pixels[start: start + POSE_BATCH]).to(device).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            sx, sy = net(((x - mean) / std).to(dtype))  # (p, 133, 576), (p, 133, 768)
        loc, score = simcc_decode(sx.float(), sy.float())
        locs.append(loc)
        scores.append(score)
    if not locs:
        return np.zeros((0, 133, 2)), np.zeros((0, 133))
    bins = np.concatenate(locs) / SPLIT_RATIO  # (P, 133, 2) input pixels
    keypoints = bins / np.array([INPUT_W, INPUT_H]) * sizes[:, None] + centres[:, None] - sizes[:, None] / 2
    return keypoints, np.concatenate(scores)


def to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 133, 2), (P, 133) COCO-WholeBody -> (P, 134, 2), (P, 134): neck inserted at 17 (mean of the shoulders,
    score 1 when both shoulder scores are above 0.3, else 0), the body reordered to OpenPose 18; then 18-23 feet,
    24-91 face, 92-112 left hand, 113-133 right hand."""
    neck = keypoints[:, [5, 6]].mean(1, keepdims=True)  # (P, 1, 2)
    neck_score = ((scores[:, 5] > KPT_SCORE) & (scores[:, 6] > KPT_SCORE)).astype(scores.dtype)[:, None]
    kp = np.concatenate([keypoints[:, :17], neck, keypoints[:, 17:]], 1)
    sc = np.concatenate([scores[:, :17], neck_score, scores[:, 17:]], 1)
    kp[:, list(OPENPOSE_IDX)], sc[:, list(OPENPOSE_IDX)] = kp[:, list(MMPOSE_IDX)], sc[:, list(MMPOSE_IDX)]
    return kp, sc


def to_people(keypoints: np.ndarray, scores: np.ndarray, width: int, height: int, hands: bool,
              face: bool) -> list[Person]:
    """OpenPose-ordered (P, 134, 2) pixels and scores -> Persons normalised by (width, height), NaN = missing."""
    scale = np.array([float(width), float(height)])

    def part(lo: int, hi: int, present: np.ndarray) -> np.ndarray:
        pts = keypoints[p, lo:hi] / scale
        pts[~present[lo:hi]] = np.nan
        return pts

    people = []
    for p in range(len(keypoints)):
        body_ok, part_ok = scores[p] > KPT_SCORE, scores[p] >= KPT_SCORE
        body = part(0, 18, body_ok)
        left, right = (part(92, 113, part_ok), part(113, 134, part_ok)) if hands else (None, None)
        landmarks = _none_if_empty(part(24, 92, part_ok)) if face else None
        if landmarks is not None:
            landmarks = np.concatenate([landmarks, body[14:16]])  # (70, 2)
        people.append(Person(body, _none_if_empty(left), _none_if_empty(right), landmarks))
    return people


def _none_if_empty(points: np.ndarray | None) -> np.ndarray | None:
    """A hand or face with no present point is absent (None), as comfyui_controlnet_aux writes it."""
    return None if points is None or np.isnan(points).all() else points


def _dirs(models_dir):
    """Both files sit in one folder: a file given as `models_dir` stands for its folder."""
    from ..nets import search_dirs

    return [p.parent if p.is_file() else p for p in search_dirs(models_dir)]


def load_nets(cache, models_dir, device) -> tuple[torch.nn.Module, torch.nn.Module, torch.device]:
    """(YOLOX, RTMPose, device) from the NetCache, both files from the same folder(s)."""
    dirs = _dirs(models_dir)
    _, det, run_on = cache.get(dirs, [YOLOX_L], image_device=device)
    _, pose, _ = cache.get(dirs, [DWPOSE_L], image_device=device)
    return det, pose, run_on


def detect(frames: np.ndarray, det_net, pose_net, device, hands: bool = True, face: bool = True,
           batch_size: int = 4, progress=None) -> list[list[Person]]:
    """(B, H, W, 3) uint8 RGB -> per frame the people, normalised by (W, H); `batch_size` frames per detector call,
    all their people in one pose pass."""
    count, height, width = frames.shape[:3]
    people: list[list[Person]] = []
    for start in range(0, count, batch_size):
        chunk = frames[start: start + batch_size]
        boxes = run_detector(chunk, det_net, device)
        keypoints, scores = run_pose(*crops(chunk, boxes), pose_net, device)
        keypoints, scores = to_openpose(keypoints, scores)
        found = to_people(keypoints, scores, width, height, hands, face)
        counts = np.cumsum([0] + [len(b) for b in boxes])
        people += [found[a:b] for a, b in itertools.pairwise(counts)]
        if progress is not None:
            progress(min(start + batch_size, count), count)
    return people

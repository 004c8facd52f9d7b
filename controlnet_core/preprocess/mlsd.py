"""M-LSD straight line segments (large or tiny network), drawn 1 px white on black as the ControlNet mlsd model
expects (controlnet_aux 0.0.10 mlsd/__init__.py and mlsd/utils.py `pred_lines`; nightly annotator/mlsd).

The network and the decode run batched on the network's device: centre heat = sigmoid, 3x3 max-pool suppression,
the 200 strongest centres, kept when the score exceeds `score_threshold` and the segment (on the half-resolution
output grid) is longer than `distance_threshold`; endpoints = centre + displacement, times 2. Only the drawing is
OpenCV's `cv2.line` (integer endpoints truncated as `int()` does), frame by frame on the CPU.
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ._image import to_bhwc
from ._network import run_network
from .nets import NetCache
from .nets._layers import pad_to_multiple
from .nets.mlsd import MLSD_LARGE, MLSD_TINY

Progress = Callable[[int, int], None] | None
MODELS = {"large": MLSD_LARGE, "tiny": MLSD_TINY}
TOP_K = 200


def mlsd(image: torch.Tensor, score_threshold: float = 0.1, distance_threshold: float = 0.1, model: str = "large",
         batch_size: int = 16, models_dir=None, model_cache: NetCache | None = None,
         progress: Progress = None) -> torch.Tensor:
    """Line segments of M-LSD `model` ("large": mlsd_large_512_fp32.pth, "tiny": mlsd_tiny_512_fp32.pth)."""
    def forward(net, x):  # (b, 3, H, W) in [0, 1]
        padded, _ = pad_to_multiple(x, 16)  # the head up-samples stride-16 features twice by 2
        ones = torch.ones_like(padded[:, :1])
        out = net(torch.cat([padded * 255.0, ones], dim=1) / 127.5 - 1.0)  # (b, 5, H'/2, W'/2)
        return decode(out, score_threshold, distance_threshold)  # (b, K, 7)

    segments = run_network(image, [MODELS[model]], forward, models_dir=models_dir, model_cache=model_cache,
                           batch_size=batch_size, progress=progress)
    return to_bhwc(draw_segments(segments, image.shape[1], image.shape[2]).to(image.device))


def decode(out: torch.Tensor, score_threshold: float, distance_threshold: float) -> torch.Tensor:
    """(b, 5, h, w) centre logits + displacements -> (b, K, 7): centre y, x, the 4 displacements, a keep flag."""
    b, _, h, w = out.shape
    heat = torch.sigmoid(out[:, 0])  # (b, h, w)
    heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, index = torch.topk(heat.reshape(b, -1), min(TOP_K, h * w), dim=1)  # (b, K)
    disp = out[:, 1:5].reshape(b, 4, -1).gather(2, index[:, None].expand(-1, 4, -1))  # (b, 4, K)
    length = torch.sqrt((disp[:, 0] - disp[:, 2]) ** 2 + (disp[:, 1] - disp[:, 3]) ** 2)
    keep = (scores > score_threshold) & (length > distance_threshold)
    centre = torch.stack([index // w, index % w], dim=-1).to(out.dtype)  # (b, K, 2), exact below 2^24
    return torch.cat([centre, disp.transpose(1, 2), keep[..., None].to(out.dtype)], dim=-1)


def draw_segments(segments: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, K, 7) decoded centres -> (B, 1, H, W) in {0, 1}: each kept segment drawn by cv2.line, width 1.

    Endpoints are 2 (centre + displacement) in float64 and truncated as the reference's `int()` does (computing
    them in float32 would move a line by a pixel whenever the sum lies within float32 rounding of an integer)."""
    data = segments.cpu().numpy()
    canvas = np.zeros((len(data), height, width), np.uint8)
    for frame, rows in zip(canvas, data):
        for y, x, dx0, dy0, dx1, dy1 in rows[rows[:, 6] > 0, :6]:
            y, x = float(y), float(x)
            ends = [2.0 * (x + float(dx0)), 2.0 * (y + float(dy0)), 2.0 * (x + float(dx1)), 2.0 * (y + float(dy1))]
            x0, y0, x1, y1 = (int(v) for v in ends)
            cv2.line(frame, (x0, y0), (x1, y1), 255, 1)
    return torch.from_numpy(canvas)[:, None].float() / 255.0

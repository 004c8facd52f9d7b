"""Line preprocessors without weights: lineart_standard, scribble_xdog, straight_lines (a Hough stand-in for M-LSD).

lineart_standard and scribble_xdog follow sd-webui-controlnet scripts/preprocessor/legacy/processor.py (the
`lineart_standard` and `scribble_xdog` functions, also in comfyui_controlnet_aux): differences of Gaussian blurs on
the 0-255 scale. straight_lines is ours: OpenCV's probabilistic Hough transform on Canny edges, drawn as 1-px white
segments on black like the M-LSD annotator draws its segments (lllyasviel/ControlNet annotator/mlsd).
"""
from __future__ import annotations

import torch

from ._image import gaussian_blur, numpy_median, to_bchw, to_bhwc, to_uint8
from .edges import canny_opencv, canny_torch


def lineart_standard(image: torch.Tensor, gaussian_sigma: float = 6.0, intensity_threshold: int = 8,
                     temporal_normalize: bool = False) -> torch.Tensor:
    """Dark-line strength min_c(blur(x) - x), divided by the median of the values above the threshold."""
    x = to_bchw(image) * 255.0  # (B, 3, H, W) on the 0-255 scale
    intensity = (gaussian_blur(x, gaussian_sigma) - x).amin(dim=1, keepdim=True).clamp_min(0)  # (B, 1, H, W)
    scale = _line_scale(intensity, intensity_threshold, temporal_normalize)  # (B or 1, 1, 1, 1)
    return to_bhwc((intensity / scale * 127.0).clamp(0, 255) / 255.0)


def _line_scale(intensity: torch.Tensor, threshold: float, temporal: bool) -> torch.Tensor:
    """max(16, median(intensity > threshold)) per frame or over the batch (the reference's normalisation)."""
    groups = [intensity] if temporal else list(intensity)
    scales = []
    for values in groups:
        median = numpy_median(values[values > threshold])
        scales.append(16.0 if bool(torch.isnan(median)) else max(16.0, float(median)))
    return torch.tensor(scales, device=intensity.device).view(-1, 1, 1, 1)


def scribble_xdog(image: torch.Tensor, threshold: int = 32) -> torch.Tensor:
    """Extended difference of Gaussians (sigma 0.5 and 5) thresholded into white scribbles on black."""
    x = to_bchw(image) * 255.0  # (B, 3, H, W)
    dog = (gaussian_blur(x, 5.0) - gaussian_blur(x, 0.5)).amin(dim=1, keepdim=True)  # (B, 1, H, W)
    dog_u8 = (255.0 - dog).clamp(0, 255).floor()  # the reference stores this as uint8 (truncation)
    return to_bhwc((2.0 * (255.0 - dog_u8) > threshold).to(torch.float32))


def straight_lines(image: torch.Tensor, low_threshold: float = 100.0, high_threshold: float = 200.0,
                   hough_threshold: int = 50, min_line_length: int = 32, max_line_gap: int = 4,
                   thickness: int = 1) -> torch.Tensor:
    """Straight segments: Canny edges -> cv2.HoughLinesP per frame -> white lines on black (CPU, OpenCV)."""
    import cv2
    import numpy as np

    rgb = to_uint8(to_bchw(image))  # (B, 3, H, W) uint8
    edges = canny_opencv(rgb, low_threshold, high_threshold) if rgb.device.type == "cpu" else \
        canny_torch(rgb, low_threshold, high_threshold)
    frames = edges.to(torch.uint8).mul_(255).cpu().numpy()  # (B, H, W)
    canvas = np.zeros_like(frames)
    for i, frame in enumerate(frames):
        segments = cv2.HoughLinesP(frame, 1, np.pi / 180, int(hough_threshold), minLineLength=float(min_line_length),
                                   maxLineGap=float(max_line_gap))
        for x0, y0, x1, y1 in ([] if segments is None else segments.reshape(-1, 4)):
            cv2.line(canvas[i], (int(x0), int(y0)), (int(x1), int(y1)), 255, int(thickness))
    out = torch.from_numpy(canvas).to(image.device)[:, None].to(torch.float32) / 255.0  # (B, 1, H, W)
    return to_bhwc(out)

"""Shared primitives of the preprocessors: input checks, layout, grey, blur and (temporal) normalisation.

Images enter as the host's IMAGE, (B, H, W, C) float in [0, 1]; inside a preprocessor they are (B, C, H, W) float32
on the input's device. Values on the 0-255 scale are used where the reference (OpenCV, the ControlNet annotators)
defines its thresholds on that scale.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..errors import PreprocessError

logger = logging.getLogger(__name__)

MIN_SIDE = 8  # smallest height/width any preprocessor accepts (a 3x3 Sobel and the 8x hint grid need room)


def check_image(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Validate a host IMAGE and return it as (B, H, W, 3) float32: grey expanded, alpha dropped, [0, 1] clamped.

    The result may be a view of the input: preprocessors never write into their input.
    """
    if not isinstance(image, torch.Tensor):
        raise PreprocessError(f"{name} is a {type(image).__name__}, not a tensor: pass an IMAGE (B, H, W, C) tensor")
    if image.ndim != 4:
        raise PreprocessError(f"{name} has shape {tuple(image.shape)}; expected (batch, height, width, channels): "
                              "add the batch dimension with image[None]")
    b, h, w, c = image.shape
    if b == 0:
        raise PreprocessError(f"{name} is an empty batch (shape {tuple(image.shape)}): connect at least one frame")
    if c not in (1, 2, 3, 4):
        raise PreprocessError(f"{name} has {c} channels (shape {tuple(image.shape)}); expected 1 (grey), 2 (grey + "
                              "alpha), 3 (RGB) or 4 (RGBA) in the last dimension")
    if min(h, w) < MIN_SIDE:
        raise PreprocessError(f"{name} is {w}x{h} pixels; preprocessors need at least {MIN_SIDE}x{MIN_SIDE}: "
                              "upscale it first")
    if not image.is_floating_point():
        raise PreprocessError(f"{name} has dtype {image.dtype}; expected float in [0, 1]: divide 8-bit data by 255")
    image = image.float()
    lo, hi = torch.aminmax(image)  # one pass: NaN propagates, Inf shows as an extreme
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        bad = int((~torch.isfinite(image)).sum())
        raise PreprocessError(f"{name} contains {bad} NaN/Inf values out of {image.numel()}: check the node that "
                              "produced it (a VAE decode in fp16 often overflows; try fp32)")
    if c in (2, 4):
        image = image[..., : c - 1]  # drop alpha: hints are opaque
    if image.shape[-1] == 1:
        image = image.expand(b, h, w, 3)
    if float(lo) < 0.0 or float(hi) > 1.0:
        logger.debug("%s values span [%g, %g]; clamped to [0, 1]", name, float(lo), float(hi))
        image = image.clamp(0.0, 1.0)
    return image


def to_bchw(image: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W), contiguous (the host's layout to the core's, once)."""
    return image.permute(0, 3, 1, 2).contiguous()


def to_bhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, 3) float32; one channel is repeated to grey RGB."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).float().contiguous()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 by rounding, which restores exactly an image that came from 8-bit data."""
    return x.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)


def rgb_to_gray_u8(rgb_u8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 1, H, W) uint8, bit-exact OpenCV COLOR_RGB2GRAY (BT.601 in 15-bit fixed point)."""
    x = rgb_u8.to(torch.int32)
    y = x[:, 0:1] * 9798 + x[:, 1:2] * 19235 + x[:, 2:3] * 3735 + (1 << 14)
    return (y >> 15).to(torch.uint8)


def gaussian_kernel_size(sigma: float, eight_bit: bool = False) -> int:
    """The kernel size OpenCV's GaussianBlur picks when ksize=(0, 0): cvRound(8*sigma + 1) | 1 for float images,
    cvRound(6*sigma + 1) | 1 for 8-bit ones."""
    return math.floor(sigma * (6.0 if eight_bit else 8.0) + 1.0 + 0.5) | 1


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with OpenCV's kernel and BORDER_REFLECT_101 (cv2.GaussianBlur)."""
    k = gaussian_kernel_size(sigma)
    r = torch.arange(k, dtype=torch.float64, device=x.device) - (k - 1) / 2
    g = torch.exp(-(r * r) / (2.0 * sigma * sigma))
    g = (g / g.sum()).to(x.dtype)
    y = _blur_last_dim(x, g)  # (B, C, H, W) along rows
    return _blur_last_dim(y.transpose(-1, -2), g).transpose(-1, -2).contiguous()  # along columns


def gaussian_blur_u8(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """cv2.GaussianBlur of an 8-bit image, bit-exact: (B, C, H, W) float holding integers 0..255 -> the same.

    OpenCV blurs uint8 images in fixed point: a kernel of cvRound(6 sigma + 1) | 1 taps quantised to 1/256 with
    error diffusion from the outer taps inwards (smooth.dispatch.cpp getGaussianKernelFixedPoint_ED), integer row
    and column sums, and one rounding at the end. Every partial sum is an integer below 2^24, so float32 is exact.
    """
    taps = fixed_gaussian_kernel(gaussian_kernel_size(sigma, eight_bit=True), sigma)
    y = _integer_taps_last_dim(x, taps)  # (B, C, H, W) row sums, units of 1/256
    y = _integer_taps_last_dim(y.transpose(-1, -2), taps).transpose(-1, -2)  # units of 1/65536
    return torch.floor((y + 32768.0) / 65536.0).contiguous()


def _integer_taps_last_dim(x: torch.Tensor, taps: list[int]) -> torch.Tensor:
    """Correlate the last dimension with integer taps by shifted multiply-adds: exact in float32 for integer data
    (a matmul could run in TF32 on a GPU, which would round the products)."""
    pad = len(taps) // 2
    p = _reflect_pad(x.contiguous(), (pad, pad, 0, 0))  # (..., W + 2 pad)
    width = x.shape[-1]
    out = torch.zeros_like(x)
    for i, tap in enumerate(taps):
        if tap:
            out += p[..., i: i + width] * float(tap)
    return out


def fixed_gaussian_kernel(size: int, sigma: float, bits: int = 8) -> list[int]:
    """OpenCV's fixed-point Gaussian taps (sum 2^bits): the normalised kernel scaled by 2^bits and rounded tap by
    tap from the outside in, each carrying the previous rounding error; the centre takes what is left."""
    half = size // 2
    weights = [math.exp((x * x) * (-0.125 / (sigma * sigma))) for x in range(1 - size, 0, 2)]  # x = 2 (i - half)
    scale = (1 << bits) / (2.0 * sum(weights) + 1.0)
    taps, err = [0] * size, 0.0
    for i, w in enumerate(weights):
        adjusted = w * scale + err
        taps[i] = taps[size - 1 - i] = round(adjusted)  # cvRound: half to even, as Python's round
        err = adjusted - taps[i]
    taps[half] = (1 << bits) - 2 * sum(taps[:half])
    return taps


def _blur_last_dim(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate the last dimension with a symmetric kernel: windows as a strided view times the kernel (no copy)."""
    pad = kernel.numel() // 2
    p = _reflect_pad(x.contiguous(), (pad, pad, 0, 0))  # (..., W + 2 pad)
    return p.unfold(-1, kernel.numel(), 1) @ kernel  # (..., W)


def _reflect_pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflect-101 padding that also works when the pad is wider than the image (reflects repeatedly)."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    if left < w and right < w and top < h and bottom < h:
        return F.pad(x, pad, mode="reflect")
    rows = _reflect_index(torch.arange(-top, h + bottom, device=x.device), h)
    cols = _reflect_index(torch.arange(-left, w + right, device=x.device), w)
    return x[..., rows[:, None], cols[None, :]]


def _reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect-101 indices into range(n) (OpenCV borderInterpolate for BORDER_REFLECT_101)."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def frame_reduce(x: torch.Tensor, temporal: bool, op: str) -> torch.Tensor:
    """min/max of (B, ...) per frame (B, 1, 1, 1) or, with `temporal`, over the whole batch (1, 1, 1, 1)."""
    flat = x.reshape(1 if temporal else x.shape[0], -1)
    value = flat.amin(dim=1) if op == "min" else flat.amax(dim=1)
    return value.view(-1, *([1] * (x.ndim - 1)))


def minmax_normalize(x: torch.Tensor, temporal: bool) -> torch.Tensor:
    """Stretch (B, C, H, W) to [0, 1] per frame, or with one min/max for the whole batch (flicker-free video)."""
    lo = frame_reduce(x, temporal, "min")
    hi = frame_reduce(x, temporal, "max")
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))  # a constant frame maps to 0, not NaN
    return ((x - lo) / span).clamp(0.0, 1.0)


def numpy_median(values: torch.Tensor) -> torch.Tensor:
    """Median with numpy's convention (mean of the two middle values for an even count); NaN when empty."""
    n = values.numel()
    if n == 0:
        return torch.tensor(float("nan"), device=values.device)
    flat = values.reshape(-1)
    lower = flat.kthvalue((n + 1) // 2).values
    upper = flat.kthvalue(n // 2 + 1).values
    return (lower + upper) / 2


def batch_slices(total: int, size: int) -> list[slice]:
    """Split range(total) into consecutive slices of at most `size` (the last may be shorter)."""
    size = max(1, int(size))
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]

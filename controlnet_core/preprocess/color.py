"""Colour preprocessors: invert, shuffle, tile, color_grid, luminance, intensity, inpaint.

References: sd-webui-controlnet scripts/preprocessor/legacy/processor.py (`tile_resample`, `color`,
`recolor_luminance`, `recolor_intensity`), annotator/shuffle (ContentShuffleDetector: a random smooth flow field
warps the image), scripts/hook.py (inpaint hint: masked pixels are -1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PreprocessError
from ._image import minmax_normalize, to_bchw, to_bhwc
from .resize import resize_bchw


def invert(image: torch.Tensor) -> torch.Tensor:
    """1 - x: black lines on white become white on black (what the line and scribble models expect)."""
    return 1.0 - image


def shuffle(image: torch.Tensor, seed: int = 0, cell_size: int = 256) -> torch.Tensor:
    """Warp the image with a smooth random flow (one field for the whole batch, so video frames stay aligned)."""
    x = to_bchw(image)  # (B, 3, H, W)
    h, w = x.shape[-2:]
    generator = torch.Generator().manual_seed(int(seed))
    flow = torch.stack([_noise_disk(h, w, cell_size, generator) for _ in range(2)], dim=-1)  # (H, W, 2) in [0, 1]
    grid = (flow * 2.0 - 1.0).to(x.device)[None].expand(x.shape[0], -1, -1, -1)  # (B, H, W, 2): x then y
    return to_bhwc(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True))


def _noise_disk(h: int, w: int, cell: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise on a (H/cell + 2, W/cell + 2) grid, bicubic-upsampled with a one-cell margin, min-max to [0, 1]."""
    coarse = torch.rand(1, 1, h // cell + 2, w // cell + 2, generator=generator, dtype=torch.float64)
    fine = F.interpolate(coarse, size=(h + 2 * cell, w + 2 * cell), mode="bicubic", align_corners=False)
    fine = fine[0, 0, cell: cell + h, cell: cell + w]
    fine = fine - fine.min()
    return (fine / fine.max().clamp_min(1e-12)).float()


def tile(image: torch.Tensor, down_sampling_rate: float = 1.0) -> torch.Tensor:
    """Blur by down-sampling with area averaging by `down_sampling_rate`, then back to the input size (bicubic)."""
    if down_sampling_rate < 1.1:  # the reference returns the image untouched below 1.1
        return image
    x = to_bchw(image)
    h, w = x.shape[-2:]
    small = resize_bchw(x, (max(1, int(h / down_sampling_rate)), max(1, int(w / down_sampling_rate))))
    return to_bhwc(resize_bchw(small, (h, w)))


def color_grid(image: torch.Tensor, cell_size: int = 64) -> torch.Tensor:
    """T2I-Adapter colour grid: bicubic down-sample to one pixel per cell, nearest up-sample back."""
    x = to_bchw(image)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, h // cell_size), max(1, w // cell_size)), mode="bicubic",
                          align_corners=False)
    return to_bhwc(F.interpolate(small.clamp(0, 1), size=(h, w), mode="nearest"))


def luminance(image: torch.Tensor, gamma: float = 1.0, normalize: bool = False,
              temporal_normalize: bool = False) -> torch.Tensor:
    """CIE L* of the sRGB image (OpenCV RGB2Lab's L / 100), optionally stretched to [0, 1], raised to `gamma`."""
    x = to_bchw(image)
    linear = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    y = (0.212671 * linear[:, 0:1] + 0.715160 * linear[:, 1:2] + 0.072169 * linear[:, 2:3])  # (B, 1, H, W)
    lightness = torch.where(y > 0.008856, 1.16 * y.clamp_min(0) ** (1.0 / 3.0) - 0.16, 9.033 * y)
    return _finish(lightness, gamma, normalize, temporal_normalize)


def intensity(image: torch.Tensor, gamma: float = 1.0, normalize: bool = False,
              temporal_normalize: bool = False) -> torch.Tensor:
    """HSV value max(R, G, B), optionally stretched to [0, 1], raised to `gamma`."""
    return _finish(to_bchw(image).amax(dim=1, keepdim=True), gamma, normalize, temporal_normalize)


def _finish(gray: torch.Tensor, gamma: float, normalize: bool, temporal: bool) -> torch.Tensor:
    """Shared tail of the recolour preprocessors: optional min-max stretch, gamma, grey RGB."""
    gray = gray.clamp(0, 1)
    if normalize:
        gray = minmax_normalize(gray, temporal)
    return to_bhwc(gray ** gamma)


def inpaint(image: torch.Tensor, mask: torch.Tensor | None = None, black_masked: bool = False) -> torch.Tensor:
    """Inpaint hint: image * (1 - m) - m, so fully masked pixels are -1 (the v1.1 inpaint ControlNet's protocol);
    `black_masked`: image * (1 - m), masked pixels 0, as xinsir's union / ProMax repaint type was trained."""
    if mask is None:
        raise PreprocessError("inpaint needs a mask (1 = repaint, 0 = keep): connect a MASK to the mask input")
    m = prepare_mask(mask, image.shape[0], image.shape[1], image.shape[2]).to(image.device)  # (B, H, W, 1)
    return image * (1.0 - m) if black_masked else image * (1.0 - m) - m


def prepare_mask(mask: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """A host MASK (H, W), (B, H, W) or (B, 1, H, W) in [0, 1] -> (B, H, W, 1), resized and batch-broadcast."""
    if not isinstance(mask, torch.Tensor):
        raise PreprocessError(f"mask is a {type(mask).__name__}, not a tensor: pass a MASK (B, H, W)")
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3:
        raise PreprocessError(f"mask has shape {tuple(mask.shape)}; expected (H, W) or (B, H, W)")
    if m.shape[0] not in (1, batch):
        raise PreprocessError(f"mask batch {m.shape[0]} does not match the image batch {batch}: pass one mask or "
                              "one per frame")
    if not bool(torch.isfinite(m).all()):
        raise PreprocessError("mask contains NaN/Inf values: check the node that produced it")
    if tuple(m.shape[1:]) != (height, width):
        m = F.interpolate(m[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return m.clamp(0, 1).expand(batch, -1, -1)[..., None]

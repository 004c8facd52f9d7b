"""Resolution handling as A1111 users know it: short-side `resolution`, the three resize modes, pixel-perfect.

Semantics (docs/preprocessors.md has the worked examples):
* `resolution` R is the short side of the image the preprocessor sees and returns. R is rounded to a multiple of 8
  and the long side is scaled by the same factor and rounded to the nearest multiple of 8, so the result always
  maps onto whole latent pixels. There is no padding in what comes back (A1111/Aux pad to 64 internally and crop
  the padding away again; our networks pad or resize internally, see models.py).
* Resize modes map an image onto a target width x height:
  "Just Resize" stretches; "Crop and Resize" scales to cover and cuts the centre (the host's own behaviour);
  "Resize and Fill" scales to fit and fills the borders with the median colour of the image's border pixels.
* Pixel-perfect picks R so that the later fit to the target is 1:1 (A1111 external_code.pixel_perfect_resolution):
  R = round(max(th/h, tw/w) * min(h, w)), with min(...) instead of max(...) for "Resize and Fill".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PreprocessError
from ._choices import RESIZE_MODES
from ._image import to_bchw, to_bhwc

MULTIPLE = 8


def round_to_multiple(value: float, multiple: int = MULTIPLE) -> int:
    """Nearest multiple of `multiple`, never below `multiple` itself."""
    return max(multiple, int(round(value / multiple)) * multiple)


def short_side_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(H, W) after scaling the short side to `resolution` (both rounded to multiples of 8)."""
    if resolution <= 0:
        raise PreprocessError(f"resolution {resolution} must be positive (0 means: keep the input size)")
    scale = resolution / min(height, width)
    return round_to_multiple(height * scale), round_to_multiple(width * scale)


def pixel_perfect_resolution(height: int, width: int, target_height: int, target_width: int,
                             resize_mode: str = "Crop and Resize") -> int:
    """The short side that makes the later fit to target_height x target_width 1:1 (A1111's pixel-perfect)."""
    _check_mode(resize_mode)
    if min(height, width, target_height, target_width) <= 0:
        raise PreprocessError(f"pixel-perfect needs positive sizes, got image {width}x{height} and target "
                              f"{target_width}x{target_height}: set target_width and target_height")
    k_h, k_w = target_height / height, target_width / width
    k = min(k_h, k_w) if resize_mode == "Resize and Fill" else max(k_h, k_w)
    return int(round(k * min(height, width)))


def resize_bchw(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (B, C, H, W): area averaging when shrinking, bicubic when enlarging (A1111's high-quality resize)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] <= x.shape[-2] and size[1] <= x.shape[-1]
    if shrinking:
        return F.interpolate(x, size=size, mode="area")
    lo = x.amin(dim=(1, 2, 3), keepdim=True)  # bicubic overshoots: keep each frame within its own range
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return torch.minimum(torch.maximum(F.interpolate(x, size=size, mode="bicubic", align_corners=False), lo), hi)


def resize_short_side(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, H, W, C) -> short side `resolution` (multiples of 8), see the module docstring."""
    size = short_side_size(image.shape[1], image.shape[2], resolution)
    return to_bhwc(resize_bchw(to_bchw(image), size))


def fit(image: torch.Tensor, width: int, height: int, resize_mode: str = "Crop and Resize") -> torch.Tensor:
    """Map (B, H, W, C) onto exactly height x width with one of RESIZE_MODES."""
    _check_mode(resize_mode)
    if width <= 0 or height <= 0:
        raise PreprocessError(f"target size {width}x{height} must be positive")
    x = to_bchw(image)
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return image
    if resize_mode == "Just Resize":
        return to_bhwc(resize_bchw(x, (height, width)))
    if resize_mode == "Crop and Resize":
        k = max(height / h, width / w)
        x = resize_bchw(x, (max(height, round(h * k)), max(width, round(w * k))))
        top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
        return to_bhwc(x[..., top: top + height, left: left + width])
    return to_bhwc(_resize_and_fill(x, height, width))


def _resize_and_fill(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale to fit inside height x width, centre, fill with the per-frame median colour of the image border."""
    h, w = x.shape[-2:]
    k = min(height / h, width / w)
    inner = resize_bchw(x, (min(height, max(1, round(h * k))), min(width, max(1, round(w * k)))))
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # (B, C, 2W+2H)
    fill = border.median(dim=-1).values  # (B, C)
    out = fill[:, :, None, None].expand(-1, -1, height, width).clone()
    top, left = (height - inner.shape[-2]) // 2, (width - inner.shape[-1]) // 2
    out[..., top: top + inner.shape[-2], left: left + inner.shape[-1]] = inner
    return out


def resize(image: torch.Tensor, width: int = 512, height: int = 512, mode: str = "Crop and Resize") -> torch.Tensor:
    """The `resize` preprocessor: fit an image (or a finished hint) to width x height with a resize mode."""
    return fit(image, width, height, mode)


def _check_mode(resize_mode: str) -> None:
    if resize_mode not in RESIZE_MODES:
        raise PreprocessError(f"resize_mode {resize_mode!r} is not one of {RESIZE_MODES}")

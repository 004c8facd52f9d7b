"""Depth (DPT / MiDaS, Depth Anything, ZoeDepth, Depth Pro via transformers) and surface normals from a depth map.

Depth follows lllyasviel/ControlNet annotator/midas/__init__.py: the network's relative inverse depth, min-max
normalised so that near is white. Normals follow the same file's depth-to-normal step (Sobel gradients of the
depth, a constant z, background below a threshold made flat), on our normalised depth, in the BAE convention of
the ControlNet 1.1 normalbae model (red = left, green = up, blue = towards the viewer) or OpenGL (red = right).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import PreprocessError
from ._choices import NORMAL_CONVENTIONS
from ._image import batch_slices, minmax_normalize, to_bchw, to_bhwc
from .models import ModelCache, prepare_pixels, run_model


def depth(image: torch.Tensor, models_dir: str | None = None, model_cache: ModelCache | None = None,
          temporal_normalize: bool = False, batch_size: int = 8, align_frames: bool = False,
          progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Relative depth, near = white, from a local depth model (a transformers folder: DPT, MiDaS, Depth Anything,
    ZoeDepth, Depth Pro; or an original Depth Anything V2 file). Video: `align_frames` fits each frame to the
    previous ones by scale and shift, `temporal_normalize` uses one range for the clip."""
    raw = estimate_depth(image, models_dir, model_cache, batch_size, progress)  # (B, 1, H, W)
    if align_frames:
        raw = align_to_previous(raw)
    return to_bhwc(minmax_normalize(raw, temporal_normalize))


def align_to_previous(raw: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) relative depth -> each frame t mapped by the least-squares scale s and shift b that bring it
    closest to the aligned frame t-1 (min over s, b of sum (s d_t + b - a_{t-1})^2; shared/research/
    preprocessors_next.md §4). Relative depth models are right only up to such an affine map per frame, which is
    what makes a clip's depth pump; a frame that fits with s <= 0 (a cut) starts a new reference as it is."""
    out = [raw[0]]
    for frame in raw[1:]:
        ref = out[-1]
        d, r = frame.flatten() - frame.mean(), ref.flatten() - ref.mean()
        var = (d * d).sum()
        scale = (d * r).sum() / var if float(var) > 0 else torch.ones((), device=raw.device)
        if float(scale) <= 0:
            out.append(frame)
            continue
        out.append(scale * (frame - frame.mean()) + ref.mean())
    return torch.stack(out)


def estimate_depth(image: torch.Tensor, models_dir: str | None, model_cache: ModelCache | None, batch_size: int,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """(B, H, W, 3) -> (B, 1, H, W) float32 raw relative inverse depth at the image's size, in frame chunks."""
    cache = model_cache if model_cache is not None else ModelCache()
    model = cache.load(models_dir, "depth")
    device = cache.ready(image.device)
    dtype = next(model.parameters()).dtype  # whatever the holder (or the host) cast it to
    x = to_bchw(image)  # (B, 3, H, W)
    out = []
    for part in batch_slices(x.shape[0], batch_size):
        pixels = prepare_pixels(x[part].to(device), cache.input_spec).to(dtype)  # (b, 3, h', w')
        predicted = run_model(model, pixels, cache.folder).predicted_depth  # (b, h'', w'')
        if is_metric(model):  # metres, far = large: near = white is the negated depth (nightly annotator/zoe)
            predicted = -predicted
        predicted = F.interpolate(predicted[:, None].float(), size=x.shape[-2:], mode="bicubic", align_corners=False)
        out.append(predicted.to(image.device))  # (b, 1, H, W)
        if progress is not None:
            progress(part.stop, x.shape[0])
    return torch.cat(out)


def is_metric(model: torch.nn.Module) -> bool:
    """True for models that predict metric depth (ZoeDepth, Depth Pro, Depth Anything metric) rather than relative
    inverse depth (MiDaS/DPT, Depth Anything relative)."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", "") in ("zoedepth", "depth_pro")
            or getattr(config, "depth_estimation_type", "relative") == "metric")


def normal_from_depth(image: torch.Tensor, strength: float = 1.0, bg_threshold: float = 0.4,
                      convention: str = "bae", temporal_normalize: bool = False) -> torch.Tensor:
    """Normals of the height field given by a depth map (near = white), flat where depth < bg_threshold."""
    if convention not in NORMAL_CONVENTIONS:
        raise PreprocessError(f"normal convention {convention!r} is not one of {NORMAL_CONVENTIONS}")
    d = minmax_normalize(to_bchw(image).mean(dim=1, keepdim=True), temporal_normalize)  # (B, 1, H, W) in [0, 1]
    gx, gy = _gradient(d)  # (B, 1, H, W): d(depth)/d(column), d(depth)/d(row)
    # `strength` 1: a depth ramp from 0 to 1 across the short side tilts the surface by 45 degrees
    scale = strength * min(d.shape[-2:])
    background = d < bg_threshold
    gx = torch.where(background, torch.zeros_like(gx), gx * scale)
    gy = torch.where(background, torch.zeros_like(gy), gy * scale)
    red = gx if convention == "bae" else -gx  # BAE: red = left-facing; OpenGL: red = right-facing
    normal = torch.cat([red, gy, torch.ones_like(gx)], dim=1)  # (B, 3, H, W): (x, y up, z to viewer)
    normal = normal / normal.norm(dim=1, keepdim=True)
    return to_bhwc(normal * 0.5 + 0.5)


def _gradient(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3 Sobel / 8 (a smoothed central difference) with replicated borders: per-pixel derivatives."""
    p = F.pad(d, (1, 1, 1, 1), mode="replicate")  # (B, 1, H+2, W+2)
    smooth_v = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]  # (B, 1, H, W+2)
    smooth_h = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]  # (B, 1, H+2, W)
    return (smooth_v[..., 2:] - smooth_v[..., :-2]) / 8.0, (smooth_h[..., 2:, :] - smooth_h[..., :-2, :]) / 8.0

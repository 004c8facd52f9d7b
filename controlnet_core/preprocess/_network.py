"""Running a learned preprocessor's network: weights from the NetCache, frames in chunks on the network's device.

Shared by the network preprocessors (softedge.py, lineart.py, mlsd.py, normals.py): `run_network` loads (or reuses)
the module through the holder's `NetCache` (the host's model management decides the device), feeds the batch in
chunks of `batch_size` frames (fewer on a CPU: `chunk_frames`) under inference mode, reports `progress(done, total)`
per chunk, and returns the outputs on the image's device. Also the 8-bit quantisation and the post-processing the
ControlNet annotators share.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ._image import batch_slices, gaussian_blur, gaussian_blur_u8, to_bchw
from .nets import Architecture, ModelsDir, NetCache

Forward = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]

# On a CPU a chunk holds at most this many pixels: measured on the 2-core AVX2 CPU at 512^2, one frame per call
# against eight (s/frame): HED 1.43 vs 1.62, PiDiNet 1.43 vs 1.88, lineart 1.86 vs 1.94, NormalBAE 4.25 vs 4.66;
# M-LSD against sixteen 0.54 vs 0.84. Large batches stream every activation through memory (and fault in fresh
# pages) instead of reusing the caches; on a GPU the whole `batch_size` goes in one call.
CPU_CHUNK_PIXELS = 512 * 512


def chunk_frames(batch_size: int, device: torch.device, height: int, width: int) -> int:
    """Frames per network call: `batch_size` on an accelerator; on a CPU as many as fit CPU_CHUNK_PIXELS (>= 1)."""
    if torch.device(device).type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_CHUNK_PIXELS // (height * width)))


def run_network(image: torch.Tensor, candidates: Sequence[Architecture], forward: Forward, *,
                models_dir: ModelsDir = None, model_cache: NetCache | None = None, batch_size: int = 8,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """(B, H, W, 3) in [0, 1] -> torch.cat of `forward(net, x)` over chunks of x (b, 3, H, W) in [0, 1] (on the
    network's device, in its dtype), returned as float32 on the image's device."""
    cache = model_cache if model_cache is not None else NetCache()
    _, net, device = cache.get(models_dir, candidates, image_device=image.device)
    dtype = next(net.parameters()).dtype
    x = to_bchw(image)  # (B, 3, H, W)
    out = []
    with torch.inference_mode():
        for part in batch_slices(x.shape[0], chunk_frames(batch_size, device, *x.shape[-2:])):
            out.append(forward(net, x[part].to(device=device, dtype=dtype)).float().to(image.device))
            if progress is not None:
                progress(part.stop, x.shape[0])
    return torch.cat(out)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> 0..255 on the 8-bit grid by truncation, as the annotators' `(x * 255).clip(0, 255).astype(uint8)`."""
    return torch.floor((x * 255.0).clamp_(0.0, 255.0))


def safe_step(x: torch.Tensor, step: int = 2) -> torch.Tensor:
    """`floor(x * (step + 1)) / step` (ControlNet-v1-1-nightly annotator/util.py L78-81): few grey levels."""
    return torch.floor(x * float(step + 1)) / float(step)


def fake_scribble(u8: torch.Tensor) -> torch.Tensor:
    """Soft edges on the 0-255 scale (B, 1, H, W) -> scribble strokes 0/255 (nightly gradio_scribble.py L54-57,
    controlnet_aux util.nms): Gaussian sigma 3 (float), keep > 127 where a directional 3-tap maximum, the 8-bit
    Gaussian sigma 3 (OpenCV's fixed point, bit-exact), > 4."""
    x = gaussian_blur(u8, 3.0)
    strokes = torch.where(_directional_peak(x) & (x > 127), 255.0, 0.0)
    return torch.where(gaussian_blur_u8(strokes, 3.0) > 4, 255.0, 0.0)


def _directional_peak(x: torch.Tensor) -> torch.Tensor:
    """Where x equals the maximum of its 3-pixel line in at least one of 4 directions (cv2.dilate with the
    horizontal, vertical and two diagonal kernels; outside the image counts as -inf)."""
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))  # (B, 1, H + 2, W + 2)
    h, w = x.shape[-2:]

    def at(dy: int, dx: int) -> torch.Tensor:
        return p[..., 1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w]

    peak = torch.zeros_like(x, dtype=torch.bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        peak |= (x >= at(dy, dx)) & (x >= at(-dy, -dx))
    return peak


def resize_to(x: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size) with half-pixel centres (OpenCV's INTER_LINEAR / INTER_CUBIC); no-op when equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)

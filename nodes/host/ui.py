"""What the editor shows while and after a node runs: previews, the progress bar, status text, latent sizes.

Part of the adapter layer (nodes/host/). Host calls used (v0.3.64): `comfy_api.latest.ui.PreviewImage` (temp PNGs
the frontend draws in the node), `comfy.utils.ProgressBar.update_absolute(value, total, ("JPEG", pil, px))` (bar +
live preview; every update is also where the user's cancel lands) and `PromptServer.send_progress_text`.
`ComfyAPI().execution.set_progress` would be the V3 spelling but raises AttributeError on v0.3.64.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import comfy.utils
import numpy as np
import torch
from comfy_api.latest import ui
from PIL import Image

log = logging.getLogger(__name__)
PREVIEW_FRAMES = 8  # at most this many frames of a batch are written as preview PNGs (a video has hundreds)
LIVE_PREVIEW_PX = 512  # long side of the JPEG sent with each progress step
LATENT_SCALE = 8  # pixels per latent pixel for the SD / SDXL VAEs this pack's ControlNets pair with


def preview_indices(frames: int, limit: int = PREVIEW_FRAMES) -> list[int]:
    """Evenly spaced frame indices, first and last included, at most `limit` of them."""
    if frames <= limit:
        return list(range(frames))
    return sorted({round(i * (frames - 1) / (limit - 1)) for i in range(limit)})


def preview(images: torch.Tensor, cls=None) -> ui.PreviewImage:
    """`ui.PreviewImage` of at most PREVIEW_FRAMES frames of (B, H, W, C) `images` (evenly spaced)."""
    picked = images[preview_indices(images.shape[0])].float().cpu()
    return ui.PreviewImage(picked, cls=cls)


def frame_jpeg(frame: torch.Tensor) -> tuple[str, Image.Image, int]:
    """(H, W, C) in [0, 1] -> the host's preview tuple ("JPEG", PIL image, max side)."""
    pixels = (frame[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return "JPEG", Image.fromarray(np.ascontiguousarray(pixels)), LIVE_PREVIEW_PX


class Progress:
    """The host's progress bar for the running node, with an optional live preview and a status line."""

    def __init__(self, total: int, node_id: str | None = None, label: str | None = None):
        self.bar = comfy.utils.ProgressBar(total)
        self.node_id = node_id
        self.label = label  # e.g. "depth on cpu": shown as "<label>, frame 12/64" when set
        self.status(0, total)

    def status(self, done: int, total: int) -> None:
        if self.label is None or self.node_id is None:
            return
        from server import PromptServer

        PromptServer.instance.send_progress_text(f"{self.label}, frame {done}/{total}", self.node_id)

    def update(self, done: int, total: int, frame: torch.Tensor | None = None) -> None:
        """Report `done` of `total` frames; `frame` (H, W, C) is sent as the live preview."""
        self.bar.update_absolute(done, total, frame_jpeg(frame) if frame is not None else None)
        self.status(done, total)

    def callback(self) -> Callable[[int, int], None]:
        """The core's `progress(done, total)` signature (no preview)."""
        return lambda done, total: self.update(done, total)


def latent_pixel_size(latent: dict) -> tuple[int, int]:
    """(width, height) in pixels of a host LATENT {"samples": (B, C, h, w) or (B, C, T, h, w)}."""
    samples = latent["samples"]
    return samples.shape[-1] * LATENT_SCALE, samples.shape[-2] * LATENT_SCALE

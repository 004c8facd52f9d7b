"""Semantic segmentation from a local transformers model (UperNet, SegFormer, ...), coloured with the ADE20K palette.

The ControlNet seg models read classes from colours: they were trained on the 150-class ADE20K colour coding of
lllyasviel/ControlNet annotator/uniformer (mmseg's ADE20KDataset.PALETTE). A model with 150 labels is assumed to
use ADE20K's class order (all ADE20K checkpoints do); other label sets get a deterministic palette of their own and
a warning, since no ControlNet was trained on it.
"""
from __future__ import annotations

import colorsys
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._image import batch_slices, to_bchw
from .models import ModelCache, prepare_pixels, run_model

logger = logging.getLogger(__name__)

# ADE20K colour of each class index 0..149 (wall, building, sky, ...), RGB, 6 hex digits per class.
_ADE20K_HEX = (
    "787878b4787806e6e650323204c8037878508c8c8ccc05ffe6e6e604fa07e005ffebff0796053d78784608ff33ff0652"
    "8fff8cccff04ff3307cc46030066c83de6faff06330b66ffff0747ff09e00907e6dcdcdcff095c7009ff08ffd607ffe0"
    "ffb8060aff47ff290a07ffffe0ff086608ffff3d06ffc207ff7a0800ff14ff0829ff05990633ffeb0cffa0961400a3ff"
    "8c8c8cfa0a0f14ff001fff00ff1f00ffe00099ff000000ffff470000ebff00adff1f00ff0bc8c8ff520000fff5003dff"
    "00ff7000ff85ff0000ffa300ff6600c2ff00008fff33ff000052ff00ff2900ffad0a00ffadff0000ff99ff5c00ff00ff"
    "ff00f5ff0066ffad00ff0014ffb8b8001fff00ff3d0047ffff00cc00ffc200ff52000aff0070ff3300ff00c2ff007aff"
    "00ffa3ff990000ff0aff70008fff005200ffa3ff00ffeb0008b8aa8500ff00ff5cb800ffff001f00b8ff00d6ffff0070"
    "5cff0000e0ff70e0ff46b8a0a300ff9900ff47ff00ff00a3ffcc00ff008f00ffeb85ff00ff00ebf500ffff007afff500"
    "0abed4d6ff0000ccff1400ffffff000099ff0029ff00ffcc2900ff29ff00ad00ff00f5ff4700ff7a00ff00ffb8005cff"
    "b8ff000085ffffd60019c2c266ff005c00ff"
)


def ade20k_palette() -> torch.Tensor:
    """(150, 3) uint8 ADE20K colours in class order."""
    values = bytes.fromhex("".join(_ADE20K_HEX))
    return torch.tensor(list(values), dtype=torch.uint8).view(150, 3)


def palette(num_labels: int) -> torch.Tensor:
    """(num_labels, 3) uint8: ADE20K for 150 labels, else evenly spread hues (golden-ratio steps)."""
    if num_labels == 150:
        return ade20k_palette()
    logger.warning("segmentation model has %d labels, not ADE20K's 150: the ControlNet seg models will not "
                   "understand its colours", num_labels)
    colours = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.95) for i in range(num_labels)]
    return (torch.tensor(colours) * 255).round().to(torch.uint8)


def segmentation(image: torch.Tensor, models_dir: str | None = None, model_cache: ModelCache | None = None,
                 batch_size: int = 4, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Per-pixel class (logits up-sampled to the image, arg-max) painted with its palette colour."""
    cache = model_cache if model_cache is not None else ModelCache()
    model = cache.load(models_dir, "segmentation")
    device = cache.ready(image.device)
    dtype = next(model.parameters()).dtype  # whatever the holder (or the host) cast it to
    colours = palette(int(model.config.num_labels)).to(image.device).float() / 255.0  # (L, 3)
    x = to_bchw(image)  # (B, 3, H, W)
    out = []
    for part in batch_slices(x.shape[0], batch_size):
        pixels = prepare_pixels(x[part].to(device), cache.input_spec).to(dtype)  # (b, 3, h', w')
        logits = run_model(model, pixels, cache.folder).logits  # (b, L, h'', w'')
        labels = torch.cat([_labels(frame[None], x.shape[-2:]) for frame in logits])  # (b, H, W)
        out.append(colours[labels.to(image.device)])  # (b, H, W, 3)
        if progress is not None:
            progress(part.stop, x.shape[0])
    return torch.cat(out)


def _labels(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, L, h, w) logits -> (1, H, W) class ids; one frame at a time keeps (L, H, W) memory bounded."""
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False).argmax(dim=1)

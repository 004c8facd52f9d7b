"""HED soft edges: lllyasviel's Apache-2.0 re-implementation (`ControlNetHED_Apache2`, ControlNet-v1-1-nightly
annotator/hed/__init__.py L17-53): a learnable mean subtracted from the 0-255 RGB image, five VGG blocks, a 1x1
projection per block. Module names follow `ControlNetHED.pth` (37 tensors, stored in fp16)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Architecture
from ._layers import channels_last, conv2d_relu


class DoubleConvBlock(nn.Module):
    """`layers` 3x3 convs with ReLU (after an optional 2x2 max-pool) and a 1x1 side projection."""

    def __init__(self, cin: int, cout: int, layers: int):
        super().__init__()
        self.convs = nn.Sequential(*(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1) for i in range(layers)))
        self.projection = nn.Conv2d(cout, 1, 1)

    def forward(self, x: torch.Tensor, down: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if down:
            x = F.max_pool2d(x, 2, 2)  # (B, C, H/2, W/2), floor like the reference
        for conv in self.convs:
            x = conv2d_relu(x, conv)  # (B, C, h, w)
        return x, self.projection(x)


class ControlNetHED(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        widths = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))
        for i, (cin, cout, layers) in enumerate(widths, start=1):
            setattr(self, f"block{i}", DoubleConvBlock(cin, cout, layers))

    def forward(self, rgb255: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) RGB on the 0-255 scale -> five (B, 1, H/2^k, W/2^k) side maps (logits)."""
        h = rgb255 - self.norm
        sides = []
        for i in range(1, 6):
            h, side = getattr(self, f"block{i}")(h, down=i > 1)
            sides.append(side)
        return sides


HED = Architecture("hed", ControlNetHED, ("ControlNetHED.pth",), "Hugging Face lllyasviel/Annotators",
                   "Apache-2.0", finish=channels_last)
ARCHITECTURES = (HED,)

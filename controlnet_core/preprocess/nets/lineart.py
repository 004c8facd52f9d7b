"""Lineart generators of "Learning to generate line drawings that convey geometry and semantics" (Chan et al.,
CVPR 2022; carolineec/informative-drawings, ControlNet-v1-1-nightly annotator/lineart/__init__.py L36-105): a
ResNet generator with 3 residual blocks and instance norms. `sk_model.pth` (realistic) and `sk_model2.pth`
(coarse) share the 24-tensor layout; only the file name tells them apart."""
from __future__ import annotations

import torch
from torch import nn

from . import Architecture
from ._layers import channels_last, fuse_instance_norms


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels)  # affine=False: no parameters in the file


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Generator(nn.Module):
    def __init__(self, blocks: int = 3):
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), _norm(64), nn.ReLU(inplace=True))
        self.model1 = nn.Sequential(nn.Conv2d(64, 128, 3, stride=2, padding=1), _norm(128), nn.ReLU(inplace=True),
                                    nn.Conv2d(128, 256, 3, stride=2, padding=1), _norm(256), nn.ReLU(inplace=True))
        self.model2 = nn.Sequential(*(ResidualBlock(256) for _ in range(blocks)))
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), _norm(128), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), _norm(64), nn.ReLU(inplace=True))
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1], H and W multiples of 4 -> (B, 1, H, W): white paper, black lines."""
        return self.model4(self.model3(self.model2(self.model1(self.model0(rgb)))))


def fast_generator(net: Generator) -> Generator:
    """The load-time `finish`: instance norms (and their ReLUs) in place, weights channels-last. Measured on the
    2-core CPU, 4 frames at 512^2: 10.3 s -> 7.8 s; oneDNN's channels-last transposed convolutions are 1.7-2.2x faster
    than contiguous ones and 1.9-2.9x faster than the same sums as a sub-pixel convolution."""
    return channels_last(fuse_instance_norms(net))


_WHERE = "Hugging Face lllyasviel/Annotators"
LINEART = Architecture("lineart_realistic", Generator, ("sk_model.pth",), _WHERE, "MIT", finish=fast_generator)
LINEART_COARSE = Architecture("lineart_coarse", Generator, ("sk_model2.pth",), _WHERE, "MIT", finish=fast_generator)
ARCHITECTURES = (LINEART, LINEART_COARSE)

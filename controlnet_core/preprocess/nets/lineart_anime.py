"""Anime lineart: the pix2pix U-Net generator (Isola et al. 2017) with 8 down-samplings and affine-free instance
norms that ControlNet 1.1 uses for `lineart_anime` (ControlNet-v1-1-nightly annotator/lineart_anime/__init__.py
L16-129). Module names follow `netG.pth` (stored with a `module.` prefix; 32 tensors, 54.4 M parameters)."""
from __future__ import annotations

import torch
from torch import nn

from . import Architecture


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels)  # affine=False, no running stats


class UnetSkipBlock(nn.Module):
    """One level: down (LeakyReLU, 4x4 stride-2 conv, norm) -> inner level -> up (ReLU, transposed conv, norm),
    concatenated with its input; the outermost level maps the image and ends in tanh.

    The reference's in-place LeakyReLU rewrites the block input before the concatenation reads it, so the skip
    carries LeakyReLU(x), not x; the published weights were trained that way, and so it is computed here."""

    def __init__(self, outer: int, inner: int, cin: int | None = None, sub: nn.Module | None = None,
                 outermost: bool = False):
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(cin or outer, inner, 4, stride=2, padding=1)
        if outermost:
            layers = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1),
                      nn.Tanh()]
        elif sub is None:  # innermost
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1), _norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, _norm(inner), sub, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1), _norm(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        skip = self.model[0](x)  # LeakyReLU(x)
        return torch.cat([skip, self.model[1:](skip)], 1)  # (B, 2 outer, H, W)


class UnetGenerator(nn.Module):
    def __init__(self, downs: int = 8, ngf: int = 64):
        super().__init__()
        block = UnetSkipBlock(ngf * 8, ngf * 8)
        for _ in range(downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, sub=block)
        for mult in (4, 2, 1):
            block = UnetSkipBlock(ngf * mult, ngf * mult * 2, sub=block)
        self.model = UnetSkipBlock(1, ngf, cin=3, sub=block, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of 256 -> (B, 1, H, W) in [-1, 1] (white paper)."""
        return self.model(x)


LINEART_ANIME = Architecture("lineart_anime", UnetGenerator, ("netG.pth",), "Hugging Face lllyasviel/Annotators",
                             "MIT")
ARCHITECTURES = (LINEART_ANIME,)

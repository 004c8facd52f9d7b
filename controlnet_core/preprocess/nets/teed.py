"""TEED soft edges (Soria et al., "Tiny and Efficient Edge Detector", ICCV 2023 workshops; xavysp/TEED, as
controlnet_aux teed/ted.py builds it): 58 k parameters, Smish activations, three upsampled side outputs and a
DoubleFusion map. Module names follow `7_model.pth` (MistoLine's `MTEED.pth` has the same layout)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Architecture
from ._layers import channels_last


def smish(x: torch.Tensor) -> torch.Tensor:
    """x * tanh(log(1 + sigmoid(x))) (Wang et al. 2022)."""
    return x * torch.tanh(torch.log1p(torch.sigmoid(x)))


class Smish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smish(x)


class DoubleConvBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int | None = None, stride: int = 1, act: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(mid, cout or mid, 3, padding=1)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(smish(self.conv1(x)))
        return smish(x) if self.act else x


class SingleConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DenseLayer(nn.Module):
    """conv(pad 2) -> smish -> conv(no pad) on smish(x1); averaged with x2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=2)
        self.conv2 = nn.Conv2d(cout, cout, 3)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.conv2(smish(self.conv1(smish(x1)))) + x2)


class DenseBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.denselayer1 = DenseLayer(cin, cout)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.denselayer1(x1, x2)


class UpConvBlock(nn.Module):
    """`steps` times (1x1 conv -> Smish -> stride-2 transposed conv): 2^steps upsampling to one channel."""

    def __init__(self, cin: int, steps: int):
        super().__init__()
        layers = []
        kernel, pad = 2 ** steps, (0, 0, 1)[steps]
        for i in range(steps):
            cout = 1 if i == steps - 1 else 16
            layers += [nn.Conv2d(cin, cout, 1), Smish(), nn.ConvTranspose2d(cout, cout, kernel, stride=2, padding=pad)]
            cin = cout
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class DoubleFusion(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.DWconv1 = nn.Conv2d(cin, cin * 8, 3, padding=1, groups=cin)
        self.DWconv2 = nn.Conv2d(24, 24, 3, padding=1, groups=24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.DWconv1(smish(x))  # (B, 24, H, W)
        attn2 = self.DWconv2(smish(attn))  # (B, 24, H, W)
        return smish((attn2 + attn).sum(1, keepdim=True))  # (B, 1, H, W)


class TED(nn.Module):
    def __init__(self):
        super().__init__()
        self.block_1 = DoubleConvBlock(3, 16, 16, stride=2)
        self.block_2 = DoubleConvBlock(16, 32, act=False)
        self.dblock_3 = DenseBlock(32, 48)
        self.side_1 = SingleConvBlock(16, 32, 2)
        self.pre_dense_3 = SingleConvBlock(32, 48, 1)
        self.up_block_1 = UpConvBlock(16, 1)
        self.up_block_2 = UpConvBlock(32, 1)
        self.up_block_3 = UpConvBlock(48, 2)
        self.block_cat = DoubleFusion(3)

    def forward(self, rgb255: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) RGB on the 0-255 scale, H and W multiples of 4 -> four (B, 1, H, W) maps (logits)."""
        b1 = self.block_1(rgb255)  # (B, 16, H/2, W/2)
        b2 = self.block_2(b1)  # (B, 32, H/2, W/2)
        b2_down = F.max_pool2d(b2, 3, 2, 1)  # (B, 32, H/4, W/4)
        b3 = self.dblock_3(b2_down + self.side_1(b1), self.pre_dense_3(b2_down))  # (B, 48, H/4, W/4)
        outs = [self.up_block_1(b1), self.up_block_2(b2), self.up_block_3(b3)]  # 3 x (B, 1, H, W)
        return [*outs, self.block_cat(torch.cat(outs, dim=1))]


TEED = Architecture("teed", TED, ("7_model.pth", "MTEED.pth"),
                    "Hugging Face bdsqlsz/qinglong_controlnet-lllite (Annotators/7_model.pth) or TheMistoAI/MistoLine "
                    "(Anyline/MTEED.pth)", "MIT", finish=channels_last)
ARCHITECTURES = (TEED,)

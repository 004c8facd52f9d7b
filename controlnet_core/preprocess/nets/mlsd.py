"""M-LSD line segment detectors (Gu et al., "Towards Light-weight and Real-time Line Segment Detection", AAAI 2022;
navervision/mlsd, ControlNet-v1-1-nightly annotator/mlsd/models): a truncated MobileNetV2 on RGB + a constant
channel, and a U-shaped head whose output holds a centre map and 4 displacement maps at half resolution. Module
names follow `mlsd_large_512_fp32.pth` and `mlsd_tiny_512_fp32.pth`; `fuse()` folds every BatchNorm at load."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Architecture
from ._layers import channels_last, fuse_sequential

# MobileNetV2 stages (expansion t, channels c, repeats n, stride s); large keeps the 96-channel stage, tiny stops before
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))


class ConvBNReLU(nn.Sequential):
    """Conv -> BN -> ReLU6; stride 2 pads one pixel on the right/bottom first (TFLite padding)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, 0 if stride == 2 else (kernel - 1) // 2, groups=groups,
                                   bias=False), nn.BatchNorm2d(cout), nn.ReLU6())
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)) if self.stride == 2 else x)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        layers = [ConvBNReLU(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                   nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, stages: int, taps: tuple[int, ...]):
        super().__init__()
        layers, cin = [ConvBNReLU(4, 32, stride=2)], 32
        for t, c, n, s in _STAGES[:stages]:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers)
        self.taps = taps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out  # strides 2, 4, 8, 16, 16 (large) or 4, 8, 16 (tiny)


def _cbr(cin: int, cout: int, kernel: int = 1, dilation: int = 1, relu: nn.Module | None = None) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation), nn.BatchNorm2d(cout),
                         relu or nn.ReLU())


class BlockTypeA(nn.Module):
    """Fuse a skip feature (a) with the coarser path (b): 1x1 each, b upsampled x2 (align_corners), concatenated."""

    def __init__(self, in_a: int, in_b: int, out_a: int, out_b: int, upscale: bool = True):
        super().__init__()
        self.conv1 = _cbr(in_b, out_b)
        self.conv2 = _cbr(in_a, out_a)
        self.upscale = upscale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        b = self.conv1(b)
        if self.upscale:
            b = F.interpolate(b, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(a), b), dim=1)


class BlockTypeB(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = _cbr(cin, cin, 3)
        self.conv2 = _cbr(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class BlockTypeC(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = _cbr(cin, cin, 3, dilation=5)
        self.conv2 = _cbr(cin, cin, 3)
        self.conv3 = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class _MLSD(nn.Module):
    def fuse(self) -> _MLSD:
        for module in list(self.modules()):
            if isinstance(module, nn.Sequential):
                fuse_sequential(module)
        return self


class MLSDLarge(_MLSD):
    def __init__(self):
        super().__init__()
        self.backbone = MobileNetV2(5, (1, 3, 6, 10, 13))
        self.block15 = BlockTypeA(64, 96, 64, 64, upscale=False)
        self.block16 = BlockTypeB(128, 64)
        self.block17 = BlockTypeA(32, 64, 64, 64)
        self.block18 = BlockTypeB(128, 64)
        self.block19 = BlockTypeA(24, 64, 64, 64)
        self.block20 = BlockTypeB(128, 64)
        self.block21 = BlockTypeA(16, 64, 64, 64)
        self.block22 = BlockTypeB(128, 64)
        self.block23 = BlockTypeC(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) in [-1, 1], H and W multiples of 16 -> (B, 5, H/2, W/2): centre logits, displacements."""
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        return self.block23(x)[:, 7:12]


class MLSDTiny(_MLSD):
    def __init__(self):
        super().__init__()
        self.backbone = MobileNetV2(4, (3, 6, 10))
        self.block12 = BlockTypeA(32, 64, 64, 64)
        self.block13 = BlockTypeB(128, 64)
        self.block14 = BlockTypeA(24, 64, 32, 32)
        self.block15 = BlockTypeB(64, 64)
        self.block16 = BlockTypeC(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) in [-1, 1], H and W multiples of 16 -> (B, 5, H/2, W/2): centre logits, displacements."""
        c2, c3, c4 = self.backbone(x)
        x = self.block13(self.block12(c3, c4))
        x = self.block16(self.block15(self.block14(c2, x)))
        return F.interpolate(x[:, 7:12], scale_factor=2.0, mode="bilinear", align_corners=True)


_LICENCE = "Apache-2.0"
MLSD_LARGE = Architecture("mlsd_large", MLSDLarge, ("mlsd_large_512_fp32.pth",),
                          "Hugging Face lllyasviel/Annotators", _LICENCE, finish=lambda net: channels_last(net.fuse()))
MLSD_TINY = Architecture("mlsd_tiny", MLSDTiny, ("mlsd_tiny_512_fp32.pth",), "GitHub navervision/mlsd (models/)",
                         _LICENCE, finish=lambda net: channels_last(net.fuse()))
ARCHITECTURES = (MLSD_LARGE, MLSD_TINY)

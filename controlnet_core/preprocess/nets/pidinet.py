"""PiDiNet soft edges (Su et al., ICCV 2021; hellozhuo/pidinet, as ControlNet-v1-1-nightly annotator/pidinet runs
it): config `carv4`, 60 channels, CDCM dilation 24 and CSAM attention. Module names follow `table5_pidinet.pth`.

Its pixel-difference convolutions (PDC) are linear in the stored 3x3 kernels, so each is a plain convolution with
a derived kernel (hellozhuo/pidinet models/convert_pidinet.py): `cd` (central difference) subtracts the kernel's sum
from its centre, `ad` (angular) subtracts the clockwise-rotated kernel, `rd` (radial) spreads the 8 outer weights
onto a 5x5 ring (+w outer, -w inner). `fold()` swaps the stored kernels for the derived ones once, at load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Architecture
from ._layers import channels_last

CARV4 = ("cd", "ad", "rd", "cv") * 4  # PDC type of layer 0 (init_block) .. 15 (block4_4)
_CLOCKWISE = [3, 0, 1, 6, 4, 2, 7, 8, 5]  # ad: each tap minus its clockwise neighbour
_RING_OUT, _RING_IN = [0, 2, 4, 10, 14, 20, 22, 24], [6, 7, 8, 11, 13, 16, 17, 18]  # rd: 5x5 positions


def fold_kernel(pdc: str, w: torch.Tensor) -> torch.Tensor:
    """The plain-convolution kernel equal to PDC type `pdc` with stored 3x3 kernel `w` (out, in, 3, 3)."""
    if pdc == "cv":
        return w
    if pdc == "cd":
        folded = w.clone()
        folded[:, :, 1, 1] -= w.sum(dim=(2, 3))
        return folded
    flat = w.flatten(2)  # (out, in, 9)
    if pdc == "ad":
        return (flat - flat[:, :, _CLOCKWISE]).view_as(w)
    ring = flat.new_zeros(*flat.shape[:2], 25)  # rd
    ring[:, :, _RING_OUT] = flat[:, :, 1:]
    ring[:, :, _RING_IN] = -flat[:, :, 1:]
    return ring.view(*w.shape[:2], 5, 5)


class PDConv(nn.Module):
    """A 3x3 pixel-difference convolution (stored kernel), a plain convolution after `fold()`."""

    def __init__(self, pdc: str, cin: int, cout: int, groups: int = 1, bias: bool = False):
        super().__init__()
        self.pdc, self.groups = pdc, groups
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, 3, 3))
        self.bias = nn.Parameter(torch.empty(cout)) if bias else None

    def fold(self) -> None:
        self.weight = nn.Parameter(fold_kernel(self.pdc, self.weight.detach()), requires_grad=False)
        self.pdc = "cv"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fold_kernel(self.pdc, self.weight)
        return F.conv2d(x, w, self.bias, padding=w.shape[-1] // 2, groups=self.groups)


class PDCBlock(nn.Module):
    """Depthwise PDC -> ReLU -> 1x1, residual; stride 2 max-pools first and projects the shortcut."""

    def __init__(self, pdc: str, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.shortcut = nn.Conv2d(cin, cout, 1)
        self.conv1 = PDConv(pdc, cin, cin, groups=cin)
        self.conv2 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.max_pool2d(x, 2, 2)
        y = self.conv2(F.relu(self.conv1(x)))
        return y + (self.shortcut(x) if self.stride > 1 else x)


class CDCM(nn.Module):
    """Compact dilation convolution module: 1x1, then four dilated 3x3 (5, 7, 9, 11) summed."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1)
        for i, d in enumerate((5, 7, 9, 11), start=1):
            setattr(self, f"conv2_{i}", nn.Conv2d(cout, cout, 3, dilation=d, padding=d, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(x))
        return self.conv2_1(x) + self.conv2_2(x) + self.conv2_3(x) + self.conv2_4(x)


class CSAM(nn.Module):
    """Compact spatial attention: x * sigmoid(conv3x3(conv1x1(relu(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class MapReduce(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiDiNet(nn.Module):
    def __init__(self, width: int = 60, dil: int = 24, pdcs: tuple[str, ...] = CARV4):
        super().__init__()
        self.init_block = PDConv(pdcs[0], 3, width)
        stages = ((width, 3), (2 * width, 4), (4 * width, 4), (4 * width, 4))  # (channels, blocks) of stages 1-4
        layer, cin = 1, width
        for s, (cout, blocks) in enumerate(stages, start=1):
            for b in range(1, blocks + 1):
                stride = 2 if s > 1 and b == 1 else 1
                setattr(self, f"block{s}_{b}", PDCBlock(pdcs[layer], cin, cout, stride))
                cin, layer = cout, layer + 1
        self.dilations = nn.ModuleList(CDCM(c, dil) for c, _ in stages)
        self.attentions = nn.ModuleList(CSAM(dil) for _ in stages)
        self.conv_reduces = nn.ModuleList(MapReduce(dil) for _ in stages)
        self.classifier = nn.Conv2d(4, 1, 1)
        self._stages = [[f"block{s}_{b}" for b in range(1, n + 1)] for s, (_, n) in enumerate(stages, start=1)]

    def fold(self) -> PiDiNet:
        for module in self.modules():
            if isinstance(module, PDConv):
                module.fold()
        return self

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) BGR in [0, 1] -> (B, 1, H, W) fused edge probability (the reference's last output)."""
        size = bgr.shape[-2:]
        x = self.init_block(bgr)  # (B, 60, H, W)
        sides = []
        for i, names in enumerate(self._stages):
            for name in names:
                x = getattr(self, name)(x)  # stage i: (B, C_i, H/2^i, W/2^i)
            side = self.conv_reduces[i](self.attentions[i](self.dilations[i](x)))  # (B, 1, h, w)
            sides.append(F.interpolate(side, size, mode="bilinear", align_corners=False) if i else side)
        return torch.sigmoid(self.classifier(torch.cat(sides, dim=1)))  # (B, 1, H, W)


PIDINET = Architecture("pidinet", PiDiNet, ("table5_pidinet.pth",), "Hugging Face lllyasviel/Annotators",
                       "MIT text with a research-only clause: commercial use needs the authors' permission",
                       finish=lambda net: channels_last(net.fold()))
ARCHITECTURES = (PIDINET,)

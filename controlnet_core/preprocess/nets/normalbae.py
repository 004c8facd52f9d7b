"""NormalBAE surface normals (Bae et al., "Estimating and Exploiting the Aleatoric Uncertainty in Surface Normal
Estimation", ICCV 2021; baegwangbin/surface_normal_uncertainty, as ControlNet-v1-1-nightly annotator/normalbae runs
it): an EfficientNet-B5 encoder (TensorFlow variant: 'same' padding, BN eps 1e-3, AdvProp weights) and a decoder that
refines the normal at 1/8, 1/4, 1/2 and full resolution. Module names follow `scannet.pt` (`{"model": ...}`).

The encoder is our own module with timm's / gen-efficientnet's parameter names (no timm at run time, nothing
downloaded); the decoder is the test-time path (every pixel refined; the training-time point sampling is left out).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Architecture
from ._layers import channels_last, fuse_conv_bn, fuse_sequential, same_pad

# EfficientNet-B5 (width 1.6, depth 2.2): (block kind, kernel, stride, expansion, channels, repeats) per stage
B5_STAGES = (("ds", 3, 1, 1, 24, 3), ("ir", 3, 2, 6, 40, 5), ("ir", 5, 2, 6, 64, 5), ("ir", 3, 2, 6, 128, 7),
             ("ir", 5, 1, 6, 176, 7), ("ir", 5, 2, 6, 304, 9), ("ir", 3, 1, 6, 512, 3))
BN_EPS = 1e-3


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding computed from the input size (no padding stored)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(same_pad(x, self.kernel_size[0], self.stride[0]), self.weight, self.bias)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # odd kernel, stride 1: 'same' is symmetric
        return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False)
    return SameConv(cin, cout, kernel, stride, groups=groups, bias=False)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        return x * torch.sigmoid(gate)


class _Fusable(nn.Module):
    """A block whose (conv, bn) pairs are folded by `fuse()`: each named bn becomes Identity."""

    pairs: tuple[tuple[str, str], ...] = ()

    def fuse(self) -> None:
        for conv, bn in self.pairs:
            setattr(self, conv, fuse_conv_bn(getattr(self, conv), getattr(self, bn)))
            setattr(self, bn, nn.Identity())


class DepthwiseSeparable(_Fusable):
    pairs = (("conv_dw", "bn1"), ("conv_pw", "bn2"))

    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        self.conv_dw = _conv(cin, cin, kernel, stride, groups=cin)
        self.bn1 = _bn(cin)
        self.se = SqueezeExcite(cin, cin // 4)
        self.conv_pw = _conv(cin, cout, 1)
        self.bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
        return x + y if self.residual else y


class InvertedResidual(_Fusable):
    pairs = (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.conv_pw = _conv(cin, mid, 1)
        self.bn1 = _bn(mid)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.se = SqueezeExcite(mid, cin // 4)
        self.conv_pwl = _conv(mid, cout, 1)
        self.bn3 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn2(self.conv_dw(F.silu(self.bn1(self.conv_pw(x))))))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return x + y if self.residual else y


class EfficientNet(nn.Module):
    """The feature extractor: stem, 7 stages, 1x1 head (its bn2 is stored but unused, as in the reference)."""

    def __init__(self, stages=B5_STAGES, stem: int = 48, head: int = 2048):
        super().__init__()
        self.conv_stem = _conv(3, stem, 3, 2)
        self.bn1 = _bn(stem)
        blocks, cin = [], stem
        for kind, kernel, stride, expand, cout, repeats in stages:
            stage = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                stage.append(DepthwiseSeparable(cin, cout, kernel, s) if kind == "ds"
                             else InvertedResidual(cin, cout, kernel, s, expand))
                cin = cout
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = _conv(cin, head, 1)
        self.bn2 = _bn(head)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [stage 0 (1/2), stage 1 (1/4), stage 2 (1/8), stage 4 (1/16), head (1/32, pre-norm)]."""
        x = F.silu(self.bn1(self.conv_stem(x)))
        taps = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in (0, 1, 2, 4):
                taps.append(x)
        return [*taps, self.conv_head(x)]


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.original_model = EfficientNet()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.original_model(x)


class UpSampleBN(nn.Module):
    """Upsample x to the skip's size (bilinear, align_corners), concatenate, two conv-BN-LeakyReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self._net = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(),
                                  nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([up, skip], dim=1))


def _head(cin: int) -> nn.Sequential:
    """The per-pixel refinement MLP (Conv1d layers, as stored)."""
    return nn.Sequential(nn.Conv1d(cin, 128, 1), nn.ReLU(), nn.Conv1d(128, 128, 1), nn.ReLU(),
                         nn.Conv1d(128, 128, 1), nn.ReLU(), nn.Conv1d(128, 4, 1))


def _pixel_mlp(head: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The stored Conv1d MLP applied to every pixel of (B, C, H, W) as 1x1 convolutions (the reference flattens to
    (B, C, H*W) first; this keeps the channels-last layout)."""
    for layer in head:
        x = F.conv2d(x, layer.weight[..., None], layer.bias) if isinstance(layer, nn.Conv1d) else layer(x)
    return x


def norm_normalize(out: torch.Tensor) -> torch.Tensor:
    """(B, 4, ...) -> unit normal in channels 0-2, concentration kappa = elu(k) + 1.01 in channel 3."""
    normal, kappa = out[:, :3], out[:, 3:]
    norm = torch.sqrt((normal ** 2).sum(1, keepdim=True)) + 1e-10
    return torch.cat([normal / norm, F.elu(kappa) + 1.01], dim=1)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(2048, 2048, 1)
        self.up1 = UpSampleBN(2048 + 176, 1024)
        self.up2 = UpSampleBN(1024 + 64, 512)
        self.up3 = UpSampleBN(512 + 40, 256)
        self.up4 = UpSampleBN(256 + 24, 128)
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4 = _head(512 + 4)
        self.out_conv_res2 = _head(256 + 4)
        self.out_conv_res1 = _head(128 + 4)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Encoder taps -> (B, 4, H, W): unit normal and kappa at the input resolution."""
        b0, b1, b2, b3, b4 = features
        d2 = self.up2(self.up1(self.conv2(b4), b3), b2)  # (B, 512, H/8, W/8)
        d3 = self.up3(d2, b1)  # (B, 256, H/4, W/4)
        d4 = self.up4(d3, b0)  # (B, 128, H/2, W/2)
        out = norm_normalize(self.out_conv_res8(d2))  # (B, 4, H/8, W/8)
        for feat, head in ((d2, self.out_conv_res4), (d3, self.out_conv_res2), (d4, self.out_conv_res1)):
            x = torch.cat([_up2(feat), _up2(out)], dim=1)  # (B, C + 4, 2h, 2w)
            out = norm_normalize(_pixel_mlp(head, x))  # (B, 4, 2h, 2w)
        return out

    def fuse(self) -> None:
        for up in (self.up1, self.up2, self.up3, self.up4):
            fuse_sequential(up._net)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class NNET(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised RGB, H and W multiples of 32 -> (B, 4, H, W) normal + kappa."""
        return self.decoder(self.encoder(x))

    def fuse(self) -> NNET:
        """Fold every BatchNorm into its convolution (inference only)."""
        for module in self.modules():
            if isinstance(module, _Fusable):
                module.fuse()
        model = self.encoder.original_model
        model.conv_stem, model.bn1 = fuse_conv_bn(model.conv_stem, model.bn1), nn.Identity()
        self.decoder.fuse()
        return self


NORMAL_BAE = Architecture("normal_bae", NNET, ("scannet.pt",), "Hugging Face lllyasviel/Annotators", "MIT",
                          finish=lambda net: channels_last(net.fuse()))
ARCHITECTURES = (NORMAL_BAE,)

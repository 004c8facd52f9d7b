"""YOLOX-l person detector as DWPose runs it (Ge et al. 2021, arXiv:2107.08430; mmdetection's
yolox_l_8x8_300e_coco: CSPDarknet P5 + YOLOXPAFPN + YOLOXHead, BatchNorm eps 1e-3, SiLU). Module names are
mmdetection's checkpoint keys (`backbone.stem.conv.conv.weight`, `neck.reduce_layers.0.conv.weight`,
`bbox_head.multi_level_conv_cls.0.weight`), so the published state dict loads with no key map.

The network returns what the DWPose / rtmlib ONNX export returns: (B, N, 85) per anchor point (N = 8400 at 640²,
strides 8, 16, 32, row-major per level) holding the raw box regression (dx, dy, log w, log h), the objectness
sigmoid and the 80 class sigmoids. `decode_boxes` turns them into boxes. The CSP building blocks here are shared
with RTMPose's CSPNeXt backbone (rtmpose.py). Licence: Apache-2.0 (mmdetection).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Architecture
from ._layers import channels_last, conv2d_silu, fuse_conv_bn

STRIDES = (8, 16, 32)
YOLOX_EPS = 1e-3  # mmdetection's yolox configs: BN(momentum=0.03, eps=0.001)
PUBLISHED = ("the mmdetection model zoo (download.openmmlab.com/mmdetection/v2.0/yolox/yolox_l_8x8_300e_coco/"
             "yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth), saved under the name yolox_l.pth")
LICENCE = "Apache-2.0"


class ConvModule(nn.Module):
    """mmcv ConvModule: conv (no bias) -> BatchNorm -> SiLU (keys conv.*, bn.*)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, eps: float = YOLOX_EPS):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is None:  # folded into the convolution by `fuse`
            return conv2d_silu(x, self.conv)
        return F.silu(self.bn(self.conv(x)))

    def fuse(self) -> None:
        """In place, after loading: the eval-mode BatchNorm folded into the convolution (which gains a bias)."""
        if self.bn is not None:
            self.conv, self.bn = fuse_conv_bn(self.conv, self.bn), None


def fuse_conv_modules(net: nn.Module) -> nn.Module:
    """The load-time `finish` of the CSP networks (YOLOX, RTMPose): every ConvModule's BatchNorm folded into its
    convolution and the SiLU run inside oneDNN's convolution on the CPU (the same sums up to float32 rounding),
    weights stored channels-last."""
    for module in net.modules():
        if isinstance(module, ConvModule):
            module.fuse()
    return channels_last(net)


class DepthwiseSeparable(nn.Module):
    """mmcv DepthwiseSeparableConvModule: k x k depthwise ConvModule, then a 1x1 ConvModule."""

    def __init__(self, cin: int, cout: int, k: int, eps: float):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, k, groups=cin, eps=eps)
        self.pointwise_conv = ConvModule(cin, cout, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class Bottleneck(nn.Module):
    """Darknet bottleneck (1x1, 3x3) or CSPNeXt block (3x3, depthwise-separable 5x5); residual when asked."""

    def __init__(self, channels: int, identity: bool, cspnext: bool, eps: float):
        super().__init__()
        self.conv1 = ConvModule(channels, channels, 3 if cspnext else 1, eps=eps)
        self.conv2 = DepthwiseSeparable(channels, channels, 5, eps) if cspnext else ConvModule(channels, channels,
                                                                                               3, eps=eps)
        self.identity = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.identity else out


class ChannelAttention(nn.Module):
    """CSPNeXt channel attention: x * hardsigmoid(1x1 conv(global mean))."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))  # (B, C, H, W) * (B, C, 1, 1)


class CSPLayer(nn.Module):
    """Cross-stage partial layer: blocks on one half of the channels, a 1x1 shortcut on the other, concatenated
    (optionally channel attention) and fused by a 1x1 conv."""

    def __init__(self, cin: int, cout: int, blocks: int, identity: bool, cspnext: bool = False,
                 attention: bool = False, eps: float = YOLOX_EPS, expand: float = 0.5):
        super().__init__()
        mid = int(cout * expand)
        self.main_conv = ConvModule(cin, mid, 1, eps=eps)
        self.short_conv = ConvModule(cin, mid, 1, eps=eps)
        self.final_conv = ConvModule(2 * mid, cout, 1, eps=eps)
        self.blocks = nn.Sequential(*[Bottleneck(mid, identity, cspnext, eps) for _ in range(blocks)])
        self.attention = ChannelAttention(2 * mid) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.blocks(self.main_conv(x)), self.short_conv(x)], 1)  # (B, 2 mid, H, W)
        if self.attention is not None:
            y = self.attention(y)
        return self.final_conv(y)


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: 1x1 to half the channels, max-pools 5, 9, 13 (stride 1) concatenated, 1x1."""

    def __init__(self, cin: int, cout: int, eps: float):
        super().__init__()
        self.conv1 = ConvModule(cin, cin // 2, 1, eps=eps)
        self.conv2 = ConvModule(cin // 2 * 4, cout, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        pools = [F.max_pool2d(x, k, 1, k // 2) for k in (5, 9, 13)]
        return self.conv2(torch.cat([x, *pools], 1))  # (B, 4 * C / 2, H, W) -> (B, cout, H, W)


def csp_stage(cin: int, cout: int, blocks: int, identity: bool, spp: bool, cspnext: bool, eps: float) -> nn.Sequential:
    """One backbone stage: 3x3 stride-2 conv, SPP on the last stage, a CSP layer (keys stageN.0 / .1 / .2)."""
    layers = [ConvModule(cin, cout, 3, 2, eps=eps)]
    if spp:
        layers.append(SPPBottleneck(cout, cout, eps))
    layers.append(CSPLayer(cout, cout, blocks, identity, cspnext, attention=cspnext, eps=eps))
    return nn.Sequential(*layers)


class Focus(nn.Module):
    """Space-to-depth (the 4 pixel phases stacked on channels), then a 3x3 ConvModule."""

    def __init__(self, cout: int):
        super().__init__()
        self.conv = ConvModule(12, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)  # (B,12,H/2,W/2)
        return self.conv(x)


class CSPDarknet(nn.Module):
    """YOLOX backbone P5 (deepen 1.0, widen 1.0): stem + 4 stages; outputs strides 8, 16, 32 (256/512/1024 ch)."""

    def __init__(self):
        super().__init__()
        self.stem = Focus(64)
        for i, (cin, cout, blocks, identity, spp) in enumerate(((64, 128, 3, True, False), (128, 256, 9, True, False),
                                                                 (256, 512, 9, True, False),
                                                                 (512, 1024, 3, False, True)), 1):
            setattr(self, f"stage{i}", csp_stage(cin, cout, blocks, identity, spp, False, YOLOX_EPS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stage2(self.stage1(self.stem(x)))  # (B, 256, H/8, W/8)
        c4 = self.stage3(x)  # (B, 512, H/16, W/16)
        return x, c4, self.stage4(c4)  # ..., (B, 1024, H/32, W/32)


class PAFPN(nn.Module):
    """YOLOXPAFPN: top-down (1x1 reduce, nearest x2, CSP) then bottom-up (3x3 stride 2, CSP), 1x1 to 256 each."""

    def __init__(self, channels: tuple[int, int, int] = (256, 512, 1024), out: int = 256, blocks: int = 3):
        super().__init__()
        c3, c4, c5 = channels
        self.reduce_layers = nn.ModuleList([ConvModule(c5, c4, 1), ConvModule(c4, c3, 1)])
        self.top_down_blocks = nn.ModuleList([CSPLayer(2 * c4, c4, blocks, False), CSPLayer(2 * c3, c3, blocks, False)])
        self.downsamples = nn.ModuleList([ConvModule(c3, c3, 3, 2), ConvModule(c4, c4, 3, 2)])
        self.bottom_up_blocks = nn.ModuleList([CSPLayer(2 * c3, c4, blocks, False), CSPLayer(2 * c4, c5, blocks, False)])
        self.out_convs = nn.ModuleList([ConvModule(c, out, 1) for c in channels])

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        p5 = self.reduce_layers[0](c5)  # (B, 512, H/32, W/32)
        t4 = self.top_down_blocks[0](torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), c4], 1))
        p4 = self.reduce_layers[1](t4)  # (B, 256, H/16, W/16)
        t3 = self.top_down_blocks[1](torch.cat([F.interpolate(p4, scale_factor=2.0, mode="nearest"), c3], 1))
        o4 = self.bottom_up_blocks[0](torch.cat([self.downsamples[0](t3), p4], 1))  # (B, 512, H/16, W/16)
        o5 = self.bottom_up_blocks[1](torch.cat([self.downsamples[1](o4), p5], 1))  # (B, 1024, H/32, W/32)
        return [conv(f) for conv, f in zip(self.out_convs, (t3, o4, o5))]  # 3 x (B, 256, H/s, W/s)


class YOLOXHead(nn.Module):
    """Decoupled head per level: two 3x3 ConvModules each for classes and for box/objectness, 1x1 predictors."""

    def __init__(self, classes: int = 80, channels: int = 256):
        super().__init__()
        tower = lambda: nn.Sequential(ConvModule(channels, channels, 3), ConvModule(channels, channels, 3))
        self.multi_level_cls_convs = nn.ModuleList([tower() for _ in STRIDES])
        self.multi_level_reg_convs = nn.ModuleList([tower() for _ in STRIDES])
        self.multi_level_conv_cls = nn.ModuleList([nn.Conv2d(channels, classes, 1) for _ in STRIDES])
        self.multi_level_conv_reg = nn.ModuleList([nn.Conv2d(channels, 4, 1) for _ in STRIDES])
        self.multi_level_conv_obj = nn.ModuleList([nn.Conv2d(channels, 1, 1) for _ in STRIDES])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for i, x in enumerate(feats):
            cls = self.multi_level_conv_cls[i](self.multi_level_cls_convs[i](x))  # (B, 80, h, w)
            reg_feat = self.multi_level_reg_convs[i](x)
            reg, obj = self.multi_level_conv_reg[i](reg_feat), self.multi_level_conv_obj[i](reg_feat)  # (B, 4 | 1, h, w)
            outs.append(torch.cat([reg, obj.sigmoid(), cls.sigmoid()], 1).flatten(2))  # (B, 85, h * w)
        return torch.cat(outs, 2).transpose(1, 2)  # (B, N, 85)


class YOLOX(nn.Module):
    """(B, 3, 640, 640) letterboxed pixels on the 0-255 scale (no mean/std) -> (B, N, 85) (module docstring)."""

    def __init__(self):
        super().__init__()
        self.backbone = CSPDarknet()
        self.neck = PAFPN()
        self.bbox_head = YOLOXHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bbox_head(self.neck(self.backbone(x)))


def decode_boxes(out: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 85) network output for a `height` x `width` input -> (boxes (B, N, 4) x1, y1, x2, y2 in input pixels,
    person scores (B, N) = objectness x class-0 score): grid priors per stride, centre (d + grid) * stride,
    size exp(log wh) * stride."""
    grids, strides = [], []
    for s in STRIDES:
        ys, xs = torch.meshgrid(torch.arange(height // s, device=out.device),
                                torch.arange(width // s, device=out.device), indexing="ij")
        grids.append(torch.stack([xs, ys], -1).reshape(-1, 2))  # (h * w, 2) x, y
        strides.append(torch.full((grids[-1].shape[0], 1), s, device=out.device))
    grid, stride = torch.cat(grids).to(out.dtype), torch.cat(strides).to(out.dtype)  # (N, 2), (N, 1)
    centre = (out[..., :2] + grid) * stride  # (B, N, 2)
    size = out[..., 2:4].exp() * stride
    boxes = torch.cat([centre - size / 2, centre + size / 2], -1)  # (B, N, 4)
    return boxes, out[..., 4] * out[..., 5]


YOLOX_L = Architecture("yolox_l", YOLOX, ("yolox_l.pth", "yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth"),
                       PUBLISHED, LICENCE, finish=fuse_conv_modules, extra_prefixes=("ema_",))

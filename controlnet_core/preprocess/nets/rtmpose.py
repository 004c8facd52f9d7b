"""RTMPose-l whole-body (133 COCO-WholeBody keypoints, 384x288) as DWPose publishes it (Jiang et al. 2023,
arXiv:2303.07399; Yang et al. 2023, DWPose; mmpose configs/wholebody_2d_keypoint/rtmpose/ubody/
rtmpose-l_8xb32-270e_coco-ubody-wholebody-384x288.py): a CSPNeXt-P5 backbone (deepen 1.0, widen 1.0, expand 0.5,
channel attention, SiLU, BatchNorm eps 1e-5: the config's SyncBN without eps) and an RTMCC head (7x7 conv to 133
maps, ScaleNorm + linear to 256 per keypoint, one gated attention unit with s = 128, linear SimCC classifiers of
576 x-bins and 768 y-bins, split ratio 2). Module names are the mmpose checkpoint's keys (`dw-ll_ucoco_384.pth`:
`backbone.stem.0.conv.weight`, `head.gau.uv.weight`, `head.cls_x.weight`). Licence: Apache-2.0 (DWPose, mmpose).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import Architecture
from .yolox import ConvModule, csp_stage, fuse_conv_modules

INPUT_W, INPUT_H = 288, 384
SPLIT_RATIO = 2.0
KEYPOINTS = 133
BN_EPS = 1e-5
PUBLISHED = "Hugging Face yzd-v/DWPose (dw-ll_ucoco_384.pth)"
LICENCE = "Apache-2.0"


class CSPNeXt(nn.Module):
    """CSPNeXt-P5 to stride 32: a 3-conv stem (32, 32, 64 ch) and 4 stages; returns the last (B, 1024, H/32, W/32)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(ConvModule(3, 32, 3, 2, eps=BN_EPS), ConvModule(32, 32, 3, eps=BN_EPS),
                                  ConvModule(32, 64, 3, eps=BN_EPS))
        for i, (cin, cout, blocks, identity, spp) in enumerate(((64, 128, 3, True, False), (128, 256, 6, True, False),
                                                                 (256, 512, 6, True, False),
                                                                 (512, 1024, 3, False, True)), 1):
            setattr(self, f"stage{i}", csp_stage(cin, cout, blocks, identity, spp, True, BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))


class ScaleNorm(nn.Module):
    """x / max(||x|| / sqrt(dim), eps) * g over the last axis (Nguyen & Salazar 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.scale, self.eps = dim ** -0.5, eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale).clamp(min=self.eps) * self.g


class Scale(nn.Module):
    """Learned per-channel scale (the GAU's residual branch)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class GAU(nn.Module):
    """mmpose RTMCCBlock, self-attention, no relative bias, no rotary encoding (Hua et al. 2022, "Transformer
    Quality in Linear Time"): ScaleNorm, one SiLU-gated projection to u, v (2 x 512) and a shared base (128) scaled
    and shifted into q and k, relu(q k^T / sqrt(s))^2 attention over the keypoints, u * (A v), out-projection,
    plus the scaled residual."""

    def __init__(self, dim: int = 256, s: int = 128, expansion: int = 2):
        super().__init__()
        self.e, self.s = dim * expansion, s
        self.ln = ScaleNorm(dim)
        self.uv = nn.Linear(dim, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.ones(2, s))
        self.beta = nn.Parameter(torch.zeros(2, s))
        self.o = nn.Linear(self.e, dim, bias=False)
        self.res_scale = Scale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        uv = F.silu(self.uv(self.ln(x)))  # (B, K, 2e + s)
        u, v, base = torch.split(uv, [self.e, self.e, self.s], dim=2)
        q, k = torch.unbind(base.unsqueeze(2) * self.gamma + self.beta, dim=2)  # 2 x (B, K, s)
        kernel = F.relu(q @ k.transpose(1, 2) / math.sqrt(self.s)).square()  # (B, K, K)
        return self.res_scale(x) + self.o(u * (kernel @ v))  # (B, K, dim)


class RTMCCHead(nn.Module):
    """(B, 1024, 12, 9) -> SimCC logits (x (B, 133, 576), y (B, 133, 768))."""

    def __init__(self, cin: int = 1024, keypoints: int = KEYPOINTS, feat_hw: tuple[int, int] = (12, 9),
                 hidden: int = 256):
        super().__init__()
        self.final_layer = nn.Conv2d(cin, keypoints, 7, padding=3)
        self.mlp = nn.Sequential(ScaleNorm(feat_hw[0] * feat_hw[1]), nn.Linear(feat_hw[0] * feat_hw[1], hidden,
                                                                               bias=False))
        self.gau = GAU(hidden)
        self.cls_x = nn.Linear(hidden, int(INPUT_W * SPLIT_RATIO), bias=False)
        self.cls_y = nn.Linear(hidden, int(INPUT_H * SPLIT_RATIO), bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.gau(self.mlp(self.final_layer(x).flatten(2)))  # (B, 133, 108) -> (B, 133, 256)
        return self.cls_x(feats), self.cls_y(feats)


class RTMPose(nn.Module):
    """(B, 3, 384, 288) RGB, (x - mean) / std -> SimCC logits (x (B, 133, 576), y (B, 133, 768))."""

    def __init__(self):
        super().__init__()
        self.backbone = CSPNeXt()
        self.head = RTMCCHead()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(x))


DWPOSE_L = Architecture("dwpose_l_384", RTMPose, ("dw-ll_ucoco_384.pth",), PUBLISHED, LICENCE,
                        finish=fuse_conv_modules)

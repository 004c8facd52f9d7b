"""CMU OpenPose body, hand and face networks as the ControlNet 1.1 annotator runs them (ControlNet-v1-1-nightly
annotator/openpose/model.py, face.py; VGG-19 front + 6 CPM stages). Module names are the published files' keys
(`body_pose_model.pth`, `hand_pose_model.pth`, `facenet.pth`: flat layer names such as `conv1_1.weight`).

Upstream quirk kept: the body's stage-6 heat-map conv (`Mconv7_stage6_L2`) is followed by a ReLU (the annotator's
no-ReLU list names `Mconv7_stage6_L1` twice), so heat maps are never negative. Licence: CMU, non-commercial.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Architecture

POOL = "pool"
PUBLISHED = "Hugging Face lllyasviel/Annotators"
LICENCE = "CMU OpenPose licence: non-commercial research use only"


class _Layers(nn.Module):
    """Convs held under their published names; `run(names, x)` applies them in order (2x2 max-pool at POOL)."""

    def add(self, name: str, cin: int, cout: int, k: int) -> str:
        setattr(self, name, nn.Conv2d(cin, cout, k, padding=k // 2))
        return name

    def run(self, names: tuple[str, ...], x: torch.Tensor, no_relu: frozenset[str] = frozenset()) -> torch.Tensor:
        for name in names:
            if name == POOL:
                x = F.max_pool2d(x, 2, 2)
                continue
            x = getattr(self, name)(x)
            if name not in no_relu:
                x = F.relu(x)
        return x


def _vgg(net: _Layers, tail: tuple[tuple[str, int, int], ...]) -> tuple[str, ...]:
    """VGG-19 to conv4_2 (3 pools: stride 8), then `tail` 3x3 convs (name, cin, cout)."""
    names = []
    for name, cin, cout in (("conv1_1", 3, 64), ("conv1_2", 64, 64), (POOL, 0, 0), ("conv2_1", 64, 128),
                            ("conv2_2", 128, 128), (POOL, 0, 0), ("conv3_1", 128, 256), ("conv3_2", 256, 256),
                            ("conv3_3", 256, 256), ("conv3_4", 256, 256), (POOL, 0, 0), ("conv4_1", 256, 512),
                            ("conv4_2", 512, 512), *tail):
        names.append(POOL if name == POOL else net.add(name, cin, cout, 3))
    return tuple(names)


def _stage(net: _Layers, suffix: str, cin: int, cout: int) -> tuple[str, ...]:
    """A refinement stage: five 7x7 convs, a 1x1, a 1x1 to `cout` maps."""
    return tuple(net.add(f"Mconv{i}_{suffix}", cin if i == 1 else 128, cout if i == 7 else 128, 7 if i <= 5 else 1)
                 for i in range(1, 8))


class BodyPose(_Layers):
    """(B, 3, H, W) BGR / 256 - 0.5 -> (PAFs (B, 38, H/8, W/8), heat maps (B, 19, H/8, W/8))."""

    def __init__(self):
        super().__init__()
        self.front = _vgg(self, (("conv4_3_CPM", 512, 256), ("conv4_4_CPM", 256, 128)))
        self.branches = []  # per stage: (L1 names, L2 names)
        for branch, maps in (("L1", 38), ("L2", 19)):
            first = tuple(self.add(f"conv5_{i}_CPM_{branch}", 128 if i == 1 else (512 if i == 5 else 128),
                                   maps if i == 5 else (512 if i == 4 else 128), 3 if i <= 3 else 1)
                          for i in range(1, 6))
            self.branches.append([first] + [_stage(self, f"stage{s}_{branch}", 185, maps) for s in range(2, 7)])
        self.no_relu = frozenset({"conv5_5_CPM_L1", "conv5_5_CPM_L2", "Mconv7_stage6_L1",
                                  *(f"Mconv7_stage{s}_L{b}" for s in range(2, 6) for b in (1, 2))})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.run(self.front, x)  # (B, 128, H/8, W/8)
        h = feat
        for stage in range(6):
            paf = self.run(self.branches[0][stage], h, self.no_relu)  # (B, 38, H/8, W/8)
            heat = self.run(self.branches[1][stage], h, self.no_relu)  # (B, 19, H/8, W/8); ReLU after stage 6
            h = torch.cat([paf, heat, feat], 1)  # (B, 185, H/8, W/8)
        return paf, heat


class PartPose(_Layers):
    """Hand (22 maps) and face (71 maps) CPM: (B, 3, S, S) BGR / 256 - 0.5 -> stage-6 maps (B, maps, S/8, S/8)."""

    def __init__(self, maps: int):
        super().__init__()
        self.front = _vgg(self, (("conv4_3", 512, 512), ("conv4_4", 512, 512), ("conv5_1", 512, 512),
                                 ("conv5_2", 512, 512), ("conv5_3_CPM", 512, 128)))
        self.first = (self.add("conv6_1_CPM", 128, 512, 1), self.add("conv6_2_CPM", 512, maps, 1))
        self.stages = [_stage(self, f"stage{s}", 128 + maps, maps) for s in range(2, 7)]
        self.no_relu = frozenset({"conv6_2_CPM", *(f"Mconv7_stage{s}" for s in range(2, 7))})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.run(self.front, x)  # (B, 128, S/8, S/8)
        h = self.run(self.first, feat, self.no_relu)
        for stage in self.stages:
            h = self.run(stage, torch.cat([h, feat], 1), self.no_relu)  # (B, maps, S/8, S/8)
        return h


OPENPOSE_BODY = Architecture("openpose_body", BodyPose, ("body_pose_model.pth",), PUBLISHED, LICENCE)
OPENPOSE_HAND = Architecture("openpose_hand", lambda: PartPose(22), ("hand_pose_model.pth",), PUBLISHED, LICENCE)
OPENPOSE_FACE = Architecture("openpose_face", lambda: PartPose(71), ("facenet.pth",), PUBLISHED, LICENCE)
ARCHITECTURES = (OPENPOSE_BODY, OPENPOSE_HAND, OPENPOSE_FACE)

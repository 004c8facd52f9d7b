"""Surface normals from NormalBAE (`scannet.pt`), in the colours of the ControlNet 1.1 normalbae model: ScanNet
protocol, RGB = (n + 1) / 2 with blue towards the viewer, red to the left, green up (nightly README L113, L130;
controlnet_aux 0.0.10 normalbae/__init__.py L64-77)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from ._image import to_bhwc
from ._network import quantize, run_network
from .nets import NetCache
from .nets._layers import pad_to_multiple
from .nets.normalbae import NORMAL_BAE

Progress = Callable[[int, int], None] | None
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normal_bae(image: torch.Tensor, batch_size: int = 4, models_dir=None, model_cache: NetCache | None = None,
               progress: Progress = None) -> torch.Tensor:
    """NormalBAE normals as an RGB hint on the 8-bit grid."""
    def forward(net, x):  # (b, 3, H, W) in [0, 1]
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        padded, size = pad_to_multiple((x - mean) / std, 32)  # five stride-2 stages
        return net(padded)[:, :3, : size[0], : size[1]]  # (b, 3, H, W) unit normals

    normal = run_network(image, [NORMAL_BAE], forward, models_dir=models_dir, model_cache=model_cache,
                         batch_size=batch_size, progress=progress)
    return to_bhwc(quantize(((normal + 1.0) * 0.5).clamp(0.0, 1.0)) / 255.0)

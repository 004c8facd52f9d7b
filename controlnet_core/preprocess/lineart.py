"""Learned line art: the informative-drawings generators (realistic `sk_model.pth`, coarse `sk_model2.pth`) and the
anime pix2pix U-Net (`netG.pth`), inverted to white lines on black as ControlNet expects (controlnet_aux 0.0.10
lineart/__init__.py, lineart_anime/__init__.py; ControlNet-v1-1-nightly gradio_lineart.py L48)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._image import to_bhwc
from ._network import quantize, resize_to, run_network
from .nets import NetCache
from .nets._layers import pad_to_multiple
from .nets.lineart import LINEART, LINEART_COARSE
from .nets.lineart_anime import LINEART_ANIME

Progress = Callable[[int, int], None] | None


def lineart(image: torch.Tensor, coarse: bool = False, batch_size: int = 8, models_dir=None,
            model_cache: NetCache | None = None, progress: Progress = None) -> torch.Tensor:
    """Realistic (or, with `coarse`, coarse) line art: 1 - the generator's map, on the 8-bit grid."""
    def forward(net, x):  # (b, 3, H, W) in [0, 1]
        padded, size = pad_to_multiple(x, 4)  # two stride-2 convolutions and two transposed ones
        return net(padded)[..., : size[0], : size[1]]

    line = run_network(image, [LINEART_COARSE if coarse else LINEART], forward, models_dir=models_dir,
                       model_cache=model_cache, batch_size=batch_size, progress=progress)
    return to_bhwc((255.0 - quantize(line)) / 255.0)


def lineart_anime(image: torch.Tensor, batch_size: int = 4, models_dir=None, model_cache: NetCache | None = None,
                  progress: Progress = None) -> torch.Tensor:
    """Anime line art: the picture resized (bicubic) up to multiples of 256, the U-Net, resized back, inverted."""
    def forward(net, x):
        size = x.shape[-2:]
        grid = tuple(256 * math.ceil(s / 256) for s in size)
        u8 = resize_to(x * 255.0, grid, "bicubic").round().clamp(0, 255)  # OpenCV resizes the 8-bit picture
        line = net(u8 / 127.5 - 1.0) * 127.5 + 127.5  # (b, 1, H', W') on the 0-255 scale
        return resize_to(line, size, "bicubic")

    line = run_network(image, [LINEART_ANIME], forward, models_dir=models_dir, model_cache=model_cache,
                       batch_size=batch_size, progress=progress)
    return to_bhwc((255.0 - quantize(line / 255.0)) / 255.0)

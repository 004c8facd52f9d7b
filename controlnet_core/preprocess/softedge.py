"""Soft edges from HED, PiDiNet and TEED, with the `safe` step and fake-scribble post-processing of the ControlNet
1.1 annotators (shared/research/preprocessors_next.md §2). White edges on black, on the 8-bit grid.

Each follows its controlnet_aux 0.0.10 detector at the detect size (the picture as it arrives here): HED
(hed/__init__.py: side maps resized bilinearly to the picture, mean, sigmoid), PiDiNet (pidi/__init__.py: BGR in
[0, 1], the fused output, optional > 0.5 filter), TEED (teed/__init__.py: like HED, safe step 2 by default).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ._image import to_bhwc
from ._network import fake_scribble, quantize, resize_to, run_network, safe_step
from .nets import NetCache
from .nets._layers import pad_to_multiple
from .nets.hed import HED
from .nets.pidinet import PIDINET
from .nets.teed import TEED

Progress = Callable[[int, int], None] | None


def hed(image: torch.Tensor, safe: bool = False, scribble: bool = False, batch_size: int = 8,
        models_dir=None, model_cache: NetCache | None = None, progress: Progress = None) -> torch.Tensor:
    """HED soft edges (ControlNetHED.pth); `safe`: 3 grey levels; `scribble`: thin 0/255 strokes."""
    def forward(net, x):  # (b, 3, H, W) in [0, 1]
        return _mean_sigmoid(net(x * 255.0), x.shape[-2:])

    edge = run_network(image, [HED], forward, models_dir=models_dir, model_cache=model_cache,
                       batch_size=batch_size, progress=progress)
    return to_bhwc(_finish(edge, 2 if safe else 0, scribble))


def pidinet(image: torch.Tensor, safe: bool = False, scribble: bool = False, apply_filter: bool = False,
            batch_size: int = 8, models_dir=None, model_cache: NetCache | None = None,
            progress: Progress = None) -> torch.Tensor:
    """PiDiNet soft edges (table5_pidinet.pth); `apply_filter`: binary edges (> 0.5) before the safe step."""
    def forward(net, x):
        edge = net(x.flip(1))  # the network reads BGR
        return (edge > 0.5).to(edge.dtype) if apply_filter else edge

    edge = run_network(image, [PIDINET], forward, models_dir=models_dir, model_cache=model_cache,
                       batch_size=batch_size, progress=progress)
    return to_bhwc(_finish(edge, 2 if safe else 0, scribble))


def teed(image: torch.Tensor, safe_steps: int = 2, batch_size: int = 16, models_dir=None,
         model_cache: NetCache | None = None, progress: Progress = None) -> torch.Tensor:
    """TEED soft edges (7_model.pth / MTEED.pth); `safe_steps` grey levels per the safe step (0: off)."""
    def forward(net, x):
        padded, size = pad_to_multiple(x * 255.0, 4)  # its three up-sampling paths meet at multiples of 4
        return _mean_sigmoid(net(padded), padded.shape[-2:])[..., : size[0], : size[1]]

    edge = run_network(image, [TEED], forward, models_dir=models_dir, model_cache=model_cache,
                       batch_size=batch_size, progress=progress)
    return to_bhwc(_finish(edge, safe_steps, False))


def _mean_sigmoid(sides: list[torch.Tensor], size) -> torch.Tensor:
    """Side logits (b, 1, h_k, w_k) -> sigmoid of their mean after bilinear resizing to `size`: (b, 1, H, W)."""
    return torch.sigmoid(torch.stack([resize_to(s, size) for s in sides]).mean(0))


def _finish(edge: torch.Tensor, safe_steps: int, scribble: bool) -> torch.Tensor:
    """Edge probability (B, 1, H, W) -> [0, 1] on the 8-bit grid: safe step, truncation, fake scribble."""
    if safe_steps:
        edge = safe_step(edge, safe_steps)
    u8 = quantize(edge)
    return (fake_scribble(u8) if scribble else u8) / 255.0

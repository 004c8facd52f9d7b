"""Control-following metrics that need no learned extractor (ControlNet++ eval protocol, simplified): IoU, edge F1
with a pixel tolerance, SSIM. All take batches and return one float per sample."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def iou(pred: Tensor, true: Tensor) -> Tensor:
    """Masks (B, H, W) bool -> IoU (B,); two empty masks score 1."""
    inter = (pred & true).flatten(1).sum(1).float()
    union = (pred | true).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def dilate(mask: Tensor, radius: int = 1) -> Tensor:
    """(B, H, W) bool -> bool, square structuring element of side 2r+1."""
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, 1, radius)[:, 0] > 0


def mask_edges(mask: Tensor) -> Tensor:
    """Morphological edge (mask minus its erosion) of (B, H, W) bool masks."""
    eroded = ~dilate(~mask)
    return mask & ~eroded


def edge_f1(pred: Tensor, true: Tensor, tolerance: int = 1) -> Tensor:
    """Edge maps (B, H, W) bool -> F1 (B,), a predicted edge pixel counting when within `tolerance` px of a true one."""
    p = (pred & dilate(true, tolerance)).flatten(1).sum(1).float() / pred.flatten(1).sum(1).clamp(min=1)
    r = (true & dilate(pred, tolerance)).flatten(1).sum(1).float() / true.flatten(1).sum(1).clamp(min=1)
    return 2 * p * r / (p + r).clamp(min=1e-8)


def ssim(a: Tensor, b: Tensor, window: int = 7, data_range: float = 2.0) -> Tensor:
    """Mean SSIM (Wang et al. 2004, uniform window) of images (B, C, H, W) -> (B,)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pool = lambda x: F.avg_pool2d(x, window, 1, window // 2, count_include_pad=False)
    mu_a, mu_b = pool(a), pool(b)
    var_a, var_b = pool(a * a) - mu_a ** 2, pool(b * b) - mu_b ** 2
    cov = pool(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)

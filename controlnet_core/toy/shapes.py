"""Shape classes for the prompt-drop claim (paper §3.3): the prompt names the shape, the hint's outline shows it.

Each sample is a circle, a bar (a horizontal rectangle) or a triangle (equilateral, pointing up) at a random position and size, filled with a
prompt-named colour on black. Hint: the white outline (RGB in [0, 1]); target: RGB in [-1, 1]; prompt tokens
[shape, fill] ("red bar"), the empty prompt [NULL_TOKEN, NULL_TOKEN]. The outline carries the class as well as the
position, so a ControlNet can learn the class from the hint or lean on the prompt for it: sampling with an EMPTY
prompt tells which it did (research/training.md §4.4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .data import COLOURS, NULL_TOKEN, SIZE, CircleBatch, palette

SHAPES = ("circle", "bar", "triangle")
FILLS = tuple(i for i, c in enumerate(COLOURS) if c != "black")  # black is the background
BLACK = COLOURS.index("black")


def prompt_text(shape: int, fill: int) -> str:
    if shape == NULL_TOKEN:
        return ""
    return f"{COLOURS[fill]} {SHAPES[shape]}"


def signed_distance(kind: Tensor, cx: Tensor, cy: Tensor, r: Tensor, size: int = SIZE) -> Tensor:
    """Approximate signed distance (negative inside) of each shape, (n,) parameters -> (n, S, S).

    circle: radius r; bar: a horizontal rectangle of half sides 1.3 r x 0.55 r (Chebyshev distance); triangle:
    equilateral, pointing up, height 1.8 r, centred on its bounding box (max over its three edge half-planes)."""
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dx = (grid[None, None, :] - cx[:, None, None]).expand(-1, size, -1)  # (n, S, S), x along the last axis
    dy = (grid[None, :, None] - cy[:, None, None]).expand(-1, -1, size)  # (n, S, S)
    rr = r[:, None, None]
    circle = (dx ** 2 + dy ** 2).sqrt() - rr
    bar = torch.maximum(dx.abs() - 1.3 * rr, dy.abs() - 0.55 * rr)
    s60 = math.sin(math.pi / 3)
    tri = torch.stack([dy - 0.9 * rr, -s60 * dx - 0.5 * dy - 0.45 * rr, s60 * dx - 0.5 * dy - 0.45 * rr]).amax(0)
    k = kind[:, None, None]
    return torch.where(k == 0, circle, torch.where(k == 1, bar, tri))


def shape_masks(cx: Tensor, cy: Tensor, r: Tensor, size: int = SIZE) -> Tensor:
    """The three candidate masks at each sample's position and size: (n, 3, S, S) bool."""
    n = cx.shape[0]
    return torch.stack([signed_distance(torch.full((n,), k), cx, cy, r, size) <= 0 for k in range(len(SHAPES))], 1)


@dataclass(frozen=True)
class ShapeBatch(CircleBatch):
    """CircleBatch fields (tokens are [shape, fill]) plus geometry (n, 4): shape class, cx, cy, r."""

    geometry: Tensor

    def prompts(self) -> list[str]:
        return [prompt_text(int(s), int(f)) for s, f in self.tokens.tolist()]

    def candidates(self) -> Tensor:
        """(n, 3, S, S) bool masks of the three classes at each sample's position and size."""
        g = self.geometry
        return shape_masks(g[:, 1], g[:, 2], g[:, 3], self.mask.shape[-1])


def shapes(n: int, generator: torch.Generator, size: int = SIZE) -> ShapeBatch:
    """n random samples: class uniform, size r U(2.5, 4.5) px (x size / 16), a half-pixel margin to the border,
    fill not black."""
    scale = size / SIZE
    kind = torch.randint(0, len(SHAPES), (n,), generator=generator)
    r = (2.5 + 2 * torch.rand(n, generator=generator)) * scale  # (n,)
    ex, ey = 1.3 * r + 0.5 * scale, r + 0.5 * scale  # half extents that bound all three shapes, plus the margin
    cx = ex + (size - 2 * ex) * torch.rand(n, generator=generator)
    cy = ey + (size - 2 * ey) * torch.rand(n, generator=generator)
    fill = torch.tensor(FILLS)[torch.randint(0, len(FILLS), (n,), generator=generator)]
    d = signed_distance(kind, cx, cy, r, size)  # (n, S, S)
    mask = d <= 0
    outline = (d.abs() <= 0.8 * scale).float()
    colours = palette()
    target = torch.where(mask[:, None], colours[fill][:, :, None, None], colours[BLACK][None, :, None, None])
    tokens = torch.stack([kind, fill], 1)
    hint = outline[:, None].expand(n, 3, size, size).contiguous()
    return ShapeBatch(hint, target, tokens, mask, torch.stack([kind.float(), cx, cy, r], 1))


def classify(mask: Tensor, batch: ShapeBatch) -> Tensor:
    """The class (n,) whose candidate mask at the hint's position and size has the highest IoU with `mask` (n, S, S)."""
    cand = batch.candidates()  # (n, 3, S, S)
    m = mask[:, None]
    inter = (cand & m).flatten(2).sum(2).float()
    union = (cand | m).flatten(2).sum(2).float().clamp(min=1)
    return (inter / union).argmax(1)

"""Procedural fill-circles: the fill50k task (lllyasviel/ControlNet docs/train.md) at 16 px, generated per batch.

Hint: a white circle outline on black, RGB in [0, 1]. Target: the disk in the fill colour on the background colour,
RGB in [-1, 1]. Prompt: "<fill> circle with <background> background" as in fill50k, here two colour tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PALETTE = {  # 8 saturated colours, RGB in [-1, 1] (x 0.9 so targets stay inside the range)
    "red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1),
    "cyan": (-1, 1, 1), "magenta": (1, -1, 1), "white": (1, 1, 1), "black": (-1, -1, -1),
}
COLOURS = tuple(PALETTE)
NULL_TOKEN = len(COLOURS)  # the empty prompt
SIZE = 16


@dataclass(frozen=True)
class CircleBatch:
    """hint (B, 3, S, S) in [0, 1]; target (B, 3, S, S) in [-1, 1]; tokens (B, 2) [fill, background]; mask (B, S, S)."""

    hint: Tensor
    target: Tensor
    tokens: Tensor
    mask: Tensor

    def prompts(self) -> list[str]:
        return [prompt_text(int(f), int(b)) for f, b in self.tokens.tolist()]


def prompt_text(fill: int, background: int) -> str:
    """fill50k's prompt form."""
    if fill == NULL_TOKEN:
        return ""
    return f"{COLOURS[fill]} circle with {COLOURS[background]} background"


def palette() -> Tensor:
    """(8, 3) colours in [-1, 1]."""
    return torch.tensor(list(PALETTE.values()), dtype=torch.float32) * 0.9


def fill_circles(n: int, generator: torch.Generator, size: int = SIZE) -> CircleBatch:
    """n random samples: radius U(2, 5) px (scaled with size / 16), disk fully inside, fill != background."""
    scale = size / SIZE
    r = (2 + 3 * torch.rand(n, generator=generator)) * scale  # (n,)
    cx = r + (size - 2 * r) * torch.rand(n, generator=generator)  # (n,)
    cy = r + (size - 2 * r) * torch.rand(n, generator=generator)
    fill = torch.randint(0, len(COLOURS), (n,), generator=generator)
    bg = (fill + torch.randint(1, len(COLOURS), (n,), generator=generator)) % len(COLOURS)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    d = ((grid[None, None, :] - cx[:, None, None]) ** 2 + (grid[None, :, None] - cy[:, None, None]) ** 2).sqrt()
    mask = d <= r[:, None, None]  # (n, S, S)
    outline = ((d - r[:, None, None]).abs() <= 0.8 * scale).float()  # (n, S, S)
    colours = palette()
    target = torch.where(mask[:, None], colours[fill][:, :, None, None], colours[bg][:, :, None, None])
    return CircleBatch(outline[:, None].expand(n, 3, size, size).contiguous(), target, torch.stack([fill, bg], 1),
                       mask)


def drop_prompts(tokens: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Replace each prompt by the empty prompt with probability p (paper §3.3); tokens (B, 2) -> (B, 2)."""
    if p <= 0:
        return tokens
    drop = torch.rand(tokens.shape[0], generator=generator) < p
    return torch.where(drop[:, None], torch.full_like(tokens, NULL_TOKEN), tokens)

"""The diffusion objective and sampler the trainer needs: DDPM schedules, q(x_t | x_0), DDIM (eta 0) sampling.

ε-parameterisation with uniform t as `ldm/models/diffusion/ddpm.py` (`p_losses`, `randint(0, T)`); SD's schedule is
"scaled linear" β 0.00085 -> 0.012 over T = 1000 (`models/cldm_v15.yaml`), the toy's the DDPM "linear" 1e-4 -> 0.02.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

EpsModel = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, C, h, w), t (B,)) -> ε prediction (B, C, h, w)


@dataclass(frozen=True)
class Schedule:
    """β schedule: kind "scaled_linear" (SD: linear in sqrt β) or "linear" (DDPM), T steps."""

    kind: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    steps: int = 1000

    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t, float64, (T,)."""
        if self.kind == "scaled_linear":
            betas = torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.steps, dtype=torch.float64) ** 2
        elif self.kind == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, self.steps, dtype=torch.float64)
        else:
            raise ValueError(f"schedule kind {self.kind!r}: use 'scaled_linear' (SD) or 'linear' (DDPM)")
        return torch.cumprod(1.0 - betas, dim=0)


SD_SCHEDULE = Schedule()
TOY_SCHEDULE = Schedule("linear", 1e-4, 0.02, 1000)


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε (ddpm.py `q_sample`); x0, noise (B, C, h, w), t (B,) long."""
    a = alphas_cumprod.to(x0.device)[t].to(x0.dtype)[:, None, None, None]  # (B, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def ddim_timesteps(steps: int, total: int) -> list[int]:
    """Evenly spaced DDIM timesteps, high to low (ldm `make_ddim_timesteps`, uniform, +1 offset)."""
    stride = total // steps
    return [i * stride + 1 for i in range(steps)][::-1]


@torch.no_grad()
def ddim_sample(model: EpsModel, noise: Tensor, schedule: Schedule, steps: int = 10,
                clip: float | None = None) -> Tensor:
    """Deterministic DDIM (eta 0) from `noise` (B, C, h, w); returns x0 (B, C, h, w) (ldm `DDIMSampler`).
    `clip` bounds each x0 prediction (pixel-space models: 1.0, DDPM's clip_denoised); ε is re-derived from it."""
    ac = schedule.alphas_cumprod()
    ts = ddim_timesteps(steps, schedule.steps)
    x = noise
    for i, t in enumerate(ts):
        a = float(ac[t])
        a_prev = float(ac[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)).float()  # (B, C, h, w)
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x

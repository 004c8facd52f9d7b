"""Benchmark set-up: random full-size models, the SD sigma schedule, an Euler CFG sampler driving the engine.

The sampler follows k-diffusion's `sample_euler` with eps-prediction (`k_diffusion/sampling.py`,
`external.DiscreteEpsDDPMDenoiser`) and ComfyUI's "normal" scheduler; it exists to time the engine, not to make images.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from controlnet_core.controlnet import ControlNet, ControlNetConfig
from controlnet_core.engine import Control, ResidualEngine, prepare_for_device
from controlnet_core.unet import ControlledUNet, UNetConfig
from controlnet_core.weights import ControlWeights

LATENT = 32  # 256 x 256 image
STEPS = 4
CFG = 7.0
TEXT_TOKENS = 77


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype = torch.float16
                   ) -> dict[str, Tensor]:
    """Random weights for these keys (norm scales ~1, biases small, N(0, 1/fan_in)); zero convs included."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if len(shape) == 1 and key.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            value = 0.02 * torch.randn(shape, generator=gen)
        else:
            value = torch.randn(shape, generator=gen) * math.prod(shape[1:]) ** -0.5
        out[key] = value.to(dtype)
    return out


def random_state_dict(module: nn.Module, seed: int, dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """`random_weights` for `module`'s keys and shapes."""
    return random_weights({k: tuple(v.shape) for k, v in module.state_dict().items()}, seed, dtype)


def build(cls, config, seed: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Model built without init cost (meta -> empty), loaded from a random fp16 state dict, cast once."""
    with torch.device("meta"):
        model = cls(config)
    sd = random_state_dict(model, seed)
    model = model.to_empty(device="cpu")
    model.load_state_dict(sd, strict=True)
    del sd
    return prepare_for_device(model, device, dtype)


def sd15_unet(device: torch.device, dtype: torch.dtype) -> ControlledUNet:
    """SD1.5-architecture reference U-Net with random weights."""
    return build(ControlledUNet, UNetConfig(), 100, device, dtype)


def sd15_controlnet(seed: int, device: torch.device, dtype: torch.dtype) -> ControlNet:
    """SD1.5-architecture ControlNet with random weights (random, non-zero zero convs)."""
    return build(ControlNet, ControlNetConfig(), seed, device, dtype)


def sd_sigmas(steps: int) -> tuple[list[float], list[float]]:
    """(sigmas + [0], timesteps) of SD's scaled-linear DDPM schedule, timesteps evenly spaced ("normal")."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1.0 - betas, dim=0)
    table = ((1 - alphas) / alphas).sqrt()  # sigma at each of the 1000 timesteps
    ts = torch.linspace(999, 0, steps, dtype=torch.float64)
    lo, frac = ts.floor().long(), ts - ts.floor()
    log_sigma = table.log()[lo] * (1 - frac) + table.log()[(lo + 1).clamp(max=999)] * frac
    return [*log_sigma.exp().tolist(), 0.0], ts.tolist()


@torch.inference_mode()
def sample(unet: ControlledUNet, controls: Sequence[Control], engine: ResidualEngine, noise: Tensor,
           cond: Tensor, uncond: Tensor, steps: int = STEPS, cfg: float = CFG) -> Tensor:
    """Euler, eps-prediction, CFG with cond and uncond in one batch of 2 rows (row 1 unconditional)."""
    sigmas, timesteps = sd_sigmas(steps)
    x = noise * sigmas[0]  # (1, 4, h, w)
    context = torch.cat([cond, uncond])  # (2, T, 768)
    rows = [False, True]
    for i in range(steps):
        s = sigmas[i]
        x_in = torch.cat([x, x]) * (1.0 / math.sqrt(s * s + 1.0))  # (2, 4, h, w): the models' input scaling
        t = torch.full((2,), timesteps[i], device=x.device, dtype=x.dtype)  # (2,)
        control = engine(controls, x_in, t, context, uncond_rows=rows, percent=i / steps) if controls else None
        eps_c, eps_u = unet(x_in, t, context, control=control).chunk(2)  # (1, 4, h, w) each
        x = x + (eps_u + cfg * (eps_c - eps_u)) * (sigmas[i + 1] - s)  # Euler step, d = eps
    return x


def inputs(device: torch.device, dtype: torch.dtype, n_hints: int = 3, seed: int = 0) -> dict:
    """Noise, text embeddings and hint images, fixed by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "noise": torch.randn(1, 4, LATENT, LATENT, generator=gen).to(device, dtype),
        "cond": torch.randn(1, TEXT_TOKENS, 768, generator=gen).to(device, dtype),
        "uncond": torch.randn(1, TEXT_TOKENS, 768, generator=gen).to(device, dtype),
        "hints": [torch.rand(1, 3, 8 * LATENT, 8 * LATENT, generator=gen) for _ in range(n_hints)],
    }


# config name -> (number of controls, control weights, reuse_steps)
CONFIGS = {
    "unet": (0, ControlWeights(), 1),
    "k1": (1, ControlWeights(), 1),
    "k2": (2, ControlWeights(), 1),
    "k3": (3, ControlWeights(), 1),
    "k1-cond-only": (1, ControlWeights(mode="controlnet"), 1),
    "k1-reuse2": (1, ControlWeights(), 2),
}


def controls_for(config: str, nets: Sequence[ControlNet], hints: Sequence[Tensor]) -> list[Control]:
    """The Controls of a benchmark configuration (fresh objects: empty caches)."""
    k, weights, reuse = CONFIGS[config]
    return [Control(nets[i], hints[i], weights=weights, reuse_steps=reuse) for i in range(k)]

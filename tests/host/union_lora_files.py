"""Random union, Control-LoRA and diff-ControlNet files of the SD1.5 architecture for the host tests.

Real key names (xinsir diffusers layout + union keys; Stability `lora_controlnet` + `.up` / `.down`; kohya
`control_model.*` + `difference`), random non-zero values (zero convs and spatial_ch_projs included). None of them
needs the base model: Control-LoRA factors and diff-ControlNet differences are added to whatever base samples them.
"""
from __future__ import annotations

import torch

from tests.fixtures import controlnet_ldm_shapes, random_controlnet_state_dict, random_state_dict, to_diffusers_layout

BASE_PREFIXES = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")  # ControlNet keys the U-Net has


def union_sd15(seed: int, num_types: int = 8) -> dict[str, torch.Tensor]:
    from tests.core.test_union import union_extras

    return {**to_diffusers_layout(random_controlnet_state_dict("sd15", seed)), **union_extras(num_types, 320, seed)}


def control_lora_sd15(seed: int, rank: int = 16) -> dict[str, torch.Tensor]:
    return control_lora("sd15", seed, rank)


def control_lora(spec: str, seed: int, rank: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Factors for every >= 2-D encoder weight (rank capped by the weight's sides), 1-D and ControlNet-only in full."""
    from tests.fixtures import SPECS

    g = torch.Generator().manual_seed(seed)
    shapes = controlnet_ldm_shapes(SPECS[spec])
    full = random_state_dict(shapes, seed, dtype)
    out = {"lora_controlnet": torch.tensor([])}
    for key, shape in shapes.items():
        if key.startswith(BASE_PREFIXES) and len(shape) >= 2 and key.endswith(".weight"):
            stem, fan_in = key[:-len(".weight")], int(torch.tensor(shape[1:]).prod())
            r = min(rank, shape[0], shape[1])
            up = torch.randn(shape[0], r, generator=g) * 0.2 / r ** 0.5
            down = torch.randn(r, fan_in, generator=g) / fan_in ** 0.5
            out[stem + ".up"] = (up[:, :, None, None] if len(shape) == 4 else up).to(dtype)
            out[stem + ".down"] = down.reshape(r, *shape[1:]).to(dtype)
        else:
            out[key] = full[key]
    return out


def diff_sd15(seed: int) -> dict[str, torch.Tensor]:
    """Small differences for the keys the U-Net has, ControlNet-only tensors in full, `difference` = 1."""
    g = torch.Generator().manual_seed(seed)
    full = random_controlnet_state_dict("sd15", seed)
    out = {"difference": torch.tensor(1.0)}
    for key, value in full.items():
        delta = 0.05 * torch.randn(value.shape, generator=g) * value.std().clamp(min=0.02)
        out["control_model." + key] = delta if key.startswith(BASE_PREFIXES) else value
    return out


MAKERS = {"union-sd15": union_sd15, "control-lora-sd15": control_lora_sd15, "diff-sd15": diff_sd15}

"""Random SDXL-architecture files for the SDXL host parity tests (tests/host/test_sdxl_parity.py).

The base model is written by the host's python (tests/host/make_models.py `sdxl`: the U-Net for UNETLoader, CLIP-L
and CLIP-G for DualCLIPLoader, fp16, 6.7 GB together); the control files here, by the pytest side, with real key
names and random non-zero values:
- union: xinsir "ControlNet++" diffusers layout, full SDXL encoder + 8-type union keys (zero convs and
  spatial_ch_projs random), fp16, 2.5 GB;
- Control-LoRA: Stability layout (`lora_controlnet` marker, `.up` / `.down` at rank 128 for every >= 2-D
  encoder weight, 1-D and ControlNet-only tensors in full), fp16;
- T2I-Adapter: diffusers `full_adapter_xl` (the layout the published SDXL adapters use), fp16, 79 M parameters.
All live in the host cache dir next to the SD1.5 files and are made once.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.fixtures import random_controlnet_state_dict, to_diffusers_layout
from tests.host.server import REPO, comfyui_python

UNET = "sdxl_unet_random.safetensors"
CLIP_L = "sdxl_clip_l_random.safetensors"
CLIP_G = "sdxl_clip_g_random.safetensors"
UNION = "controlnet_union_sdxl_random_fp16.safetensors"
CONTROL_LORA = "control_lora_rank128_sdxl_random.safetensors"
T2I = "t2iadapter_random_sdxl_full.safetensors"
T2I_ARGUMENTS = dict(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=16,
                     adapter_type="full_adapter_xl")  # TencentARC t2i-adapter-*-sdxl-1.0


def union_sdxl(seed: int) -> dict[str, torch.Tensor]:
    from tests.core.test_union import union_extras

    encoder = to_diffusers_layout(random_controlnet_state_dict("sdxl", seed, dtype=torch.float16))
    return {**encoder, **union_extras(8, 320, seed)}


def control_lora_sdxl(seed: int) -> dict[str, torch.Tensor]:
    from tests.host.union_lora_files import control_lora

    return control_lora("sdxl", seed, rank=128, dtype=torch.float16)


def t2i_sdxl(seed: int) -> dict[str, torch.Tensor]:
    """diffusers-layout weights of a random SDXL full adapter, weights N(0, 1/fan_in)."""
    import diffusers

    torch.manual_seed(seed)
    ref = diffusers.T2IAdapter(**T2I_ARGUMENTS)
    return {key: torch.randn_like(value) * (value[0].numel() ** -0.5 if value.ndim > 1 else 0.05)
            for key, value in ref.state_dict().items()}


CONTROLS = {UNION: (union_sdxl, 20), CONTROL_LORA: (control_lora_sdxl, 21), T2I: (t2i_sdxl, 22)}  # maker, seed


def ensure_sdxl_files(comfyui: Path, cache: Path) -> dict[str, Path]:
    """{name: cached file} of the base model parts (made by the host's python) and the control files."""
    if not all((cache / name).exists() for name in (UNET, CLIP_L, CLIP_G)):
        subprocess.run([comfyui_python(comfyui), str(REPO / "tests" / "host" / "make_models.py"), str(comfyui),
                        str(cache), "sdxl"], check=True, timeout=1800)
    for name, (maker, seed) in CONTROLS.items():
        path = cache / name
        if not path.exists():
            weights = maker(seed)
            tmp = path.with_suffix(".partial")
            save_file({k: v.to(torch.float16) if v.is_floating_point() and v.ndim else v
                       for k, v in weights.items()}, str(tmp))
            del weights
            tmp.replace(path)
    return {name: cache / name for name in (UNET, CLIP_L, CLIP_G, *CONTROLS)}

"""Names and deterministic inputs shared by the host tests and the demo (the names the workflows use)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.fixtures import random_controlnet_state_dict
from tests.host.server import REPO, comfyui_python

CACHE_VERSION = "v1"  # bump when the generated files change
CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"  # the names the workflows use
CONTROLNETS = {  # name -> (tests.fixtures spec, seed, stored dtype)
    "control_v11p_sd15_canny_fp16.safetensors": ("sd15", 7, torch.float16),
    "control_v11p_sd15_lineart_fp16.safetensors": ("sd15", 8, torch.float16),
    "control_v11p_sd15_openpose_fp16.safetensors": ("sd15", 13, torch.float16),
    "control_sd15_canny_fp8_e4m3fn.safetensors": ("sd15", 7, torch.float8_e4m3fn),
    "controlnet_sdxl_tiny_random.safetensors": ("tiny-sdxl", 9, torch.float16),
    # union / Control-LoRA / diff-ControlNet (tests/host/union_lora_files.py makers)
    "controlnet_union_sd15_random.safetensors": ("union-sd15", 10, torch.float16),
    "control_lora_rank16_sd15_random.safetensors": ("control-lora-sd15", 11, torch.float16),
    "diff_control_sd15_random_fp16.safetensors": ("diff-sd15", 12, torch.float16),
}
ALIASES = {  # name -> file of CONTROLNETS it links to: the same weights under a name the host's GAP rule matches
    "control_v11e_sd15_shuffle_fp16.safetensors": "control_v11p_sd15_canny_fp16.safetensors",
    "control_lora_rank16_sd15_random_shuffle.safetensors": "control_lora_rank16_sd15_random.safetensors",
    # a name the rule misses (test_gap: explicit "on"; keeps the plain name's merge count of test_union_lora at one)
    "control_lora_rank16_sd15_random_renamed.safetensors": "control_lora_rank16_sd15_random.safetensors",
}
HINT_IMAGE = "controlnet_core_example.png"
HINT_SIZE = 64  # 8x8 latents: SD1.5 at full width stays affordable on two CPU cores


def hint_image(size: int = HINT_SIZE, seed: int = 0) -> np.ndarray:
    """A deterministic RGB test picture: shapes with hard edges (canny-like content), uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(6):
        cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(size // 8, size // 3))]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(40, 255, 3)
    img[size // 4: size // 4 + 2, :] = 255
    return img


ONE_PIXEL_IMAGE = "one_pixel.png"
DIM_IMAGE = "controlnet_core_dim.png"  # low contrast: canny thresholds decide which edges survive
NAN_LATENT = "nan.latent"  # LoadLatent -> VAEDecode gives an IMAGE full of NaN
NOT_A_CONTROLNET = "not_a_controlnet.safetensors"  # valid safetensors, no ControlNet keys


def _cache_dir() -> Path:
    path = Path(os.environ.get("CONTROLNET_CORE_HOST_CACHE", REPO / ".host" / "models")) / CACHE_VERSION
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_model_files(comfyui: Path) -> dict[str, Path]:
    """{name the workflows use: cached file}: random SD1.5 checkpoint (written by the host's python, so its keys
    are the host's), random ControlNets with non-zero zero convs, and a safetensors file that is no ControlNet."""
    cache = _cache_dir()
    ckpt = cache / "sd15_random.safetensors"
    if not ckpt.exists():
        subprocess.run([comfyui_python(comfyui), str(REPO / "tests" / "host" / "make_models.py"), str(comfyui),
                        str(cache)], check=True, timeout=1800)
    files = {CHECKPOINT: ckpt}
    for name, (spec, seed, dtype) in CONTROLNETS.items():
        path = cache / name
        if not path.exists():
            from tests.host.union_lora_files import MAKERS

            weights = MAKERS[spec](seed) if spec in MAKERS else random_controlnet_state_dict(spec, seed=seed,
                                                                                        dtype=torch.float16)
            save_file({k: v.to(dtype) if v.is_floating_point() and v.ndim else v for k, v in weights.items()},
                      str(path))
        files[name] = path
    files.update({alias: files[target] for alias, target in ALIASES.items()})  # symlinks: no second file
    files[NOT_A_CONTROLNET] = cache / NOT_A_CONTROLNET
    save_file({"some.other.weight": torch.ones(4, 4)}, str(files[NOT_A_CONTROLNET]))
    return files


def write_inputs(folder: Path) -> dict[str, Path]:
    """The host's input files: hint pictures, a 1-pixel image, a latent full of NaN."""
    arrays = {HINT_IMAGE: hint_image(), "controlnet_core_example_b.png": hint_image(seed=1),
              DIM_IMAGE: hint_image() // 8, ONE_PIXEL_IMAGE: np.full((1, 1, 3), 255, np.uint8)}
    out = {}
    for name, array in arrays.items():
        Image.fromarray(array).save(folder / name)
        out[name] = folder / name
    save_file({"latent_tensor": torch.full((1, 4, 8, 8), float("nan"))}, str(folder / NAN_LATENT))
    out[NAN_LATENT] = folder / NAN_LATENT
    return out

"""Write a trained ControlNet: ldm layout .safetensors (what our loader and the host's native loader read) with the
training config in its metadata, or diffusers layout on request."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from ..formats import diffusers_config, from_ldm


def training_metadata(config, step: int, **extra: str) -> dict[str, str]:
    """safetensors metadata: strings only; the TrainConfig as JSON."""
    return {"format": "pt", "controlnet_core.train_config": json.dumps(config.to_dict()),
            "controlnet_core.steps": str(step), **{f"controlnet_core.{k}": str(v) for k, v in extra.items()}}


def save_trained(ldm_sd: Mapping[str, Tensor], out: Path | str, metadata: Mapping[str, str], *,
                 layout: str = "ldm", net_config=None) -> list[Path]:
    """ldm: one .safetensors at `out`; diffusers: `out/` with diffusion_pytorch_model.safetensors + config.json."""
    out = Path(out)
    tensors = {k: v.detach().contiguous() for k, v in from_ldm(dict(ldm_sd), layout).items()}
    if layout == "diffusers":
        if net_config is None:
            raise ValueError("diffusers layout needs net_config (the ControlNetConfig) for config.json")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(diffusers_config(net_config), indent=2) + "\n")
        weights = out / "diffusion_pytorch_model.safetensors"
        save_file(tensors, str(weights), metadata=dict(metadata))
        return [weights, out / "config.json"]
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the ldm layout is written as one file; give a path ending in .safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=dict(metadata))
    return [out]

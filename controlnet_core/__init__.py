"""comfyui-controlnet-core: ControlNet (Zhang & Agrawala, ICCV 2023) as a host-independent PyTorch library.

Public API (imported lazily so that `import controlnet_core` stays cheap and never imports a host):

    load_controlnet(path_or_state_dict) -> ControlNet
    ControlNet(config)(x, hint, timesteps, context, y=None) -> {"output": [...], "middle": [...]}
    create_controlnet_from_unet(unet_state_dict) -> ControlNet
    ControlledUNet                      reference U-Net that consumes residuals as the host does
    detect_format(state_dict) -> str    "ldm" | "ldm-prefixed" | "diffusers"
    Control, ResidualEngine             sum several controls into one residual set
    ControlWeights                      control modes, soft weights, schedules
    preprocess                          hint preprocessors, (B,H,W,C) in [0,1] -> same
"""
from importlib import import_module

from .errors import CheckpointError, ControlNetError, FamilyMismatchError, PreprocessError

_LAZY = {
    "ControlNet": "controlnet",
    "ControlNetConfig": "controlnet",
    "create_controlnet_from_unet": "controlnet",
    "ControlledUNet": "unet",
    "UNetConfig": "unet",
    "load_controlnet": "formats",
    "read_state_dict": "formats",
    "detect_format": "formats",
    "to_ldm": "formats",
    "from_ldm": "formats",
    "inspect_checkpoint": "formats",
    "convert_checkpoint": "formats",
    "Control": "engine",
    "ResidualEngine": "engine",
    "ControlWeights": "weights",
}

__all__ = sorted([*_LAZY, "preprocess", "ControlNetError", "CheckpointError", "FamilyMismatchError",
                  "PreprocessError"])


def __getattr__(name: str):
    if name == "preprocess":
        return import_module(".preprocess", __name__)
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'controlnet_core' has no attribute {name!r}")

"""The toy's tiny base: the production `ControlledUNet` at 16 px in pixel space, with a 2-token colour "text encoder".

Width 32 at 16/8/4 px, GroupNorm(8), one ResBlock per level, cross-attention (context 32) at 4 px and in the middle;
the text encoder is a learned embedding of the 8 colours + the empty prompt, trained with the base and then frozen.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..blocks import UNET_PREFIXES, strip_prefix
from ..controlnet import ControlNetConfig
from ..unet import ControlledUNet, UNetConfig
from .data import COLOURS

BASE_PATH = Path(__file__).with_name("base.safetensors")
SHAPES_BASE_PATH = Path(__file__).with_name("shapes_base.safetensors")  # toy/shapes.py, same architecture
CONTEXT_DIM = 32
TOY_UNET = UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 1, 1), num_res_blocks=1,
                      transformer_depth=(0, 0, 1), transformer_depth_middle=1, context_dim=CONTEXT_DIM,
                      num_heads=-1, num_head_channels=32, norm_groups=8)
TOY_HINT_WIDTHS = (16, 16)  # no stride-2 conv: the toy's hint is at the "latent" (pixel) size


def toy_controlnet_config(unet: UNetConfig = TOY_UNET) -> ControlNetConfig:
    """ControlNetConfig matching the toy base's encoder."""
    keys = ("in_channels", "model_channels", "channel_mult", "num_res_blocks", "transformer_depth",
            "transformer_depth_middle", "context_dim", "num_heads", "num_head_channels", "use_linear_in_transformer",
            "adm_in_channels", "norm_groups")
    return ControlNetConfig(hint_channels=3, hint_widths=TOY_HINT_WIDTHS, **{k: getattr(unet, k) for k in keys})


class ToyTextEncoder(nn.Module):
    """tokens (B, 2) [fill, background] (index len(COLOURS) = empty) -> context (B, 2, CONTEXT_DIM)."""

    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(len(COLOURS) + 1, CONTEXT_DIM)
        self.position = nn.Parameter(torch.zeros(2, CONTEXT_DIM))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.token_embedding(tokens) + self.position  # (B, 2, D)


@dataclass
class ToyBase:
    unet: ControlledUNet
    text: ToyTextEncoder


def build_base(seed: int = 0) -> ToyBase:
    torch.manual_seed(seed)
    return ToyBase(ControlledUNet(TOY_UNET), ToyTextEncoder())


def save_base(base: ToyBase, path: Path, metadata: dict[str, str]) -> None:
    """Full-checkpoint style keys: `model.diffusion_model.*` (U-Net) and `cond_stage_model.*` (text)."""
    tensors = {f"model.diffusion_model.{k}": v for k, v in base.unet.state_dict().items()}
    tensors.update({f"cond_stage_model.{k}": v for k, v in base.text.state_dict().items()})
    meta = {"unet_config": json.dumps(asdict(TOY_UNET)), **metadata}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def load_base(path: Path | str = BASE_PATH) -> ToyBase:
    """The committed toy base, frozen, in eval mode (strict loading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no toy base; make it with "
                                "`python -m controlnet_core.toy.base --out controlnet_core/toy/base.safetensors`")
    sd = load_file(str(path))
    base = ToyBase(ControlledUNet(TOY_UNET), ToyTextEncoder())
    base.unet.load_state_dict(strip_prefix({k: v for k, v in sd.items() if k.startswith(UNET_PREFIXES[0])},
                                           UNET_PREFIXES), strict=True)
    base.text.load_state_dict({k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith("cond_stage_model.")},
                              strict=True)
    for m in (base.unet, base.text):
        m.requires_grad_(False).eval()
    return base

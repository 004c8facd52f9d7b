"""ControlNet for the ldm Stable Diffusion U-Nets: SD1.x, SD2.x, SDXL (full, mid, small).

Follows the paper (Zhang & Agrawala, ICCV 2023, §3.2-3.3: trainable copy + zero convolutions) as implemented in
`lllyasviel/ControlNet cldm/cldm.py` (hint encoder, residual order) and consumed by ComfyUI (`comfy/cldm/cldm.py`).
Module names equal the unprefixed ldm checkpoint keys, so v1.1 files load with `load_state_dict(strict=True)`.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from .blocks import (
    UNET_PREFIXES,
    SDXL_ADM,
    encoder_fields,
    make_input_blocks,
    make_label_emb,
    make_middle_block,
    make_time_embed,
    run_block,
    skip_channels,
    strip_prefix,
    timestep_embedding,
    zero_module,
)
from .errors import CheckpointError, ControlNetError

log = logging.getLogger(__name__)

HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)  # input_hint_block.0..12 output channels (cldm.py)
HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2)  # three stride-2 convs: hint is 8x the latent
CONTROLNET_MARKERS = ("input_blocks.0.0.weight", "zero_convs.0.0.weight", "input_hint_block.0.weight",
                      "middle_block_out.0.weight")
FAMILY_CONTEXT = {768: "sd1", 1024: "sd2"}


@dataclass(frozen=True)
class ControlNetConfig:
    """Architecture of an ldm ControlNet; defaults are SD1.5 (`models/cldm_v15.yaml`)."""

    in_channels: int = 4
    model_channels: int = 320
    hint_channels: int = 3
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)  # per level; 0 = no transformer at that level
    transformer_depth_middle: int = 1  # 0 = transformer without blocks; -1 = no transformer
    context_dim: int = 768
    num_heads: int = 8
    num_head_channels: int = -1  # when != -1 it wins over num_heads (ldm rule)
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None  # 2816 for SDXL
    hint_widths: tuple[int, ...] = HINT_WIDTHS  # hint-encoder conv widths; a width change is a stride-2 conv
    norm_groups: int = 32  # GroupNorm groups; every SD model uses 32 (not derivable from weights)

    def __post_init__(self) -> None:
        if not self.hint_widths:
            raise ControlNetError("ControlNetConfig: hint_widths needs at least one conv width, e.g. (16, 16, 32).")
        if len(self.transformer_depth) != len(self.channel_mult):
            raise ControlNetError(f"ControlNetConfig: transformer_depth {self.transformer_depth} needs one entry per "
                                  f"level of channel_mult {self.channel_mult}.")
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise ControlNetError("ControlNetConfig: set num_heads >= 1 or num_head_channels (e.g. 64).")

    @property
    def family(self) -> str:
        """Family from weights only: sd1 (context 768), sd2 (1024), sdxl (2048 + label_emb 2816), else custom."""
        if self.adm_in_channels is None:
            return FAMILY_CONTEXT.get(self.context_dim, "custom")
        if self.adm_in_channels == SDXL_ADM and self.context_dim == 2048:
            return "sdxl"
        return "custom"

    @property
    def variant(self) -> str:
        """Variant: small (SDXL, no transformer blocks), mid (SDXL, at most 1 per block), else full."""
        if self.family != "sdxl":
            return "full"
        deepest = max(*self.transformer_depth, self.transformer_depth_middle)
        return "small" if deepest <= 0 else "mid" if deepest <= 1 else "full"

    @property
    def residual_channels(self) -> tuple[int, ...]:
        """Width of each residual in host order: `output` shallow -> deep, then `middle`."""
        return (*skip_channels(self), self.model_channels * self.channel_mult[-1])

    @classmethod
    def from_state_dict(cls, ldm_sd: Mapping[str, Tensor], *, source: str = "state dict") -> ControlNetConfig:
        """Derive the config from unprefixed ldm ControlNet keys and shapes (never from the file name)."""
        missing = [k for k in CONTROLNET_MARKERS if k not in ldm_sd]
        if missing:
            sample = sorted(ldm_sd)[:3]
            raise CheckpointError(f"{source}: not an unprefixed ldm ControlNet state dict: missing {missing} (first "
                                  f"keys: {sample}). Convert prefixed or diffusers layouts with "
                                  "controlnet_core.to_ldm(state_dict) first.")
        enc = encoder_fields(ldm_sd, source)
        return cls(hint_channels=int(ldm_sd["input_hint_block.0.weight"].shape[1]),
                   hint_widths=hint_widths_from_keys(ldm_sd),
                   **{f.name: getattr(enc, f.name) for f in fields(enc)})


def hint_widths_from_keys(ldm_sd: Mapping[str, Tensor]) -> tuple[int, ...]:
    """Output widths of the hint encoder's convs before its last (zero) conv: `input_hint_block.{0,2,..}.weight`;
    the cldm.py widths when too few are there (the strict key check then names the missing ones)."""
    idx = sorted(int(k.split(".")[1]) for k in ldm_sd if k.startswith("input_hint_block.") and k.endswith(".weight"))
    widths = tuple(int(ldm_sd[f"input_hint_block.{i}.weight"].shape[0]) for i in idx[:-1])
    return widths or HINT_WIDTHS


def hint_strides(widths: tuple[int, ...]) -> tuple[int, ...]:
    """Stride 2 where the width changes (cldm.py: 16,16,32,32,96,96,256 -> 1,1,2,1,2,1,2), else 1."""
    return tuple(1 if i == 0 or w == widths[i - 1] else 2 for i, w in enumerate(widths))


def make_hint_block(hint_channels: int, model_channels: int,
                    widths: tuple[int, ...] = HINT_WIDTHS) -> nn.Sequential:
    """`input_hint_block`: SiLU-activated 3x3 convs (stride 2 where the width changes), then a zero 3x3 conv to the
    model width; the default is cldm.py's 7 convs, three of stride 2 (hint 8x the latent)."""
    layers: list[nn.Module] = []
    cin = hint_channels
    for cout, stride in zip(widths, hint_strides(widths)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, stride=stride), nn.SiLU()]
        cin = cout
    layers.append(zero_module(nn.Conv2d(cin, model_channels, 3, padding=1)))
    return nn.Sequential(*layers)


def make_zero_conv(channels: int) -> nn.Sequential:
    """A 1x1 convolution initialised at zero, wrapped so its key is `<name>.0.weight` (paper §3.1)."""
    return nn.Sequential(zero_module(nn.Conv2d(channels, channels, 1)))


class ControlNet(nn.Module):
    """Trainable encoder copy + hint encoder + zero convs; returns the host's residual dict (cldm.py `ControlNet`)."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = config
        self.time_embed = make_time_embed(config)
        self.label_emb = make_label_emb(config)
        self.input_hint_block = make_hint_block(config.hint_channels, config.model_channels, config.hint_widths)
        self.input_blocks = make_input_blocks(config)
        self.zero_convs = nn.ModuleList(make_zero_conv(c) for c in skip_channels(config))
        self.middle_block = make_middle_block(config)
        self.middle_block_out = make_zero_conv(config.residual_channels[-1])
        self.gradient_checkpointing = False  # training only: recompute block activations in the backward pass
        self.compute_dtype: torch.dtype | None = None  # set where weights are stored narrower and cast on read

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the net computes in: its weights' unless they are stored narrower (fp8 cast on read)."""
        return self.compute_dtype or self.input_blocks[0][0].weight.dtype

    def encode_hint(self, hint: Tensor) -> Tensor:
        """Hint image (B, Ch, 8h, 8w) in [0, 1] -> guided hint (B, model_channels, h, w); independent of x, t, text."""
        if hint.ndim != 4 or hint.shape[1] != self.config.hint_channels:
            raise ControlNetError(f"hint has shape {tuple(hint.shape)}; this ControlNet expects (B, "
                                  f"{self.config.hint_channels}, 8h, 8w) in [0, 1]. Convert (B, H, W, C) images with "
                                  "image.movedim(-1, 1).")
        return self.input_hint_block(hint.to(self.dtype))  # (B, mc, h, w)

    def forward(self, x: Tensor, hint: Tensor | None, timesteps: Tensor, context: Tensor, y: Tensor | None = None,
                *, guided_hint: Tensor | None = None, extra_emb: Tensor | None = None) -> dict[str, list[Tensor]]:
        """Residuals {"output": one per input block, shallow->deep, "middle": [one]} (cldm.py `ControlNet.forward`).
        `extra_emb` (1|B, 4mc) is added to the time embedding before the label embedding (union type embedding)."""
        if guided_hint is None:
            if hint is None:
                raise ControlNetError("ControlNet.forward got neither hint nor guided_hint; pass the hint image "
                                      "(B, 3, 8h, 8w) or encode_hint(hint).")
            guided_hint = self.encode_hint(hint)  # (B|1, mc, h, w)
        if guided_hint.shape[0] not in (1, x.shape[0]) or guided_hint.shape[2:] != x.shape[2:]:
            raise ControlNetError(f"guided hint {tuple(guided_hint.shape)} does not fit latent {tuple(x.shape)}: the "
                                  "hint batch must be 1 or the latent batch and the hint 8x the latent size; resize "
                                  "the hint image to 8x the latent.")
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))  # (B, 4mc)
        if extra_emb is not None:
            emb = emb + extra_emb.to(emb.dtype)  # (B, 4mc)
        if self.label_emb is not None:
            if y is None:
                raise ControlNetError(f"this {self.config.family} ControlNet has label_emb (adm "
                                      f"{self.config.adm_in_channels}) and needs y (B, {self.config.adm_in_channels}); "
                                      "pass the U-Net's y.")
            emb = emb + self.label_emb(y.to(emb.dtype))  # (B, 4mc)
        outputs = []
        h = x
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = run_block(block, self.gradient_checkpointing, h, emb, context)  # (B, C_i, H_i, W_i)
            if i == 0:
                h += guided_hint.to(h.dtype)  # (B, mc, h, w): added once, to conv_in's output (in place: no copy)
            outputs.append(zero_conv(h))  # (B, C_i, H_i, W_i)
        h = run_block(self.middle_block, self.gradient_checkpointing, h, emb, context)  # (B, C_mid, H_mid, W_mid)
        return {"output": outputs, "middle": [self.middle_block_out(h)]}


def create_controlnet_from_unet(unet_state_dict: Mapping[str, Tensor], *, hint_channels: int = 3,
                                dtype: torch.dtype | None = None, hint_widths: tuple[int, ...] = HINT_WIDTHS,
                                norm_groups: int = 32) -> ControlNet:
    """Paper §3.2 trainable copy (`tool_add_control.py`): encoder weights copied, zero convs and hint conv 14 zero."""
    unet_sd = strip_prefix(unet_state_dict, UNET_PREFIXES)
    enc = encoder_fields(unet_sd, "U-Net state dict")
    config = ControlNetConfig(hint_channels=hint_channels, hint_widths=hint_widths, norm_groups=norm_groups,
                              **{f.name: getattr(enc, f.name) for f in fields(enc)})
    net = ControlNet(config)
    own = net.state_dict()
    copied = {k for k in own if k.split(".", 1)[0] in ("time_embed", "label_emb", "input_blocks", "middle_block")}
    missing = sorted(k for k in copied if k not in unet_sd)
    if missing:
        raise CheckpointError(f"U-Net state dict lacks {len(missing)} encoder keys, e.g. {missing[:5]}; pass an ldm "
                              "U-Net (keys 'input_blocks...' or 'model.diffusion_model.input_blocks...').")
    net.load_state_dict({**own, **{k: unet_sd[k] for k in copied}}, strict=True)
    target = dtype or unet_sd["input_blocks.0.0.weight"].dtype
    log.debug("created a %s ControlNet from a U-Net (%d tensors copied)", config.family, len(copied))
    return net.to(target)

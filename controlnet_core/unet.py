"""Reference controlled U-Net: the ldm Stable Diffusion U-Net consuming ControlNet residuals as ComfyUI does.

Follows `ldm/modules/diffusionmodules/openaimodel.py` `UNetModel` (names, block layout) and ComfyUI's
`apply_control` (comfy/ldm/modules/diffusionmodules/openaimodel.py): 'input' added after each input block,
'middle' after the middle block, 'output' added to the skip before the concatenation, each popped from the end.
The encoder half is built by the same `blocks.make_input_blocks` / `make_middle_block` as the ControlNet.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from .blocks import (
    UNET_PREFIXES,
    GroupNorm32,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    encoder_fields,
    make_input_blocks,
    make_label_emb,
    make_middle_block,
    make_time_embed,
    make_transformer,
    run_block,
    skip_channels,
    strip_prefix,
    timestep_embedding,
)
from .errors import CheckpointError, ControlNetError

Control = Mapping[str, Sequence[Tensor | None]]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of an ldm SD U-Net; defaults are SD1.5 (`v1-inference.yaml`). Output levels mirror the input."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    transformer_depth_middle: int = 1
    context_dim: int = 768
    num_heads: int = 8
    num_head_channels: int = -1
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None
    norm_groups: int = 32  # GroupNorm groups; every SD model uses 32

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], *, source: str = "U-Net state dict") -> UNetConfig:
        """Derive the config from ldm U-Net keys/shapes; accepts `model.diffusion_model.`-prefixed keys."""
        sd = strip_prefix(sd, UNET_PREFIXES)
        out = sd.get("out.2.weight")
        if out is None:
            raise CheckpointError(f"{source}: no 'out.2.weight', so this is not an ldm U-Net; pass the U-Net's "
                                  "keys ('input_blocks...', 'output_blocks...', 'out...').")
        enc = encoder_fields(sd, source)
        return cls(out_channels=int(out.shape[0]), **{f.name: getattr(enc, f.name) for f in fields(enc)})


def make_output_blocks(cfg: UNetConfig) -> nn.ModuleList:
    """`output_blocks`: per level, deep first, num_res_blocks+1 x (ResBlock on [h, skip] [+ transformer]), Upsample."""
    mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
    skips = list(skip_channels(cfg))
    ch = mc * cfg.channel_mult[-1]
    blocks = []
    for level in reversed(range(len(cfg.channel_mult))):
        width = mc * cfg.channel_mult[level]
        for i in range(cfg.num_res_blocks + 1):
            layers: list[nn.Module] = [ResBlock(ch + skips.pop(), emb_dim, width, groups=cfg.norm_groups)]
            ch = width
            if cfg.transformer_depth[level] > 0:
                layers.append(make_transformer(ch, cfg.transformer_depth[level], cfg))
            if level and i == cfg.num_res_blocks:
                layers.append(Upsample(ch))
            blocks.append(TimestepEmbedSequential(*layers))
    return nn.ModuleList(blocks)


def _add(h: Tensor, residuals: list[Tensor | None]) -> Tensor:
    """Pop the last residual and add it out of place (the host adds in place; autograd needs the original)."""
    if not residuals:
        return h
    r = residuals.pop()
    return h if r is None else h + r.to(h.dtype)


class ControlledUNet(nn.Module):
    """SD U-Net with ldm names (time_embed, label_emb, input_blocks, middle_block, output_blocks, out)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.time_embed = make_time_embed(config)
        self.label_emb = make_label_emb(config)
        self.input_blocks = make_input_blocks(config)
        self.middle_block = make_middle_block(config)
        self.output_blocks = make_output_blocks(config)
        self.out = nn.Sequential(GroupNorm32(config.norm_groups, config.model_channels), nn.SiLU(),
                                 nn.Conv2d(config.model_channels, config.out_channels, 3, padding=1))
        self.gradient_checkpointing = False  # training only: recompute block activations in the backward pass

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None = None,
                control: Control | None = None) -> Tensor:
        """Noise prediction (B, out, h, w); `control` lists are copied, never mutated (openaimodel.py forward)."""
        ctrl = {k: list(control.get(k, ())) for k in ("input", "middle", "output")} if control else None
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))  # (B, 4mc)
        if self.label_emb is not None:
            if y is None:
                raise ControlNetError(f"this U-Net has label_emb (adm {self.config.adm_in_channels}) and needs y "
                                      f"(B, {self.config.adm_in_channels}).")
            emb = emb + self.label_emb(y.to(emb.dtype))  # (B, 4mc)
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)  # (B, C_i, H_i, W_i)
            if ctrl:
                h = _add(h, ctrl["input"])
            hs.append(h)
        h = self.middle_block(h, emb, context)  # (B, C_mid, H_mid, W_mid)
        if ctrl:
            h = _add(h, ctrl["middle"])
        for block in self.output_blocks:
            skip = hs.pop()
            if ctrl:
                skip = _add(skip, ctrl["output"])  # residuals pair with skips deepest first
            h = torch.cat([h, skip], dim=1)  # (B, C + C_skip, H, W)
            size = hs[-1].shape[2:] if hs else None
            h = run_block(block, self.gradient_checkpointing, h, emb, context, size)  # (B, C', H', W')
        return self.out(h)  # (B, out, h, w)

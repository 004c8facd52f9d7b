"""Synthetic ControlNet checkpoints: real key names and shapes, random values.

The key/shape generator follows `shared/research/reference_architecture.md` §5 (verified there against the
lllyasviel, diffusers and ComfyUI state dicts), generalised to any channel width so the fast suite can use tiny
models. Every generated zero convolution is random and non-zero: with zeros every comparison would pass vacuously.
The matching SD U-Net (`unet_ldm_shapes`, `random_unet_state_dict`) and an independent ldm -> diffusers
UNet2DConditionModel key map (`unet_ldm_to_diffusers_key`, `diffusers_unet_config`) serve the U-Net parity tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

HINT_CHANNELS = ((16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256))  # input_hint_block.2..12 (in, out)


@dataclass(frozen=True)
class Spec:
    """Shape of an ldm ControlNet; defaults are SD1.5."""

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    depth: tuple[int, ...] = (1, 1, 1, 0)  # transformer blocks per level (0: no attention)
    mid_depth: int = 1
    context_dim: int = 768
    linear: bool = False  # use_linear_in_transformer: 2-D proj_in / proj_out
    adm: int | None = None  # SDXL label_emb input width (2816)
    in_channels: int = 4
    hint_channels: int = 3
    num_res_blocks: int = 2

    @property
    def time_dim(self) -> int:
        return 4 * self.model_channels


SPECS = {
    "sd15": Spec(),
    "sd21": Spec(context_dim=1024, linear=True),
    "sdxl": Spec(channel_mult=(1, 2, 4), depth=(0, 2, 10), mid_depth=10, context_dim=2048, linear=True, adm=2816),
    # Tiny models with the real conditioning widths, for the fast suite.
    "tiny-sd15": Spec(model_channels=32, channel_mult=(1, 2), depth=(1, 1), context_dim=768),
    "tiny-sd21": Spec(model_channels=64, channel_mult=(1, 2), depth=(1, 1), context_dim=1024, linear=True),
    "tiny-sdxl": Spec(model_channels=64, channel_mult=(1, 2, 2), depth=(0, 1, 2), mid_depth=2, context_dim=2048,
                      linear=True, adm=2816),
}


def _add(shapes: dict, key: str, *shape: int) -> None:
    shapes[key] = tuple(shape)


def _res_shapes(shapes: dict, spec: Spec, p: str, cin: int, cout: int) -> None:
    """ResBlock keys (ldm names)."""
    td = spec.time_dim
    _add(shapes, p + "in_layers.0.weight", cin), _add(shapes, p + "in_layers.0.bias", cin)
    _add(shapes, p + "in_layers.2.weight", cout, cin, 3, 3), _add(shapes, p + "in_layers.2.bias", cout)
    _add(shapes, p + "emb_layers.1.weight", cout, td), _add(shapes, p + "emb_layers.1.bias", cout)
    _add(shapes, p + "out_layers.0.weight", cout), _add(shapes, p + "out_layers.0.bias", cout)
    _add(shapes, p + "out_layers.3.weight", cout, cout, 3, 3), _add(shapes, p + "out_layers.3.bias", cout)
    if cin != cout:
        _add(shapes, p + "skip_connection.weight", cout, cin, 1, 1), _add(shapes, p + "skip_connection.bias", cout)


def _attn_shapes(shapes: dict, spec: Spec, p: str, c: int, n: int) -> None:
    """SpatialTransformer keys with n transformer blocks (ldm names)."""
    proj = (c, c) if spec.linear else (c, c, 1, 1)
    _add(shapes, p + "norm.weight", c), _add(shapes, p + "norm.bias", c)
    _add(shapes, p + "proj_in.weight", *proj), _add(shapes, p + "proj_in.bias", c)
    for d in range(n):
        q = f"{p}transformer_blocks.{d}."
        for a, kdim in (("attn1", c), ("attn2", spec.context_dim)):
            _add(shapes, q + a + ".to_q.weight", c, c)
            _add(shapes, q + a + ".to_k.weight", c, kdim), _add(shapes, q + a + ".to_v.weight", c, kdim)
            _add(shapes, q + a + ".to_out.0.weight", c, c), _add(shapes, q + a + ".to_out.0.bias", c)
        _add(shapes, q + "ff.net.0.proj.weight", 8 * c, c), _add(shapes, q + "ff.net.0.proj.bias", 8 * c)
        _add(shapes, q + "ff.net.2.weight", c, 4 * c), _add(shapes, q + "ff.net.2.bias", c)
        for j in (1, 2, 3):
            _add(shapes, q + f"norm{j}.weight", c), _add(shapes, q + f"norm{j}.bias", c)
    _add(shapes, p + "proj_out.weight", *proj), _add(shapes, p + "proj_out.bias", c)


def _encoder_shapes(shapes: dict, spec: Spec) -> list[int]:
    """time_embed, label_emb, input_blocks keys; returns the skip widths (one per input block)."""
    td, mc = spec.time_dim, spec.model_channels
    _add(shapes, "time_embed.0.weight", td, mc), _add(shapes, "time_embed.0.bias", td)
    _add(shapes, "time_embed.2.weight", td, td), _add(shapes, "time_embed.2.bias", td)
    if spec.adm:
        _add(shapes, "label_emb.0.0.weight", td, spec.adm), _add(shapes, "label_emb.0.0.bias", td)
        _add(shapes, "label_emb.0.2.weight", td, td), _add(shapes, "label_emb.0.2.bias", td)
    _add(shapes, "input_blocks.0.0.weight", mc, spec.in_channels, 3, 3), _add(shapes, "input_blocks.0.0.bias", mc)
    chans, ch, i = [mc], mc, 1
    for level, mult in enumerate(spec.channel_mult):
        for _ in range(spec.num_res_blocks):
            _res_shapes(shapes, spec, f"input_blocks.{i}.0.", ch, mc * mult)
            ch = mc * mult
            if spec.depth[level]:
                _attn_shapes(shapes, spec, f"input_blocks.{i}.1.", ch, spec.depth[level])
            chans.append(ch)
            i += 1
        if level != len(spec.channel_mult) - 1:
            _add(shapes, f"input_blocks.{i}.0.op.weight", ch, ch, 3, 3), _add(shapes, f"input_blocks.{i}.0.op.bias", ch)
            chans.append(ch)
            i += 1
    return chans


def _middle_shapes(shapes: dict, spec: Spec, ch: int) -> None:
    _res_shapes(shapes, spec, "middle_block.0.", ch, ch)
    _attn_shapes(shapes, spec, "middle_block.1.", ch, spec.mid_depth)
    _res_shapes(shapes, spec, "middle_block.2.", ch, ch)


def controlnet_ldm_shapes(spec: Spec) -> dict[str, tuple[int, ...]]:
    """{ldm key: shape} of a ControlNet state dict (unprefixed v1.1 layout)."""
    shapes: dict[str, tuple[int, ...]] = {}
    chans = _encoder_shapes(shapes, spec)
    for j, c in enumerate(chans):
        _add(shapes, f"zero_convs.{j}.0.weight", c, c, 1, 1), _add(shapes, f"zero_convs.{j}.0.bias", c)
    hint = ((spec.hint_channels, 16), *HINT_CHANNELS, (256, spec.model_channels))
    for j, (cin, cout) in enumerate(hint):
        _add(shapes, f"input_hint_block.{2 * j}.weight", cout, cin, 3, 3)
        _add(shapes, f"input_hint_block.{2 * j}.bias", cout)
    _middle_shapes(shapes, spec, chans[-1])
    _add(shapes, "middle_block_out.0.weight", chans[-1], chans[-1], 1, 1)
    _add(shapes, "middle_block_out.0.bias", chans[-1])
    return shapes


def unet_ldm_shapes(spec: Spec, out_channels: int = 4) -> dict[str, tuple[int, ...]]:
    """{ldm key: shape} of the matching SD U-Net (`model.diffusion_model.*` without the prefix)."""
    shapes: dict[str, tuple[int, ...]] = {}
    skips = _encoder_shapes(shapes, spec)
    ch, mc, n = skips[-1], spec.model_channels, 0
    _middle_shapes(shapes, spec, ch)
    for level in reversed(range(len(spec.channel_mult))):
        width = mc * spec.channel_mult[level]
        for i in range(spec.num_res_blocks + 1):
            _res_shapes(shapes, spec, f"output_blocks.{n}.0.", ch + skips.pop(), width)
            ch, j = width, 1
            if spec.depth[level]:
                _attn_shapes(shapes, spec, f"output_blocks.{n}.1.", ch, spec.depth[level])
                j = 2
            if level and i == spec.num_res_blocks:
                _add(shapes, f"output_blocks.{n}.{j}.conv.weight", ch, ch, 3, 3)
                _add(shapes, f"output_blocks.{n}.{j}.conv.bias", ch)
            n += 1
    _add(shapes, "out.0.weight", mc), _add(shapes, "out.0.bias", mc)
    _add(shapes, "out.2.weight", out_channels, mc, 3, 3), _add(shapes, "out.2.bias", out_channels)
    return shapes


_RES_TO_DIFFUSERS = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                     "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def ldm_to_diffusers_key(key: str, num_res_blocks: int = 2) -> str:
    """Independent test-side ldm -> diffusers key map (reference_architecture.md §2c), to cross-check formats.py."""
    p = key.split(".")
    per_level = num_res_blocks + 1
    if p[0] == "time_embed":
        return f"time_embedding.linear_{1 if p[1] == '0' else 2}.{p[2]}"
    if p[0] == "label_emb":
        return f"add_embedding.linear_{1 if p[2] == '0' else 2}.{p[3]}"
    if p[0] == "zero_convs":
        return f"controlnet_down_blocks.{p[1]}.{p[3]}"
    if p[0] == "middle_block_out":
        return f"controlnet_mid_block.{p[2]}"
    if p[0] == "input_hint_block":
        j = int(p[1])
        name = "conv_in" if j == 0 else "conv_out" if j == 14 else f"blocks.{j // 2 - 1}"
        return f"controlnet_cond_embedding.{name}.{p[2]}"
    if p[0] == "input_blocks":
        n = int(p[1])
        if n == 0:
            return f"conv_in.{p[3]}"
        block, layer = (n - 1) // per_level, (n - 1) % per_level
        if p[3] == "op":
            return f"down_blocks.{block}.downsamplers.0.conv.{p[4]}"
        if p[2] == "1":
            return f"down_blocks.{block}.attentions.{layer}." + ".".join(p[3:])
        return f"down_blocks.{block}.resnets.{layer}.{_RES_TO_DIFFUSERS['.'.join(p[3:-1])]}.{p[-1]}"
    if p[0] == "middle_block":
        if p[1] == "1":
            return "mid_block.attentions.0." + ".".join(p[2:])
        return f"mid_block.resnets.{0 if p[1] == '0' else 1}.{_RES_TO_DIFFUSERS['.'.join(p[2:-1])]}.{p[-1]}"
    raise KeyError(key)


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0, dtype: torch.dtype = torch.float32
                      ) -> dict[str, torch.Tensor]:
    """Random weights for a {key: shape} map: norm scales near 1, biases small, matrices ~ 1/sqrt(fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if len(shape) == 1 and ("norm" in key or "in_layers.0" in key or "out_layers.0" in key
                                or key == "out.0.weight") and key.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)  # GroupNorm / LayerNorm scale
        elif len(shape) == 1:
            value = 0.02 * torch.randn(shape, generator=gen)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            value = torch.randn(shape, generator=gen) / fan_in ** 0.5
        out[key] = value.to(dtype)
    return out


def random_controlnet_state_dict(spec: Spec | str, seed: int = 0, dtype: torch.dtype = torch.float32
                                 ) -> dict[str, torch.Tensor]:
    """Random ldm-layout ControlNet weights; norms near 1, zero convs and hint conv 14 random and non-zero."""
    spec = SPECS[spec] if isinstance(spec, str) else spec
    return random_state_dict(controlnet_ldm_shapes(spec), seed, dtype)


def random_unet_state_dict(spec: Spec | str, seed: int = 0, dtype: torch.dtype = torch.float32
                           ) -> dict[str, torch.Tensor]:
    """Random ldm-layout SD U-Net weights (unprefixed)."""
    spec = SPECS[spec] if isinstance(spec, str) else spec
    return random_state_dict(unet_ldm_shapes(spec), seed, dtype)


def to_diffusers_layout(ldm_sd: dict[str, torch.Tensor], num_res_blocks: int = 2) -> dict[str, torch.Tensor]:
    """The same weights under diffusers ControlNetModel names."""
    return {ldm_to_diffusers_key(k, num_res_blocks): v for k, v in ldm_sd.items()}


def diffusers_controlnet_config(spec: Spec | str) -> dict:
    """diffusers ControlNetModel config with the same architecture (the numerical oracle)."""
    spec = SPECS[spec] if isinstance(spec, str) else spec
    mc = spec.model_channels
    channels = [mc * m for m in spec.channel_mult]
    sd1_heads = spec.context_dim == 768  # SD1.x: 8 heads everywhere; otherwise 64-dim heads
    heads = [8] * len(channels) if sd1_heads else [max(1, c // 64) for c in channels]
    config = dict(
        in_channels=spec.in_channels,
        conditioning_channels=spec.hint_channels,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in spec.depth],
        only_cross_attention=False,
        block_out_channels=channels,
        layers_per_block=spec.num_res_blocks,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=spec.context_dim,
        transformer_layers_per_block=[max(d, 1) for d in spec.depth[:-1]] + [spec.mid_depth],
        attention_head_dim=heads,
        use_linear_projection=spec.linear,
        conditioning_embedding_out_channels=[16, 32, 96, 256],
    )
    if spec.adm:
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=spec.adm)
    return config


def _diffusers_heads(spec: Spec) -> list[int]:
    """Head count per level as diffusers spells it (`attention_head_dim`): 8 for SD1.x, else width // 64."""
    channels = [spec.model_channels * m for m in spec.channel_mult]
    return [8] * len(channels) if spec.context_dim == 768 else [max(1, c // 64) for c in channels]


def unet_ldm_to_diffusers_key(key: str, spec: Spec | str) -> str:
    """Independent ldm -> diffusers UNet2DConditionModel key map (output_blocks -> up_blocks, out -> conv_*_out)."""
    spec = SPECS[spec] if isinstance(spec, str) else spec
    p = key.split(".")
    if p[0] == "out":
        return f"{'conv_norm_out' if p[1] == '0' else 'conv_out'}.{p[2]}"
    if p[0] != "output_blocks":
        return ldm_to_diffusers_key(key, spec.num_res_blocks)
    block, layer = divmod(int(p[1]), spec.num_res_blocks + 1)
    if p[2] == "0":
        return f"up_blocks.{block}.resnets.{layer}.{_RES_TO_DIFFUSERS['.'.join(p[3:-1])]}.{p[-1]}"
    if p[3] == "conv":  # Upsample: `.1.conv` without attention at that level, `.2.conv` with it
        return f"up_blocks.{block}.upsamplers.0.conv.{p[-1]}"
    return f"up_blocks.{block}.attentions.{layer}." + ".".join(p[3:])


def unet_to_diffusers_layout(ldm_sd: dict[str, torch.Tensor], spec: Spec | str) -> dict[str, torch.Tensor]:
    """The same U-Net weights under diffusers UNet2DConditionModel names."""
    return {unet_ldm_to_diffusers_key(k, spec): v for k, v in ldm_sd.items()}


def diffusers_unet_config(spec: Spec | str) -> dict:
    """diffusers UNet2DConditionModel config with the same architecture (the oracle for the controlled U-Net)."""
    spec = SPECS[spec] if isinstance(spec, str) else spec
    config = {k: v for k, v in diffusers_controlnet_config(spec).items()
              if k not in ("conditioning_channels", "conditioning_embedding_out_channels", "only_cross_attention")}
    config.update(
        out_channels=4,
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(spec.depth)],
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=_diffusers_heads(spec),
    )
    return config

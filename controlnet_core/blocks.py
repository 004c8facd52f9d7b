"""ldm-compatible building blocks shared by the ControlNet and the reference U-Net.

Module and parameter names follow the ldm checkpoints (`ldm/modules/diffusionmodules/openaimodel.py`,
`ldm/modules/attention.py`), so a state dict loads with `load_state_dict(strict=True)` and no key map.
Numerics follow the reference: GroupNorm in float32, cos-first timestep embedding, fp32 softmax.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from .errors import CheckpointError

# ---------------------------------------------------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding, cos first (openaimodel.py `timestep_embedding`; diffusers flip_sin_to_cos=True)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (openaimodel.py `GroupNorm32`); exact no-op cast in fp32."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def normalization(channels: int, eps: float = 1e-5, groups: int = 32) -> GroupNorm32:
    """32-group norm used by every ResBlock (eps 1e-5) and SpatialTransformer (eps 1e-6); `groups` for tiny nets."""
    return GroupNorm32(groups, channels, eps=eps)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter to zero in place and return the module (paper §3.1, zero convolution)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


class TimestepBlock(nn.Module):
    """A block whose forward takes the timestep embedding."""


class ResBlock(TimestepBlock):
    """ldm ResBlock without scale-shift norm or up/down sampling (openaimodel.py `ResBlock`, SD configuration)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 groups: int = 32):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(normalization(channels, groups=groups), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels, groups=groups), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # In-place adds land on fresh conv outputs, which autograd does not keep: no extra activation copies.
        h = self.in_layers(x)  # (B, Cout, H, W)
        h += self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # (B, Cout, H, W)
        h = self.out_layers(h)  # (B, Cout, H, W)
        h += self.skip_connection(x)  # (B, Cout, H, W)
        return h


class CrossAttention(nn.Module):
    """Multi-head attention with bias-free q/k/v (attention.py `CrossAttention`), computed by SDPA.

    SDPA's kernels keep the softmax and its accumulators in float32 for half inputs, which is what the reference's
    `ATTN_PRECISION="fp32"` path does; in float32 the result equals the explicit einsum/softmax to rounding.
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)  # (B, h, N, d)
        k = self.to_k(context).view(context.shape[0], context.shape[1], self.heads, -1).transpose(1, 2)  # (B, h, T, d)
        v = self.to_v(context).view(context.shape[0], context.shape[1], self.heads, -1).transpose(1, 2)  # (B, h, T, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(b, n, -1)  # (B, N, h*d)
        return self.to_out(out)  # (B, N, C)


class GEGLU(nn.Module):
    """Gated GELU projection, value half first (attention.py `GEGLU`)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (B, N, 4C) each
        return value * F.gelu(gate)  # (B, N, 4C)


class FeedForward(nn.Module):
    """GEGLU feed-forward with 4x inner width; names `net.0.proj`, `net.2` (attention.py `FeedForward`)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, N, C)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, GEGLU feed-forward, each pre-norm and residual (attention.py)."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        x = self.attn1(self.norm1(x)) + x  # (B, N, C)
        x = self.attn2(self.norm2(x), context) + x  # (B, N, C)
        return self.ff(self.norm3(x)) + x  # (B, N, C)


class SpatialTransformer(nn.Module):
    """Image-to-token transformer with conv1x1 or Linear projections (attention.py `SpatialTransformer`)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int | None,
                 use_linear: bool, groups: int = 32):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = normalization(channels, eps=1e-6, groups=groups)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)  # (B, C, H, W)
        if not self.use_linear:
            x = self.proj_in(x)  # (B, I, H, W)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)  # (B, HW, C|I)
        if self.use_linear:
            x = self.proj_in(x)  # (B, HW, I)
        for block in self.transformer_blocks:
            x = block(x, context)  # (B, HW, I)
        if self.use_linear:
            x = self.proj_out(x)  # (B, HW, C)
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # (B, C|I, H, W)
        if not self.use_linear:
            x = self.proj_out(x)  # (B, C, H, W)
        x += x_in  # (B, C, H, W)
        return x


class Downsample(nn.Module):
    """Strided 3x3 convolution named `op` (openaimodel.py `Downsample`, conv_resample=True)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest 2x upsampling, or to the skip's size for odd latents, then a 3x3 `conv` (openaimodel.py)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        else:
            x = F.interpolate(x, size=tuple(output_size), mode="nearest")  # (B, C, H', W')
        return self.conv(x)  # (B, C, H', W')


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands `emb` to ResBlocks, `context` to transformers and the skip size to Upsample."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None,
                output_size: Sequence[int] | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, output_size)
            else:
                x = layer(x)
        return x


def run_block(block: nn.Module, checkpointing: bool, *args) -> Tensor:
    """`block(*args)`, recomputed in the backward pass when checkpointing (only while autograd records)."""
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    return block(*args)


# ---------------------------------------------------------------------------------------------------------------------
# The shared encoder (time embedding, input blocks, middle block): built once here for the ControlNet and the U-Net
# ---------------------------------------------------------------------------------------------------------------------


class EncoderShape(Protocol):
    """The config fields the encoder builder reads (ControlNetConfig and UNetConfig both have them)."""

    in_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    transformer_depth: tuple[int, ...]
    transformer_depth_middle: int
    context_dim: int
    num_heads: int
    num_head_channels: int
    use_linear_in_transformer: bool
    adm_in_channels: int | None
    norm_groups: int  # GroupNorm groups (32 in every SD model; tiny nets need fewer)


def attention_heads(channels: int, cfg: EncoderShape) -> tuple[int, int]:
    """(heads, dim_head) at a width: fixed head count, or fixed head width when num_head_channels != -1 (ldm rule)."""
    heads = max(1, channels // cfg.num_head_channels) if cfg.num_head_channels != -1 else cfg.num_heads
    return heads, channels // heads


def make_transformer(channels: int, depth: int, cfg: EncoderShape) -> SpatialTransformer:
    """SpatialTransformer at a width with the config's heads, context and projection kind."""
    heads, dim_head = attention_heads(channels, cfg)
    return SpatialTransformer(channels, heads, dim_head, depth, cfg.context_dim, cfg.use_linear_in_transformer,
                              cfg.norm_groups)


def make_time_embed(cfg: EncoderShape) -> nn.Sequential:
    """`time_embed`: Linear(mc, 4mc), SiLU, Linear(4mc, 4mc)."""
    dim = 4 * cfg.model_channels
    return nn.Sequential(nn.Linear(cfg.model_channels, dim), nn.SiLU(), nn.Linear(dim, dim))


def make_label_emb(cfg: EncoderShape) -> nn.Sequential | None:
    """`label_emb.0` (SDXL "sequential" class embedding): Linear(adm, 4mc), SiLU, Linear(4mc, 4mc); None without adm."""
    if not cfg.adm_in_channels:
        return None
    dim = 4 * cfg.model_channels
    return nn.Sequential(nn.Sequential(nn.Linear(cfg.adm_in_channels, dim), nn.SiLU(), nn.Linear(dim, dim)))


def skip_channels(cfg: EncoderShape) -> tuple[int, ...]:
    """Output widths of input_blocks 0..N-1, shallow to deep (= ControlNet zero-conv widths, U-Net skip widths)."""
    mc = cfg.model_channels
    chans = [mc]
    for level, mult in enumerate(cfg.channel_mult):
        chans += [mc * mult] * cfg.num_res_blocks
        if level != len(cfg.channel_mult) - 1:
            chans.append(mc * mult)
    return tuple(chans)


def make_input_blocks(cfg: EncoderShape) -> nn.ModuleList:
    """`input_blocks`: conv_in, then per level num_res_blocks x (ResBlock [+ transformer]) and a Downsample."""
    mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
    blocks = [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))]
    ch = mc
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers: list[nn.Module] = [ResBlock(ch, emb_dim, mc * mult, groups=cfg.norm_groups)]
            ch = mc * mult
            if cfg.transformer_depth[level] > 0:
                layers.append(make_transformer(ch, cfg.transformer_depth[level], cfg))
            blocks.append(TimestepEmbedSequential(*layers))
        if level != len(cfg.channel_mult) - 1:
            blocks.append(TimestepEmbedSequential(Downsample(ch)))
    return nn.ModuleList(blocks)


def make_middle_block(cfg: EncoderShape) -> TimestepEmbedSequential:
    """`middle_block`: ResBlock, transformer (depth may be 0), ResBlock; a lone ResBlock when depth is -1."""
    ch, emb_dim = cfg.model_channels * cfg.channel_mult[-1], 4 * cfg.model_channels
    if cfg.transformer_depth_middle < 0:
        return TimestepEmbedSequential(ResBlock(ch, emb_dim, groups=cfg.norm_groups))
    return TimestepEmbedSequential(ResBlock(ch, emb_dim, groups=cfg.norm_groups),
                                   make_transformer(ch, cfg.transformer_depth_middle, cfg),
                                   ResBlock(ch, emb_dim, groups=cfg.norm_groups))


# ---------------------------------------------------------------------------------------------------------------------
# Encoder config from ldm keys (shared by ControlNetConfig.from_state_dict and UNetConfig.from_state_dict)
# ---------------------------------------------------------------------------------------------------------------------

SDXL_ADM = 2816
UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # full checkpoints; ComfyUI model state dicts


@dataclass(frozen=True)
class EncoderFields:
    """Encoder hyper-parameters read from an ldm state dict (comfy/model_detection.py `detect_unet_config` rules)."""

    in_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    transformer_depth: tuple[int, ...]
    transformer_depth_middle: int
    context_dim: int
    num_heads: int
    num_head_channels: int
    use_linear_in_transformer: bool
    adm_in_channels: int | None


def _count_transformer_blocks(sd: Mapping[str, Tensor], prefix: str) -> int:
    """Number of `transformer_blocks.d` under a SpatialTransformer prefix; -1 when there is no transformer."""
    if prefix + "proj_in.weight" not in sd:
        return -1
    depth = 0
    while f"{prefix}transformer_blocks.{depth}.norm1.weight" in sd:
        depth += 1
    return depth


def _levels(sd: Mapping[str, Tensor]) -> list[list[int]]:
    """input_blocks indices of the ResBlocks, grouped by level (a Downsample `op` closes a level)."""
    levels: list[list[int]] = [[]]
    i = 1
    while True:
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        elif f"input_blocks.{i}.0.in_layers.2.weight" in sd:
            levels[-1].append(i)
        else:
            return levels
        i += 1


def encoder_fields(sd: Mapping[str, Tensor], what: str = "state dict") -> EncoderFields:
    """Derive the encoder config from unprefixed ldm keys and shapes only (never from file names)."""
    conv_in = sd.get("input_blocks.0.0.weight")
    if conv_in is None or conv_in.ndim != 4:
        raise CheckpointError(f"{what}: no 4-D 'input_blocks.0.0.weight', so this is not an ldm U-Net/ControlNet "
                              "state dict; convert other layouts first with controlnet_core.to_ldm(state_dict).")
    mc, in_ch = int(conv_in.shape[0]), int(conv_in.shape[1])
    levels = _levels(sd)
    if not levels[0] or any(len(lv) != len(levels[0]) for lv in levels):
        raise CheckpointError(f"{what}: res blocks per level are {[len(lv) for lv in levels]}; only a constant "
                              "count per level (as in SD1.x/SD2.x/SDXL) is supported.")
    mult, depth = [], []
    for lv in levels:
        widths = {int(sd[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]) for i in lv}
        depths = {_count_transformer_blocks(sd, f"input_blocks.{i}.1.") for i in lv}
        if 0 in depths:
            raise CheckpointError(f"{what}: a transformer without transformer_blocks in input_blocks {lv}; only the "
                                  "middle block may have one. Drop its norm/proj_in/proj_out keys when converting.")
        depths = {max(0, d) for d in depths}
        if len(widths) != 1 or len(depths) != 1 or next(iter(widths)) % mc:
            raise CheckpointError(f"{what}: level with input_blocks {lv} has widths {sorted(widths)} and transformer "
                                  f"depths {sorted(depths)}; expected one width (a multiple of {mc}) and one depth.")
        mult.append(next(iter(widths)) // mc)
        depth.append(next(iter(depths)))
    to_k = next((v for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((v for k, v in sd.items() if k.endswith(".proj_in.weight")), None)
    label = sd.get("label_emb.0.0.weight")
    adm = int(label.shape[1]) if label is not None else None
    # Without cross-attention the context width is unused by the network; give it the family's width.
    context_dim = int(to_k.shape[1]) if to_k is not None else (2048 if adm == SDXL_ADM else 768)
    sd1_heads = context_dim == 768  # SD1.x: 8 heads everywhere; SD2.x / SDXL: 64-dim heads
    return EncoderFields(
        in_channels=in_ch, model_channels=mc, channel_mult=tuple(mult), num_res_blocks=len(levels[0]),
        transformer_depth=tuple(depth), transformer_depth_middle=_count_transformer_blocks(sd, "middle_block.1."),
        context_dim=context_dim, num_heads=8 if sd1_heads else -1, num_head_channels=-1 if sd1_heads else 64,
        use_linear_in_transformer=proj_in is not None and proj_in.ndim == 2, adm_in_channels=adm,
    )


def strip_prefix(sd: Mapping[str, Tensor], prefixes: Sequence[str]) -> dict[str, Tensor]:
    """Keys under the first prefix that some key carries, without it; the dict as is when none does."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)

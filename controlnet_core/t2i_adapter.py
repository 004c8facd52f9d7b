"""T2I-Adapter (Mou et al., 2023): SD1.x full and light, SDXL full; TencentARC and diffusers layouts.

Follows TencentARC/T2I-Adapter `ldm/modules/encoders/adapter.py` (`Adapter`, `Adapter_light`; module names equal
its checkpoint keys) and diffusers `models/adapter.py` (`FullAdapter`, `FullAdapterXL`, `LightAdapter`; mapped by
`diffusers_to_tencentarc`). Four feature maps, independent of the step and the text, computed once per hint; they
enter the U-Net through the host's `input` residuals (added to h after input blocks 2, 5, 8, 11 for SD1.x;
after 3, 5, 8 and the middle block for SDXL), in the host's reversed, None-padded order
(shared/research/formats_beyond.md §3).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CheckpointError, FamilyMismatchError

XL_INPUT_CHANNELS = (256, 768)  # 1 or 3 hint channels x 16^2 (the host's XL rule; SD1.x has 64 or 192)
SOFT_LEVELS = (0.25, 0.62, 0.825, 1.0)  # A1111 soft weights of the 4 levels, shallow -> deep, at base 0.825
SOFT_BASE = 0.825


@dataclass(frozen=True)
class T2IAdapterConfig:
    """Architecture from the keys: full/light, unshuffled input width, level widths, blocks per level."""

    variant: str = "full"  # "full" | "light"
    in_channels: int = 192  # hint channels x unshuffle^2
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    block2_kernel: int = 1  # full only: every release uses 1

    @property
    def xl(self) -> bool:
        return self.variant == "full" and self.in_channels in XL_INPUT_CHANNELS

    @property
    def unshuffle(self) -> int:
        return 16 if self.xl else 8

    @property
    def hint_channels(self) -> int:
        return self.in_channels // self.unshuffle ** 2

    @property
    def family(self) -> str:
        return "sdxl" if self.xl else "sd1"

    @property
    def residual_channels(self) -> tuple[int, ...]:
        """Width of the 4 features, shallow -> deep (the engine's block order for this kind)."""
        return self.channels

    @property
    def model_channels(self) -> int:
        return self.channels[0]

    def downsamples(self, level: int) -> bool:
        """Whether the first block of `level` halves the size (SDXL: only level 2; SD1.x: every level but 0)."""
        return level == 2 if self.xl else level > 0

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], source: str = "<state dict>") -> T2IAdapterConfig:
        """TencentARC keys -> config (never from the file name); CheckpointError naming a missing or bad key."""
        try:
            return cls._from_keys(sd, source)
        except (KeyError, IndexError, ValueError) as exc:
            raise CheckpointError(f"{source}: T2I-Adapter key {exc} is missing or malformed (shapes "
                                  f"{ {k: tuple(v.shape) for k, v in list(sd.items())[:3]} }); the file is "
                                  "incomplete or not a T2I-Adapter") from exc

    @classmethod
    def _from_keys(cls, sd: Mapping[str, Tensor], source: str) -> T2IAdapterConfig:
        if "conv_in.weight" in sd:
            blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.block1\.weight$", k))})
            convs = sorted({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.in_conv\.weight$", k))})
            per_level = convs[0] if convs else len(blocks)
            if not blocks or len(blocks) % per_level:
                raise CheckpointError(f"{source}: T2I-Adapter body blocks {blocks} do not split into levels of "
                                      f"{per_level}; the file is incomplete")
            channels = tuple(int(sd[f"body.{i}.block1.weight"].shape[0]) for i in range(0, len(blocks), per_level))
            return cls("full", int(sd["conv_in.weight"].shape[1]), channels, per_level,
                       int(sd["body.0.block2.weight"].shape[-1]))
        levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.out_conv\.weight$", k))})
        if "body.0.in_conv.weight" not in sd or not levels:
            raise CheckpointError(f"{source}: not a T2I-Adapter (no conv_in.weight, no body.0.in_conv.weight)")
        rbs = {int(m.group(1)) for k in sd if (m := re.match(r"body\.0\.body\.(\d+)\.block1\.weight$", k))}
        channels = tuple(int(sd[f"body.{i}.out_conv.weight"].shape[0]) for i in levels)
        return cls("light", int(sd["body.0.in_conv.weight"].shape[1]), channels, len(rbs))


# ------------------------------------------------------------------------------------------------- blocks

def avg_pool_half(x: Tensor) -> Tensor:
    """2x2 average pool; odd sizes round up over the real pixels only (diffusers' AvgPool2d(ceil_mode=True))."""
    return F.avg_pool2d(x, 2, 2, ceil_mode=True)


class ResnetBlock(nn.Module):
    """`ResnetBlock` with sk=True (every release): [pool] -> [in_conv 1x1 when widths differ] -> x + conv(relu(conv))."""

    def __init__(self, cin: int, cout: int, down: bool, kernel: int):
        super().__init__()
        self.down = down
        self.in_conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2) if cin != cout else None
        self.block1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.block2 = nn.Conv2d(cout, cout, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = avg_pool_half(x) if self.down else x
        x = self.in_conv(x) if self.in_conv is not None else x  # (B, cout, h, w)
        return x + self.block2(F.relu(self.block1(x)))


class LightResnetBlock(nn.Module):
    """`ResnetBlock_light`: x + conv3(relu(conv3(x)))."""

    def __init__(self, channels: int):
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.block2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block2(F.relu(self.block1(x)))


class LightLevel(nn.Module):
    """`extractor`: [pool] -> in_conv 1x1 to C/4 -> resnets -> out_conv 1x1 to C."""

    def __init__(self, cin: int, cout: int, res_blocks: int, down: bool):
        super().__init__()
        self.down = down
        self.in_conv = nn.Conv2d(cin, cout // 4, 1)
        self.body = nn.Sequential(*[LightResnetBlock(cout // 4) for _ in range(res_blocks)])
        self.out_conv = nn.Conv2d(cout // 4, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = avg_pool_half(x) if self.down else x
        return self.out_conv(self.body(self.in_conv(x)))


# ------------------------------------------------------------------------------------------------ network

class T2IAdapter(nn.Module):
    """Hint (B, C, 8h, 8w) in [0, 1] -> 4 features; `forward` arranges them as the host's `input` residuals."""

    returns_cached = True  # forward hands back the cached features: the engine must not scale them in place

    def __init__(self, config: T2IAdapterConfig):
        super().__init__()
        self.config = config
        c = config.channels
        if config.variant == "full":
            self.conv_in = nn.Conv2d(config.in_channels, c[0], 3, padding=1)
            self.body = nn.ModuleList(
                ResnetBlock(c[max(level - 1, 0)] if j == 0 else c[level], c[level],
                            j == 0 and config.downsamples(level), config.block2_kernel)
                for level in range(len(c)) for j in range(config.num_res_blocks))
        else:
            self.conv_in = None
            self.body = nn.ModuleList(LightLevel(config.in_channels if i == 0 else c[i - 1], c[i],
                                                 config.num_res_blocks, i > 0) for i in range(len(c)))
        self.residual_levels = _residual_levels(config)
        self.compute_dtype: torch.dtype | None = None  # set where weights are stored narrower and cast on read

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the adapter computes in: its weights' unless they are stored narrower (fp8 cast on read)."""
        return self.compute_dtype or next(self.parameters()).dtype

    def block_scales(self, weights) -> tuple[float, ...]:
        """The engine's per-level weights for this adapter (see `block_scales`)."""
        return block_scales(self.config, weights)

    def encode_hint(self, hint: Tensor) -> tuple[Tensor, ...]:
        """(B, 3, H, W) in [0, 1] -> 4 features (B, C_i, H_i, W_i), shallow -> deep; computed once per hint."""
        if self.config.hint_channels == 1 and hint.shape[1] != 1:
            hint = hint.mean(dim=1, keepdim=True)  # (B, 1, H, W): the host feeds 1-channel adapters the RGB mean
        f = self.config.unshuffle
        h, w = hint.shape[-2:]
        if h % f or w % f:  # the host rounds the hint up to a multiple of the unshuffle factor
            hint = F.interpolate(hint, size=(math.ceil(h / f) * f, math.ceil(w / f) * f), mode="nearest-exact")
        x = F.pixel_unshuffle(hint, f)  # (B, C * f^2, H / f, W / f)
        if self.conv_in is not None:
            x = self.conv_in(x)  # (B, C_0, H / f, W / f)
        per_level = self.config.num_res_blocks if self.config.variant == "full" else 1
        features = []
        for i, block in enumerate(self.body):
            x = block(x)
            if (i + 1) % per_level == 0:
                features.append(x)  # (B, C_level, H_level, W_level)
        return tuple(features)

    def forward(self, x: Tensor, hint: Tensor | None = None, timesteps: Tensor | None = None,
                context: Tensor | None = None, y: Tensor | None = None, *,
                guided_hint: tuple[Tensor, ...] | None = None) -> dict[str, list[Tensor | None]]:
        """{"input": [...]} (+ "middle" for SDXL) in the host's pop order; features broadcast to x's rows (views)."""
        features = guided_hint if guided_hint is not None else self.encode_hint(hint)
        rows = x.shape[0]
        out: dict[str, list[Tensor | None]] = {}
        for (key, pos), level in self.residual_levels.items():
            slots = out.setdefault(key, [None] * _slot_count(self.config, key))
            f = features[level]
            slots[pos] = f if f.shape[0] == rows else f.expand(rows, *f.shape[1:])  # (R, C, H, W)
        return out


def _slot_count(config: T2IAdapterConfig, key: str) -> int:
    return 1 if key == "middle" else (10 if config.xl else 12)


def _residual_levels(config: T2IAdapterConfig) -> dict[tuple[str, int], int]:
    """(host key, position) -> feature level. The host pops `input` from the end after each input block, so the
    feature for input block b sits at position len - 1 - b (SD1.x: blocks 2, 5, 8, 11; SDXL: 3, 5, 8 + middle)."""
    if config.xl:
        return {("input", 9 - 3): 0, ("input", 9 - 5): 1, ("input", 9 - 8): 2, ("middle", 0): 3}
    return {("input", 11 - b): level for level, b in enumerate((2, 5, 8, 11))}


def block_scales(config: T2IAdapterConfig, weights) -> tuple[float, ...]:
    """The 4 level weights for `weights` (a ControlWeights): soft modes use A1111's (0.25, 0.62, 0.825, 1.0) at
    base 0.825, and base ** e with the same exponents at other bases; block_multipliers give one value per level."""
    from .errors import ControlNetError

    n = len(config.channels)
    if weights.soft():
        scales = tuple(weights.base_multiplier ** (math.log(v) / math.log(SOFT_BASE)) for v in SOFT_LEVELS[-n:])
    else:
        scales = (1.0,) * n
    if weights.block_multipliers is None:
        return scales
    if len(weights.block_multipliers) != n:
        raise ControlNetError(f"block_multipliers has {len(weights.block_multipliers)} values but a T2I-Adapter has "
                              f"{n} feature levels (shallow -> deep): give exactly {n} values or none.")
    return tuple(s * m for s, m in zip(scales, weights.block_multipliers))


def check_family(config: T2IAdapterConfig, *, adm_in_channels: int | None, model_channels: int) -> None:
    """An SDXL adapter needs an SDXL U-Net and an SD1.x one a U-Net without adm, both with its first width."""
    if config.xl != (adm_in_channels is not None) or model_channels != config.channels[0]:
        ours = "SDXL" if config.xl else "SD1.x"
        theirs = "SDXL" if adm_in_channels is not None else "not SDXL"
        raise FamilyMismatchError(f"This T2I-Adapter is {ours} (widths {config.channels}) but the model is {theirs} "
                                  f"(model_channels {model_channels}): load a T2I-Adapter made for this model.")


# --------------------------------------------------------------------------------------------------- layouts

def diffusers_to_tencentarc(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers `T2IAdapter` names -> TencentARC names (full: body.{2i+j}; light: body.{i}.body.{j})."""
    light = "adapter.conv_in.weight" not in sd
    per_level = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"adapter\.body\.\d+\.resnets\.(\d+)\.", k))),
                        default=0)
    out = {}
    for key, value in sd.items():
        name = key.removeprefix("adapter.")
        if m := re.match(r"body\.(\d+)\.resnets\.(\d+)\.(.*)$", name):
            i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            name = f"body.{i}.body.{j}.{rest}" if light else f"body.{i * per_level + j}.{rest}"
        elif (m := re.match(r"body\.(\d+)\.in_conv\.(.*)$", name)) and not light:
            name = f"body.{int(m.group(1)) * per_level}.in_conv.{m.group(2)}"
        out[name] = value
    return out


def tencentarc_to_diffusers(sd: Mapping[str, Tensor], config: T2IAdapterConfig) -> dict[str, Tensor]:
    """TencentARC names -> diffusers `T2IAdapter` names (the inverse of `diffusers_to_tencentarc`)."""
    out = {}
    for key, value in sd.items():
        name = key
        if config.variant == "light":
            if m := re.match(r"body\.(\d+)\.body\.(\d+)\.(.*)$", key):
                name = f"body.{m.group(1)}.resnets.{m.group(2)}.{m.group(3)}"
        elif m := re.match(r"body\.(\d+)\.(in_conv\.)?(.*)$", key):
            level, j = divmod(int(m.group(1)), config.num_res_blocks)
            name = (f"body.{level}.in_conv.{m.group(3)}" if m.group(2) else
                    f"body.{level}.resnets.{j}.{m.group(3)}")
        out["adapter." + name] = value
    return out


def layout(sd: Mapping[str, Tensor]) -> str:
    """"diffusers" (adapter.* keys) or "tencentarc"."""
    return "diffusers" if any(k.startswith("adapter.") for k in sd) else "tencentarc"

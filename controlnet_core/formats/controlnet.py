"""Plain ControlNet layouts (kind "controlnet"): one pure converter per layout, strict loading, writing.

Layouts follow `shared/research/reference_architecture.md` §2 (lllyasviel v1.0 / v1.1 files, diffusers
`ControlNetModel`) and the detection order of the host's `comfy/controlnet.py::load_controlnet_state_dict`.
The ldm layout (`zero_convs.0.0.weight`) is the native one: `ControlNet`'s module names equal its keys, so every
other layout is a key map into it. See docs/formats.md.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .io import DIFFUSERS_WEIGHT_NAMES, PathLike, StateDict, _sample, cast_each, storage_dtype

logger = logging.getLogger(__name__)

PREFIX = "control_model."
# The locked Stable Diffusion that a v1.0 `control_sd15_*.pth` carries next to `control_model.*` (§2a).
SD_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "model_ema.")
SD_BUFFERS = frozenset((
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar"))

# ldm ResBlock sub-layer <-> diffusers ResnetBlock2D sub-layer (§2c).
RESNET_NAMES = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


# ------------------------------------------------------------------------------------------- key-map tables

def _diffusers_pairs(levels: int, res_blocks: int, hint_convs: int, zero_convs: int) -> list[tuple[str, str]]:
    """(ldm prefix, diffusers prefix) for every module of a ControlNet of this shape (§2c table)."""
    pairs = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
             ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
             ("input_blocks.0.0.", "conv_in."), ("middle_block.1.", "mid_block.attentions.0."),
             ("middle_block_out.0.", "controlnet_mid_block."),
             ("input_hint_block.0.", "controlnet_cond_embedding.conv_in."),
             (f"input_hint_block.{2 * hint_convs - 2}.", "controlnet_cond_embedding.conv_out.")]
    pairs += [(f"input_hint_block.{2 * k}.", f"controlnet_cond_embedding.blocks.{k - 1}.")
              for k in range(1, hint_convs - 1)]
    pairs += [(f"zero_convs.{j}.0.", f"controlnet_down_blocks.{j}.") for j in range(zero_convs)]
    for mid, resnet in (("0", 0), ("2", 1)):
        pairs += [(f"middle_block.{mid}.{a}", f"mid_block.resnets.{resnet}.{b}") for a, b in RESNET_NAMES]
    for level in range(levels):
        for layer in range(res_blocks):
            n = 1 + level * (res_blocks + 1) + layer
            pairs += [(f"input_blocks.{n}.0.{a}", f"down_blocks.{level}.resnets.{layer}.{b}") for a, b in RESNET_NAMES]
            pairs.append((f"input_blocks.{n}.1.", f"down_blocks.{level}.attentions.{layer}."))
        if level < levels - 1:
            pairs.append((f"input_blocks.{(level + 1) * (res_blocks + 1)}.0.op.",
                          f"down_blocks.{level}.downsamplers.0.conv."))
    return pairs


def _indices(keys, pattern: str) -> set[int]:
    """The integers captured by `pattern` (one group) over `keys`."""
    regex = re.compile(pattern)
    return {int(m.group(1)) for k in keys if (m := regex.match(k))}


def _ldm_shape(keys) -> tuple[int, int, int, int]:
    """(levels, res blocks per level, hint convs, zero convs) of an ldm ControlNet, from its key names."""
    ops = sorted(_indices(keys, r"input_blocks\.(\d+)\.0\.op\.weight$"))
    blocks = _indices(keys, r"input_blocks\.(\d+)\.")
    res_blocks = ops[0] - 1 if ops else max(blocks, default=0)
    hint_convs = len(_indices(keys, r"input_hint_block\.(\d+)\.weight$"))
    return len(ops) + 1, res_blocks, hint_convs, len(_indices(keys, r"zero_convs\.(\d+)\."))


def _diffusers_shape(keys) -> tuple[int, int, int, int]:
    """(levels, res blocks per level, hint convs, zero convs) of a diffusers ControlNet, from its key names."""
    levels = len(_indices(keys, r"down_blocks\.(\d+)\."))
    res_blocks = len(_indices(keys, r"down_blocks\.0\.resnets\.(\d+)\."))
    hint_convs = len(_indices(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight$")) + 2
    return levels, res_blocks, hint_convs, len(_indices(keys, r"controlnet_down_blocks\.(\d+)\."))


def _rename(sd: Mapping[str, torch.Tensor], table: Mapping[str, str]) -> StateDict:
    """New dict with each key's longest matching prefix replaced; keys no prefix matches keep their name."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut]) + "."
            if prefix in table:
                key = table[prefix] + key[len(prefix):]
                break
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------------ converters

def ldm_from_ldm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """v1.1 unprefixed / extract_controlnet.py layout: already the native names."""
    return dict(sd)


def ldm_from_prefixed(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """`control_model.*` (v1.0 full ControlLDM, v1.1 .pth): strip the prefix, drop the locked SD and buffers (§2a)."""
    out = {}
    for key, value in sd.items():
        if key.startswith(PREFIX):
            out[key[len(PREFIX):]] = value
        elif not (key.startswith(SD_PREFIXES) or key in SD_BUFFERS):
            out[key] = value  # kept under its own name so the strict check reports it as unexpected
    return out


def ldm_from_diffusers(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """diffusers ControlNetModel names -> ldm names; block counts derived from the keys (§2c)."""
    table = {d: ldm for ldm, d in _diffusers_pairs(*_diffusers_shape(sd))}
    table["class_embedding.linear_1."] = "label_emb.0.0."  # older SDXL exports (host accepts both)
    table["class_embedding.linear_2."] = "label_emb.0.2."
    return _rename(sd, table)


def diffusers_from_ldm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """ldm names -> diffusers ControlNetModel names (the inverse of `ldm_from_diffusers`)."""
    return _rename(sd, dict(_diffusers_pairs(*_ldm_shape(sd))))


def prefixed_from_ldm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """ldm names -> the v1.1 `control_model.`-prefixed spelling."""
    return {PREFIX + k: v for k, v in sd.items()}


@dataclass(frozen=True)
class Layout:
    """One row of the detection table: a layout we read, the key that identifies it, its converters."""

    name: str
    signature: str
    to_ldm: Callable[[Mapping[str, torch.Tensor]], StateDict]
    from_ldm: Callable[[Mapping[str, torch.Tensor]], StateDict]
    description: str


# The one detection table, in the host's order (comfy/controlnet.py): diffusers, then prefixed, then bare ldm.
LAYOUTS = (
    Layout("diffusers", "controlnet_cond_embedding.conv_in.weight", ldm_from_diffusers, diffusers_from_ldm,
           "diffusers ControlNetModel (controlnet_cond_embedding.*, controlnet_down_blocks.*, down_blocks.*)"),
    Layout("ldm-prefixed", PREFIX + "zero_convs.0.0.weight", ldm_from_prefixed, prefixed_from_ldm,
           "lllyasviel control_model.* (v1.0 full-model .pth, v1.1 .pth)"),
    Layout("ldm", "zero_convs.0.0.weight", ldm_from_ldm, ldm_from_ldm,
           "ldm / v1.1 unprefixed (zero_convs.*, input_hint_block.*, input_blocks.*)"),
)



def layout_of(sd: Mapping[str, Any]) -> Layout | None:
    """The LAYOUTS row whose signature key `sd` has (first wins), or None."""
    return next((row for row in LAYOUTS if row.signature in sd), None)


def known_layouts() -> str:
    return "layouts read: " + "; ".join(f"{row.name} = {row.description}" for row in LAYOUTS)


def from_ldm(sd: Mapping[str, torch.Tensor], layout: str) -> StateDict:
    """A new dict with `layout`'s names ("ldm" | "ldm-prefixed" | "diffusers") from ldm names."""
    for row in LAYOUTS:
        if row.name == layout:
            return row.from_ldm(sd)
    raise CheckpointError(f"cannot write layout {layout!r}; choose one of {[row.name for row in LAYOUTS]}")


# ------------------------------------------------------------------------------------------- strict loading

def check_keys(expected: Mapping[str, torch.Size], sd: Mapping[str, torch.Tensor], source: str,
               what: str = "the ControlNet") -> None:
    """Compare names and shapes before copying anything; raise CheckpointError naming the keys and the file."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(s)}" for k, s in expected.items()
             if k in sd and tuple(sd[k].shape) != tuple(s)]
    problems = [f"{len(missing)} missing keys ({_sample(missing)})" if missing else "",
                f"{len(unexpected)} unexpected keys ({_sample(unexpected)})" if unexpected else "",
                f"{len(wrong)} wrong shapes ({_sample(wrong)})" if wrong else ""]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"{source}: does not match {what} its own keys describe: "
                              f"{'; '.join(problems)}; the file is incomplete or mixes two models")


def build_config(ldm_sd: Mapping[str, torch.Tensor], source: str = "<state dict>"):
    """ControlNetConfig from ldm keys/shapes, with the file named in any error."""
    from ..controlnet import ControlNetConfig

    return ControlNetConfig.from_state_dict(ldm_sd, source=source)


def expected_shapes(config) -> dict[str, torch.Size]:
    """{key: shape} of ControlNet(config), built on the meta device (no memory)."""
    from ..controlnet import ControlNet

    with torch.device("meta"):
        net = ControlNet(config)
    return {k: v.shape for k, v in net.state_dict().items()}


@dataclass(frozen=True)
class Checked:
    """A checkpoint read, detected, renamed to ldm keys and checked strictly against the net its keys describe."""

    source: str
    format: str
    state_dict: StateDict
    config: Any  # ControlNetConfig
    storage_dtype: torch.dtype


def check(sd: Mapping[str, torch.Tensor], source: str, layout: Layout) -> Checked:
    """Detected plain ControlNet -> ldm names -> config -> strict key and shape check (meta device)."""
    ldm_sd = layout.to_ldm(sd)
    config = build_config(ldm_sd, source)
    check_keys(expected_shapes(config), ldm_sd, source)
    return Checked(source, layout.name, ldm_sd, config, storage_dtype(ldm_sd, source))


def build(ck: Checked, *, dtype: torch.dtype | None, device, borrowed: bool):
    """ControlNet in eval mode whose parameters are the checked tensors (cast to `dtype`, None = storage dtype)."""
    from ..controlnet import ControlNet

    weights = cast_each(ck.state_dict, dtype=dtype or ck.storage_dtype, device=device, copy=borrowed)
    with torch.device("meta"):  # no random init: the file's tensors become the parameters (assign=True)
        net = ControlNet(ck.config)
    net.load_state_dict(weights, strict=True, assign=True)
    net.source, net.source_format, net.storage_dtype = ck.source, ck.format, ck.storage_dtype
    logger.debug("loaded %s: %s %s, %s layout, stored %s, now %s on %s", ck.source, ck.config.family,
                 ck.config.variant, ck.format, ck.storage_dtype, dtype or ck.storage_dtype, device or "cpu")
    return net.eval()


# ------------------------------------------------------------------------------------------------- writing

def diffusers_config(config) -> dict[str, Any]:
    """diffusers ControlNetModel config.json for a ControlNetConfig (attention_head_dim holds head counts there)."""
    mc = config.model_channels
    channels = [mc * m for m in config.channel_mult]
    heads = [config.num_heads if config.num_head_channels == -1 else max(1, c // config.num_head_channels)
             for c in channels]
    depth = list(config.transformer_depth)
    if depth[-1] and depth[-1] != config.transformer_depth_middle:
        raise CheckpointError(f"transformer depth {depth[-1]} at the last level differs from the middle block's "
                              f"{config.transformer_depth_middle}: diffusers' config cannot express it; write --to ldm")
    out = {
        "_class_name": "ControlNetModel", "in_channels": config.in_channels,
        "conditioning_channels": config.hint_channels, "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
        "mid_block_type": "UNetMidBlock2DCrossAttn", "only_cross_attention": False,
        "block_out_channels": channels, "layers_per_block": config.num_res_blocks, "downsample_padding": 1,
        "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
        "cross_attention_dim": config.context_dim,
        "transformer_layers_per_block": [max(d, 1) for d in depth[:-1]] + [config.transformer_depth_middle],
        "attention_head_dim": heads, "use_linear_projection": config.use_linear_in_transformer,
        "conditioning_embedding_out_channels": [16, 32, 96, 256],
        "controlnet_conditioning_channel_order": "rgb", "global_pool_conditions": False,
    }
    if config.adm_in_channels:
        out.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=config.adm_in_channels)
    return out


def save_controlnet(ldm_sd: Mapping[str, torch.Tensor], out: PathLike, layout: str, config=None) -> list[Path]:
    """Write ldm weights as `layout` .safetensors; for diffusers into a directory (weights + config.json) unless
    `out` ends in .safetensors. Returns the files written."""
    from safetensors.torch import save_file

    out = Path(out)
    tensors = {k: v.detach().contiguous() for k, v in from_ldm(ldm_sd, layout).items()}
    if layout == "diffusers" and out.suffix != ".safetensors":
        out.mkdir(parents=True, exist_ok=True)
        config = config or build_config(ldm_sd)
        (out / "config.json").write_text(json.dumps(diffusers_config(config), indent=2) + "\n")
        save_file(tensors, str(out / DIFFUSERS_WEIGHT_NAMES[0]), metadata={"format": "pt"})
        return [out / DIFFUSERS_WEIGHT_NAMES[0], out / "config.json"]
    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out}: the {layout} layout is written as one .safetensors file; "
                              "give an output path ending in .safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"format": "pt"})
    return [out]

"""ControlNet checkpoint layouts: safe reading, one detection table, one pure converter per layout, strict loading.

Layouts follow `shared/research/reference_architecture.md` §2 (lllyasviel v1.0 / v1.1 files, diffusers
`ControlNetModel`) and the detection order of the host's `comfy/controlnet.py::load_controlnet_state_dict`.
The ldm layout (`zero_convs.0.0.weight`) is the native one: `ControlNet`'s module names equal its keys, so every
other layout is a key map into it. See docs/formats.md.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
PathLike = str | os.PathLike

PREFIX = "control_model."
DIFFUSERS_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}

# The locked Stable Diffusion that a v1.0 `control_sd15_*.pth` carries next to `control_model.*` (§2a).
SD_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "model_ema.")
SD_BUFFERS = frozenset((
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar"))

# ldm ResBlock sub-layer <-> diffusers ResnetBlock2D sub-layer (§2c).
RESNET_NAMES = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


# ---------------------------------------------------------------------------------------------------- reading

def read_state_dict(path: PathLike) -> StateDict:
    """Read a checkpoint safely: safetensors, or torch.load(weights_only=True) for .pth/.ckpt/.bin/.pt; unwrapped."""
    path = _weights_file(Path(path))
    if _looks_like_safetensors(path):
        raw = _read_safetensors(path)
    else:
        raw = _read_torch(path)
    return unwrap(raw, source=str(path))


def _weights_file(path: Path) -> Path:
    """The file to read: `path` itself, or the diffusers weights inside a `save_pretrained` directory."""
    if path.is_dir():
        for name in DIFFUSERS_WEIGHT_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: directory has none of {', '.join(DIFFUSERS_WEIGHT_NAMES)}; "
                              "pass the weights file itself")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path (ComfyUI: models/controlnet/)")
    return path


def _looks_like_safetensors(path: Path) -> bool:
    """Sniff the content, not the name: 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> dict[str, Any]:
    """All tensors of a safetensors file on the CPU."""
    from .safetensors_io import load_file

    return load_file(path)  # not memory-mapped: a file changed on disk later cannot SIGBUS the process


def _read_torch(path: Path) -> Any:
    """torch.load with weights_only=True: a pickle that names any non-tensor global is refused, never executed."""
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4" notices: the error below says what matters
            warnings.simplefilter("ignore")
            if zipfile.is_zipfile(path) and path.suffix != ".safetensors":
                # memory-mapped: a v1.0 file's locked SD, VAE and CLIP (4 GB) are never read into memory
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            with open(path, "rb") as f:  # a file object: torch.load would route a *.safetensors name elsewhere
                return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: not a safetensors file, and torch.load(weights_only=True) refused it "
            f"({_unpickler_reason(exc)}): it is corrupt, or a pickle that would run code (nothing in it was "
            "executed); use a .safetensors file or re-save the weights from a trusted source") from exc
    except Exception as exc:  # noqa: BLE001 - on garbage the unpickler raises IndexError, struct.error, ...
        if isinstance(exc, MemoryError):
            raise
        raise CheckpointError(f"{path}: not a safetensors file and not a readable torch file "
                              f"({_first_line(exc)}); the file is truncated or corrupt, download it again") from exc


def _unpickler_reason(exc: BaseException) -> str:
    """The specific line of torch's weights-only error (the global or opcode it refused), without its boilerplate."""
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(line for line in lines if not line.startswith(boiler)) or _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def unwrap(obj: Any, *, source: str = "<state dict>") -> StateDict:
    """Strip `{"state_dict": ...}` and one-key dict wrappers (ldm, Lightning, ComfyUI); every value must be a tensor."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        elif len(obj) == 1 and isinstance(next(iter(obj.values())), Mapping):
            obj = next(iter(obj.values()))
        else:
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict of tensors; "
                              "pass a ControlNet weights file")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} entries are not named tensors ({_sample(bad)}); "
                              "pass a ControlNet weights file, not a training checkpoint")
    return dict(obj)


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

# Files that are not plain U-Net ControlNets, by a key only they have: named in the error instead of "unknown".
FOREIGN_MARKERS = (
    ("lora_controlnet", "a Stability Control-LoRA (needs the base model's weights; use the host's loader)"),
    ("difference", "a 'difference' ControlNet (stores deltas from SD1.5; use the host's DiffControlNetLoader)"),
    ("task_embedding", "a ControlNet-Union (task embeddings are not supported by this loader)"),
    ("control_add_embedding.linear_1.bias", "a ControlNet-Union (task embeddings are not supported by this loader)"),
    ("after_proj_list.18.bias", "a HunyuanDiT ControlNet (use the host's loader)"),
    ("controlnet_blocks.0.weight", "a Flux / SD3 / Qwen (DiT) ControlNet (use the host's loader)"),
    ("controlnet_blocks.0.linear.weight", "a Flux (MistoLine) ControlNet (use the host's loader)"),
)
FOREIGN_PREFIXES = (
    ("adapter.", "a T2I-Adapter (use the host's ControlNetLoader, which reads adapters)"),
    ("body.0.", "a T2I-Adapter (use the host's ControlNetLoader, which reads adapters)"),
    ("model.diffusion_model.", "a Stable Diffusion checkpoint without a ControlNet in it"),
    ("up_blocks.", "a diffusers UNet2DConditionModel, not a ControlNet"),
)


def _layout(sd: Mapping[str, Any]) -> Layout:
    """The table row matching `sd`, or a CheckpointError naming what the file is and the layouts we read."""
    for key, what in FOREIGN_MARKERS:
        if key in sd:
            raise CheckpointError(_foreign_message(what, key))
    for layout in LAYOUTS:
        if layout.signature in sd:
            return layout
    for prefix, what in FOREIGN_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            raise CheckpointError(_foreign_message(what, prefix + "*"))
    raise CheckpointError(f"unknown checkpoint layout ({len(sd)} keys, e.g. {_sample(sorted(sd), 3)}); "
                          f"{_known_layouts()}; T2I-Adapter, Control-LoRA and Flux/SD3 ControlNets are not read here")


def _foreign_message(what: str, key: str) -> str:
    return f"this is {what} (has {key!r}), not an SD1.x/SD2.x/SDXL ControlNet; {_known_layouts()}"


def _known_layouts() -> str:
    return "layouts read: " + "; ".join(f"{row.name} = {row.description}" for row in LAYOUTS)


def detect_format(sd: Mapping[str, Any]) -> str:
    """"ldm" | "ldm-prefixed" | "diffusers" for a (possibly wrapped) state dict; CheckpointError otherwise."""
    return _layout(unwrap(sd)).name


def to_ldm(sd: Mapping[str, Any]) -> StateDict:
    """A new dict with ldm ControlNet names; the input is never mutated."""
    sd = unwrap(sd)
    return _layout(sd).to_ldm(sd)


def from_ldm(sd: Mapping[str, torch.Tensor], layout: str) -> StateDict:
    """A new dict with `layout`'s names ("ldm" | "ldm-prefixed" | "diffusers") from ldm names."""
    for row in LAYOUTS:
        if row.name == layout:
            return row.from_ldm(sd)
    raise CheckpointError(f"cannot write layout {layout!r}; choose one of {[row.name for row in LAYOUTS]}")


# ------------------------------------------------------------------------------------------- strict loading

def storage_dtype(sd: Mapping[str, torch.Tensor], source: str = "<state dict>") -> torch.dtype:
    """The dtype holding most of the floating-point elements."""
    counts = Counter()
    for value in sd.values():
        if value.is_floating_point():
            counts[value.dtype] += value.numel()
    if not counts:
        raise CheckpointError(f"{source}: no floating-point tensors; pass a ControlNet weights file")
    return counts.most_common(1)[0][0]


def check_keys(expected: Mapping[str, torch.Size], sd: Mapping[str, torch.Tensor], source: str) -> None:
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
        raise CheckpointError(f"{source}: does not match the ControlNet its own keys describe: "
                              f"{'; '.join(problems)}; the file is incomplete or mixes two models")


def _sample(items, n: int = 5) -> str:
    items = list(items)
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def build_config(ldm_sd: Mapping[str, torch.Tensor], source: str = "<state dict>"):
    """ControlNetConfig from ldm keys/shapes, with the file named in any error."""
    from .controlnet import ControlNetConfig

    return ControlNetConfig.from_state_dict(ldm_sd, source=source)


def expected_shapes(config) -> dict[str, torch.Size]:
    """{key: shape} of ControlNet(config), built on the meta device (no memory)."""
    from .controlnet import ControlNet

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


def read_checked(path_or_state_dict: PathLike | Mapping[str, Any]) -> Checked:
    """read_state_dict / unwrap -> detect -> to ldm names -> config -> strict key and shape check (meta device)."""
    if isinstance(path_or_state_dict, Mapping):
        source, sd = "<state dict>", unwrap(path_or_state_dict)
    else:
        source, sd = str(path_or_state_dict), read_state_dict(path_or_state_dict)
    try:
        layout = _layout(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    ldm_sd = layout.to_ldm(sd)
    config = build_config(ldm_sd, source)
    check_keys(expected_shapes(config), ldm_sd, source)
    return Checked(source, layout.name, ldm_sd, config, storage_dtype(ldm_sd, source))


@dataclass(frozen=True)
class CheckpointInfo:
    """What `inspect` reports about a ControlNet file (validated strictly, weights never materialised)."""

    path: str
    format: str
    family: str
    variant: str
    dtype: str
    parameters: int
    residual_channels: tuple[int, ...]
    context_dim: int
    hint_channels: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "family": self.family, "format": self.format, "variant": self.variant,
                "dtype": self.dtype, "parameters": self.parameters, "residuals": len(self.residual_channels),
                "residual_channels": list(self.residual_channels), "context_dim": self.context_dim,
                "hint_channels": self.hint_channels}


def inspect_checkpoint(path: PathLike) -> CheckpointInfo:
    """Family, layout, variant, storage dtype, parameter count and residual widths of a strictly checked file."""
    ck = read_checked(path)
    return CheckpointInfo(path=ck.source, format=ck.format, family=ck.config.family, variant=ck.config.variant,
                          dtype=DTYPE_NAMES.get(ck.storage_dtype, str(ck.storage_dtype)),
                          parameters=sum(v.numel() for v in ck.state_dict.values()),
                          residual_channels=tuple(ck.config.residual_channels), context_dim=ck.config.context_dim,
                          hint_channels=ck.config.hint_channels)


def _cast_each(sd: StateDict, *, dtype: torch.dtype | None, device=None, copy: bool = False) -> StateDict:
    """Cast floating tensors one at a time, in place in `sd` (our own dict), so two full copies never coexist."""
    for key in list(sd):
        value = sd.pop(key)
        sd[key] = value.to(device=device, dtype=dtype if value.is_floating_point() else None, copy=copy)
    return sd


def load_controlnet(path_or_state_dict: PathLike | Mapping[str, Any], *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None):
    """Any supported layout -> ControlNet in eval mode, strictly; dtype None keeps the storage dtype.
    The net carries `.source`, `.source_format` and `.storage_dtype`."""
    from .controlnet import ControlNet

    ck = read_checked(path_or_state_dict)
    borrowed = isinstance(path_or_state_dict, Mapping)  # the caller's tensors: copy, never share them
    weights = _cast_each(ck.state_dict, dtype=dtype or ck.storage_dtype, device=device, copy=borrowed)
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


def convert_checkpoint(src: PathLike, out: PathLike, layout: str, *, dtype: torch.dtype | None = None) -> list[Path]:
    """Read any layout, check it strictly, cast floating tensors to `dtype`, write `layout` (see save_controlnet)."""
    ck = read_checked(src)
    weights = _cast_each(ck.state_dict, dtype=dtype) if dtype is not None else ck.state_dict
    return save_controlnet(weights, out, layout, ck.config)

"""Control-model files: safe reading, one detection table (detect.py), one module per kind, strict loading.

    read_state_dict(path)             safetensors / weights-only torch.load / diffusers folder -> {key: tensor}
    detect_kind(sd) -> str            "controlnet" | "union" | "control_lora" | "t2i_adapter" | "diff_controlnet"
    detect_format(sd) -> str          the layout of that kind ("ldm" | "ldm-prefixed" | "diffusers" | ...)
    load_controlnet(path_or_sd)       any kind the core runs -> network in eval mode (`.kind`, `.source_format`)
    inspect_checkpoint(path)          kind, family, layout, dtype, parameters, residual widths
    convert_checkpoint(src, out, to)  rewrite a plain ControlNet as ldm or diffusers .safetensors

Kinds are rows of `detect.KINDS`; each kind the core runs registers a checker and a builder in `KIND_LOADERS`
(a kind without one is detected and inspected but refused at load with a clear error). Kinds of families the core
does not run (Flux, SD3, Qwen-Image, HunyuanDiT, LLLite, ...) are refused in one line naming the host node that
loads them. See docs/formats.md.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from . import controlnet as _controlnet
from . import t2i_adapter as _t2i_adapter
from .controlnet import (
    LAYOUTS,
    PREFIX,
    RESNET_NAMES,
    SD_BUFFERS,
    SD_PREFIXES,
    Checked,
    Layout,
    build_config,
    check_keys,
    diffusers_config,
    diffusers_from_ldm,
    expected_shapes,
    from_ldm,
    ldm_from_diffusers,
    ldm_from_ldm,
    ldm_from_prefixed,
    prefixed_from_ldm,
    save_controlnet,
)
from .detect import KINDS, RUN_KINDS, Kind, detect, refusal
from .io import (
    DIFFUSERS_WEIGHT_NAMES,
    DTYPE_NAMES,
    DTYPES,
    PathLike,
    StateDict,
    _looks_like_safetensors,
    _read_safetensors,
    _read_torch,
    _weights_file,
    cast_each,
    read_state_dict,
    storage_dtype,
    unwrap,
)

logger = logging.getLogger(__name__)

_cast_each = cast_each  # the name before the package split


# ------------------------------------------------------------------------------------------------- reading

def _source_and_sd(path_or_state_dict: PathLike | Mapping[str, Any]) -> tuple[str, StateDict]:
    if isinstance(path_or_state_dict, Mapping):
        return "<state dict>", unwrap(path_or_state_dict)
    return str(path_or_state_dict), read_state_dict(path_or_state_dict)


def detect_kind(sd: Mapping[str, Any]) -> str:
    """The kind of a (possibly wrapped) state dict; a refused kind raises its one-line CheckpointError."""
    return _runnable(unwrap(sd), "<state dict>").name


def _runnable(sd: Mapping[str, Any], source: str) -> Kind:
    kind = detect(sd, source)
    if kind.refused:
        raise refusal(kind, source)
    return kind


def _controlnet_layout(sd: Mapping[str, Any], kind: Kind, source: str) -> Layout:
    layout = _controlnet.layout_of(sd)
    if layout is None:  # a Control-LoRA carries zero_convs; anything else here is a broken file
        raise CheckpointError(f"{source}: {kind.what} without any ControlNet layout key; {_controlnet.known_layouts()}")
    return layout


def _layout_name(sd: Mapping[str, Any], kind: Kind, source: str) -> str:
    if kind.name in KIND_LAYOUTS:
        return KIND_LAYOUTS[kind.name](sd)
    return _controlnet_layout(sd, kind, source).name


def detect_format(sd: Mapping[str, Any]) -> str:
    """The layout of a (possibly wrapped) state dict: "ldm" | "ldm-prefixed" | "diffusers" for U-Net ControlNets,
    the kind's own layout names otherwise (T2I-Adapter: "tencentarc" | "diffusers"); CheckpointError otherwise."""
    sd = unwrap(sd)
    return _layout_name(sd, _runnable(sd, "<state dict>"), "<state dict>")


def to_ldm(sd: Mapping[str, Any]) -> StateDict:
    """A new dict with ldm ControlNet names (plain, union and diff ControlNets); the input is never mutated."""
    sd = unwrap(sd)
    kind = _runnable(sd, "<state dict>")
    if kind.name in KIND_LAYOUTS:
        raise CheckpointError(f"this is {kind.what} (kind {kind.name}): it has no ldm ControlNet names")
    return _controlnet_layout(sd, kind, "<state dict>").to_ldm(sd)


# ------------------------------------------------------------------------------------------ kinds' loaders

@dataclass(frozen=True)
class KindLoader:
    """How the core checks and builds one kind: `check(sd, source) -> checked` validates strictly on the meta
    device; `build(checked, dtype, device, borrowed) -> nn.Module` makes the network; `info(checked)` feeds
    inspect (a dict of CheckpointInfo fields)."""

    check: Callable[[StateDict, str], Any]
    build: Callable[..., torch.nn.Module]
    info: Callable[[Any], dict[str, Any]]


def _controlnet_check(sd: StateDict, source: str) -> Checked:
    return _controlnet.check(sd, source, _controlnet_layout(sd, KINDS_BY_NAME["controlnet"], source))


def _controlnet_info(ck: Checked) -> dict[str, Any]:
    return dict(format=ck.format, family=ck.config.family, variant=ck.config.variant,
                dtype=DTYPE_NAMES.get(ck.storage_dtype, str(ck.storage_dtype)),
                parameters=sum(v.numel() for v in ck.state_dict.values()),
                residual_channels=tuple(ck.config.residual_channels), context_dim=ck.config.context_dim,
                hint_channels=ck.config.hint_channels)


KINDS_BY_NAME = {kind.name: kind for kind in KINDS}
KIND_LOADERS: dict[str, KindLoader] = {
    "controlnet": KindLoader(_controlnet_check, _controlnet.build, _controlnet_info),
    "t2i_adapter": KindLoader(_t2i_adapter.check, _t2i_adapter.build, _t2i_adapter.info),
}

def _register_union_and_base_kinds() -> None:
    """union (controlnet_core/union.py), control_lora and diff_controlnet (controlnet_core/control_lora.py)."""
    from ..control_lora import base_delta_info, build_base_delta, check_base_delta
    from ..union import build_union_net, check_union, union_info

    KIND_LOADERS["union"] = KindLoader(check_union, build_union_net, union_info)
    for name in ("control_lora", "diff_controlnet"):
        KIND_LOADERS[name] = KindLoader(check_base_delta, build_base_delta, base_delta_info)


_register_union_and_base_kinds()
# Kinds whose layouts are not the U-Net ControlNet ones: kind -> (sd -> layout name).
KIND_LAYOUTS: dict[str, Callable[[Mapping[str, Any]], str]] = {"t2i_adapter": _t2i_adapter.layout}


def _pending(kind: Kind, source: str) -> CheckpointError:
    return CheckpointError(f"{source}: this is {kind.what} (kind {kind.name}): detected, but loading it is not "
                           "implemented in this version yet; load it with the host's 'Load ControlNet Model' node "
                           "for now")


def read_checked(path_or_state_dict: PathLike | Mapping[str, Any]) -> tuple[Kind, Any]:
    """read / unwrap -> detect the kind (refused kinds raise) -> the kind's strict check on the meta device."""
    source, sd = _source_and_sd(path_or_state_dict)
    kind = _runnable(sd, source)
    loader = KIND_LOADERS.get(kind.name)
    if loader is None:
        raise _pending(kind, source)
    return kind, loader.check(sd, source)


def load_controlnet(path_or_state_dict: PathLike | Mapping[str, Any], *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None):
    """Any kind the core runs -> its network in eval mode, strictly; dtype None keeps the storage dtype.
    The net carries `.kind`, `.source`, `.source_format` and `.storage_dtype`."""
    kind, checked = read_checked(path_or_state_dict)
    borrowed = isinstance(path_or_state_dict, Mapping)  # the caller's tensors: copy, never share them
    net = KIND_LOADERS[kind.name].build(checked, dtype=dtype, device=device, borrowed=borrowed)
    net.kind = kind.name
    return net


GAP_OPTIONS = ("auto", "on", "off")
GAP_SUFFIXES = ("_shuffle", "_shuffle_fp16")  # the host's rule (comfy/controlnet.py load_controlnet)


def global_average_pooling(option: str, file_name: str) -> bool:
    """Whether a ControlNet pools its residuals (v1.1 shuffle): "on" / "off", or "auto" = the host's rule, the
    file stem ends in _shuffle or _shuffle_fp16 (the weights carry no signal, formats_beyond.md §7)."""
    if option not in GAP_OPTIONS:
        raise CheckpointError(f"global_average_pooling {option!r} is unknown: choose one of {list(GAP_OPTIONS)}")
    if option != "auto":
        return option == "on"
    return os.path.splitext(str(file_name))[0].endswith(GAP_SUFFIXES)


# ------------------------------------------------------------------------------------------------ inspect

@dataclass(frozen=True)
class CheckpointInfo:
    """What `inspect` reports about a control file (validated strictly, weights never materialised)."""

    path: str
    kind: str
    format: str
    family: str
    variant: str
    dtype: str
    parameters: int
    residual_channels: tuple[int, ...]
    context_dim: int | None
    hint_channels: int
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific facts (e.g. union types)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "family": self.family, "format": self.format,
                "variant": self.variant, "dtype": self.dtype, "parameters": self.parameters,
                "residuals": len(self.residual_channels), "residual_channels": list(self.residual_channels),
                "context_dim": self.context_dim, "hint_channels": self.hint_channels, **self.extra}


FAMILY_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def _summary_from_keys(sd: StateDict, kind: Kind, source: str) -> dict[str, Any]:
    """What the key names and shapes tell of a ControlNet-like kind whose loader has not landed (no strict check)."""
    layout = _controlnet_layout(sd, kind, source)
    ldm = layout.to_ldm(sd)
    zero = sorted((int(m.group(1)), v.shape[0]) for k, v in ldm.items()
                  if (m := re.fullmatch(r"zero_convs\.(\d+)\.0\.weight", k)))
    middle = ldm.get("middle_block_out.0.weight")
    context = next((v.shape[1] for k, v in ldm.items() if re.search(r"attn2\.to_k\.(weight|down)$", k)), None)
    hint = ldm.get("input_hint_block.0.weight")
    stored = storage_dtype(ldm, source)
    return dict(format=layout.name, family=FAMILY_CONTEXT.get(context, "custom"), variant="-",
                dtype=DTYPE_NAMES.get(stored, str(stored)), parameters=sum(v.numel() for v in ldm.values()),
                residual_channels=tuple(c for _, c in zero) + ((middle.shape[0],) if middle is not None else ()),
                context_dim=context, hint_channels=int(hint.shape[1]) if hint is not None else 0)


def inspect_checkpoint(path: PathLike) -> CheckpointInfo:
    """Kind, family, layout, variant, storage dtype, parameter count and residual widths of a checked file."""
    source, sd = _source_and_sd(path)
    kind = _runnable(sd, source)
    loader = KIND_LOADERS.get(kind.name)
    facts = loader.info(loader.check(sd, source)) if loader else _summary_from_keys(sd, kind, source)
    return CheckpointInfo(path=source, kind=kind.name, **facts)


# ------------------------------------------------------------------------------------------------ writing

def convert_checkpoint(src: PathLike, out: PathLike, layout: str, *, dtype: torch.dtype | None = None) -> list[Path]:
    """Read a plain ControlNet (or T2I-Adapter), check it strictly, cast floating tensors to `dtype`, write
    `layout` (ControlNet: see save_controlnet; T2I-Adapter: "tencentarc" | "diffusers" .safetensors)."""
    kind, ck = read_checked(src)
    if kind.name == "t2i_adapter":
        return _t2i_adapter.save(cast_each(ck.state_dict, dtype=dtype) if dtype is not None else ck.state_dict,
                                 out, layout, ck.config)
    if kind.name != "controlnet":
        raise CheckpointError(f"{src}: this is {kind.what} (kind {kind.name}); convert rewrites plain ControlNets "
                              "and T2I-Adapters only")
    if layout not in {row.name for row in LAYOUTS}:
        raise CheckpointError(f"{src}: a ControlNet is written as ldm or diffusers, not {layout!r}")
    weights = cast_each(ck.state_dict, dtype=dtype) if dtype is not None else ck.state_dict
    return save_controlnet(weights, out, layout, ck.config)


__all__ = [
    "CheckpointInfo", "Checked", "DIFFUSERS_WEIGHT_NAMES", "DTYPES", "DTYPE_NAMES", "KINDS", "KIND_LAYOUTS",
    "KIND_LOADERS", "KindLoader", "GAP_OPTIONS", "global_average_pooling", "LAYOUTS", "Layout", "PREFIX", "RESNET_NAMES", "RUN_KINDS", "SD_BUFFERS",
    "SD_PREFIXES", "build_config", "check_keys", "convert_checkpoint", "detect_format", "detect_kind",
    "diffusers_config", "diffusers_from_ldm", "expected_shapes", "from_ldm", "inspect_checkpoint",
    "ldm_from_diffusers", "ldm_from_ldm", "ldm_from_prefixed", "load_controlnet", "prefixed_from_ldm",
    "read_checked", "read_state_dict", "save_controlnet", "storage_dtype", "to_ldm", "unwrap",
    "_looks_like_safetensors", "_read_safetensors", "_read_torch", "_weights_file",
]

"""T2I-Adapter files (kind "t2i_adapter"): TencentARC and diffusers layouts, strict check, build.

TencentARC names are the native ones (`controlnet_core.t2i_adapter.T2IAdapter`'s modules equal them); the
diffusers layout is one pure key map into them. The host's optional `{"adapter": ...}` wrapper is removed by
`unwrap` before detection.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CheckpointError
from .controlnet import check_keys
from .io import DTYPE_NAMES, StateDict, cast_each, storage_dtype

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckedAdapter:
    source: str
    format: str
    state_dict: StateDict
    config: Any  # T2IAdapterConfig
    storage_dtype: torch.dtype


def check(sd: StateDict, source: str) -> CheckedAdapter:
    """Detected T2I-Adapter -> TencentARC names -> config -> strict key and shape check (meta device)."""
    from .. import t2i_adapter as t2i

    fmt = t2i.layout(sd)
    native = t2i.diffusers_to_tencentarc(sd) if fmt == "diffusers" else dict(sd)
    config = t2i.T2IAdapterConfig.from_state_dict(native, source)
    try:
        with torch.device("meta"):
            expected = {k: v.shape for k, v in t2i.T2IAdapter(config).state_dict().items()}
    except (RuntimeError, ValueError, IndexError) as exc:  # widths the keys give cannot make a network
        raise CheckpointError(f"{source}: T2I-Adapter widths {config.channels} / input {config.in_channels} "
                              f"from its keys make no network ({exc}); the file is corrupt") from exc
    check_keys(expected, native, source, what="the T2I-Adapter")
    return CheckedAdapter(source, fmt, native, config, storage_dtype(native, source))


def build(ck: CheckedAdapter, *, dtype: torch.dtype | None, device, borrowed: bool):
    """T2IAdapter in eval mode whose parameters are the checked tensors."""
    from ..t2i_adapter import T2IAdapter

    weights = cast_each(ck.state_dict, dtype=dtype or ck.storage_dtype, device=device, copy=borrowed)
    with torch.device("meta"):
        net = T2IAdapter(ck.config)
    net.load_state_dict(weights, strict=True, assign=True)
    net.source, net.source_format, net.storage_dtype = ck.source, ck.format, ck.storage_dtype
    logger.debug("loaded %s: %s %s T2I-Adapter, %s layout, stored %s", ck.source, ck.config.family,
                 ck.config.variant, ck.format, ck.storage_dtype)
    return net.eval()


def info(ck: CheckedAdapter) -> dict[str, Any]:
    return dict(format=ck.format, family=ck.config.family, variant=ck.config.variant,
                dtype=DTYPE_NAMES.get(ck.storage_dtype, str(ck.storage_dtype)),
                parameters=sum(v.numel() for v in ck.state_dict.values()),
                residual_channels=tuple(ck.config.residual_channels), context_dim=None,
                hint_channels=ck.config.hint_channels)


def layout(sd) -> str:
    from ..t2i_adapter import layout as t2i_layout

    return t2i_layout(sd)


def save(native: StateDict, out, layout_name: str, config) -> list:
    """Write TencentARC-named weights as `layout_name` ("tencentarc" | "diffusers") into one .safetensors file."""
    from pathlib import Path

    from safetensors.torch import save_file

    from ..t2i_adapter import tencentarc_to_diffusers

    out = Path(out)
    if layout_name not in ("tencentarc", "diffusers"):
        raise CheckpointError(f"a T2I-Adapter is written as tencentarc or diffusers, not {layout_name!r}")
    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out}: a T2I-Adapter is written as one .safetensors file; give an output path "
                              "ending in .safetensors")
    tensors = tencentarc_to_diffusers(native, config) if layout_name == "diffusers" else native
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(out), metadata={"format": "pt"})
    return [out]

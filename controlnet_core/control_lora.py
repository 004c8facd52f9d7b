"""Control files that need the base U-Net: Stability Control-LoRA (`lora_controlnet`) and diff-ControlNet
(`difference`). Both become a plain ControlNet whose encoder weights are computed from the base model ONCE.

shared/research/formats_beyond.md §2 and §5:
- Control-LoRA: every encoder weight of ndim >= 2 is `W_base + up @ down` (the factors flattened to matrices and the
  product reshaped to the weight); 1-D tensors (biases, norms) and ControlNet-only tensors (hint block, zero convs,
  middle_block_out) are stored in full. The architecture is the base's, the hint width the file's.
- diff-ControlNet: `control_model.*` tensors that have a twin in the base U-Net store `C - U`; keys whose difference
  was below 1e-6 were dropped by the extractor and are the base's value here (the host leaves them uninitialised).

The merge is pure (state dicts in, a ControlNet out); caching it per base-model state and holding it under the host's
model management is the host adapter's job (nodes/host/models.py). The host instead rebuilds a Control-LoRA on every
sampling run and re-merges `W + up @ down` inside every forward.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .blocks import UNET_PREFIXES, encoder_fields, strip_prefix
from .controlnet import ControlNet, ControlNetConfig
from .errors import CheckpointError, FamilyMismatchError

log = logging.getLogger(__name__)

LORA_MARKER = "lora_controlnet"
DIFF_MARKER = "difference"
CONTROL_PREFIX = "control_model."
LORA_SUFFIXES = (".up", ".down")
CONTROL_ONLY = ("input_hint_block.", "zero_convs.", "middle_block_out.")


def is_control_lora(sd: Mapping[str, Tensor]) -> bool:
    return LORA_MARKER in sd


def is_diff_controlnet(sd: Mapping[str, Tensor]) -> bool:
    return DIFF_MARKER in sd and any(k.startswith(CONTROL_PREFIX) for k in sd)


@dataclass(frozen=True)
class BaseDelta:
    """A Control-LoRA or diff-ControlNet read from its file: what it adds to a base U-Net (nothing merged yet).

    `tensors` use ldm ControlNet names: `<module>.up` / `<module>.down` factors and full tensors (Control-LoRA), or
    differences and full tensors (diff). `family` is what the file's shapes say (context width, adm)."""

    kind: str  # "control_lora" | "diff_controlnet"
    source: str
    tensors: dict[str, Tensor]
    hint_channels: int
    context_dim: int | None
    adm_in_channels: int | None
    rank: int | None

    @property
    def family(self) -> str:
        from .engine import _family_name

        return _family_name(self.context_dim or 0, self.adm_in_channels).split(" (")[0] \
            if self.context_dim else "unknown"

    @property
    def parameters(self) -> int:
        return sum(v.numel() for v in self.tensors.values())


def read_base_delta(sd: Mapping[str, Tensor], source: str = "<state dict>") -> BaseDelta:
    """A Control-LoRA / diff-ControlNet state dict -> BaseDelta (ldm names, markers dropped); CheckpointError else."""
    if is_control_lora(sd):
        kind = "control_lora"
        tensors = {k: v for k, v in sd.items() if k != LORA_MARKER}
    elif is_diff_controlnet(sd):
        kind = "diff_controlnet"
        tensors = {k[len(CONTROL_PREFIX):]: v for k, v in sd.items() if k.startswith(CONTROL_PREFIX)}
    else:
        raise CheckpointError(f"{source}: neither a Control-LoRA ({LORA_MARKER!r}) nor a diff-ControlNet "
                              f"({DIFF_MARKER!r} + control_model.*).")
    hint = tensors.get("input_hint_block.0.weight")
    if hint is None or hint.ndim != 4:
        raise CheckpointError(f"{source}: a {kind} without 'input_hint_block.0.weight'; the file is incomplete.")
    to_k = next((v for k, v in tensors.items() if k.endswith("attn2.to_k.down") or k.endswith("attn2.to_k.weight")),
                None)
    label = tensors.get("label_emb.0.0.down", tensors.get("label_emb.0.0.weight"))
    rank = max((int(v.shape[0]) for k, v in tensors.items() if k.endswith(".down")), default=None)
    return BaseDelta(kind, source, tensors, int(hint.shape[1]), int(to_k.shape[1]) if to_k is not None else None,
                     int(label.shape[1]) if label is not None else None, rank)


def _lora_product(up: Tensor, down: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """up (out, r[, 1, 1]) @ down (r, in[, kh, kw]) flattened to matrices, reshaped to the weight's shape."""
    return (up.flatten(1).to(dtype) @ down.flatten(1).to(dtype)).reshape(shape)  # (out, in[, kh, kw])


def _check_fits(delta: BaseDelta, config: ControlNetConfig, base_family: str, shapes: Mapping[str, torch.Size]) -> None:
    """FamilyMismatchError naming both when the file was made for another base (before any merge)."""
    mismatch = []
    if delta.context_dim is not None and delta.context_dim != config.context_dim:
        mismatch.append(f"context {delta.context_dim} vs {config.context_dim}")
    if (delta.adm_in_channels or None) != (config.adm_in_channels or None) and delta.kind == "control_lora":
        mismatch.append(f"adm {delta.adm_in_channels} vs {config.adm_in_channels}")
    for key, value in delta.tensors.items():
        stem, _, suffix = key.rpartition(".")
        if suffix in ("up", "down") and stem + ".weight" in shapes:
            want = shapes[stem + ".weight"]
            dim = 0 if suffix == "up" else 1
            if value.shape[dim] != want[dim]:
                mismatch.append(f"{key} {tuple(value.shape)} vs weight {tuple(want)}")
        elif key in shapes and tuple(value.shape) != tuple(shapes[key]):
            mismatch.append(f"{key} {tuple(value.shape)} vs {tuple(shapes[key])}")
        if len(mismatch) >= 3:
            break
    if mismatch:
        label = "Control-LoRA" if delta.kind == "control_lora" else "diff-ControlNet"
        raise FamilyMismatchError(f"{delta.source}: this {label} is for {delta.family} but the model it is sampled "
                                  f"with is {base_family} ({'; '.join(mismatch)}): use a {label} made for "
                                  f"{base_family}, or switch the checkpoint to {delta.family}.")


def merged_state_dict(delta: BaseDelta, base_unet: Mapping[str, Tensor], *, dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None) -> tuple[ControlNetConfig, dict[str, Tensor]]:
    """(config, ldm ControlNet state dict) of the file merged into the base U-Net (ldm keys, prefixed or not);
    sums in float32, results in `dtype` (default: the base's), on `device` (default: the base's). Strict: every
    ControlNet key is accounted for, every file key is used."""
    from .engine import _family_name
    from .formats import expected_shapes

    base = strip_prefix(base_unet, UNET_PREFIXES)
    enc = encoder_fields(base, "base U-Net")
    config = ControlNetConfig(hint_channels=delta.hint_channels, **{f.name: getattr(enc, f.name) for f in fields(enc)})
    shapes = expected_shapes(config)
    _check_fits(delta, config, _family_name(config.context_dim, config.adm_in_channels).split(" (")[0], shapes)
    ref = base["input_blocks.0.0.weight"]
    dtype = dtype or ref.dtype
    device = device if device is not None else ref.device
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing = []
    for key, shape in shapes.items():
        stem = key[:-len(".weight")] if key.endswith(".weight") else None
        file_value = delta.tensors.get(key)
        if delta.kind == "control_lora" and stem and stem + ".up" in delta.tensors:
            if key not in base:
                missing.append(f"{key} (base)")
                continue
            up, down = delta.tensors[stem + ".up"], delta.tensors[stem + ".down"]
            w = base[key].to(device=device, dtype=torch.float32) + _lora_product(up.to(device), down.to(device),
                                                                                 shape, torch.float32)
            used.update((stem + ".up", stem + ".down"))
        elif file_value is not None and delta.kind == "diff_controlnet" and key in base:
            w = base[key].to(device=device, dtype=torch.float32) + file_value.to(device=device, dtype=torch.float32)
            used.add(key)
        elif file_value is not None:
            w = file_value.to(device)
            used.add(key)
        elif key in base and not key.startswith(CONTROL_ONLY):
            w = base[key].clone()  # diff: a difference the extractor dropped (~0); never shared with the base
        else:
            missing.append(key)
            continue
        out[key] = w.to(device=device, dtype=dtype)
    unused = sorted(set(delta.tensors) - used)
    if missing or unused:
        parts = [f"{len(missing)} ControlNet keys in neither file nor base ({', '.join(missing[:4])})" if missing
                 else "", f"{len(unused)} file keys the ControlNet has no place for ({', '.join(unused[:4])})"
                 if unused else ""]
        raise CheckpointError(f"{delta.source}: cannot build the ControlNet from this {delta.kind} and the base "
                              f"U-Net: {'; '.join(p for p in parts if p)}; the file is incomplete or for another "
                              "architecture.")
    return config, out


def merge_into_base(delta: BaseDelta, base_unet: Mapping[str, Tensor], *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> ControlNet:
    """The ControlNet of a Control-LoRA / diff-ControlNet on a base U-Net (merged once, dense, eval mode)."""
    config, weights = merged_state_dict(delta, base_unet, dtype=dtype, device=device)
    with torch.device("meta"):
        net = ControlNet(config)
    net.load_state_dict(weights, strict=True, assign=True)
    net.source, net.source_format, net.storage_dtype = delta.source, delta.kind, next(iter(weights.values())).dtype
    log.info("merged %s (%s, rank %s) into the base U-Net: %s ControlNet", delta.source, delta.kind, delta.rank,
             config.family)
    return net.eval().requires_grad_(False)


def load_base_delta(path_or_state_dict) -> BaseDelta:
    """Read a Control-LoRA / diff-ControlNet file (or state dict) without merging it."""
    from .formats import read_state_dict, unwrap

    if isinstance(path_or_state_dict, Mapping):
        return read_base_delta(unwrap(path_or_state_dict))
    return read_base_delta(read_state_dict(path_or_state_dict), str(path_or_state_dict))


# --------------------------------------------------------------------------------- the formats table's loaders

def check_base_delta(sd: Mapping[str, Tensor], source: str = "<state dict>") -> BaseDelta:
    """The formats table's check for kinds "control_lora" / "diff_controlnet" (no base needed to read them)."""
    return read_base_delta(sd, source)


def build_base_delta(delta: BaseDelta, **_) -> ControlNet:
    """These kinds have no network of their own: it is built from a base U-Net (merge_into_base)."""
    raise CheckpointError(f"{delta.source}: this {delta.kind} is built from the base U-Net of the model it is "
                          "sampled with: use Load ControlNet (Core) in ComfyUI, or in Python "
                          "merge_into_base(load_base_delta(path), unet_state_dict).")


def base_delta_info(delta: BaseDelta) -> dict:
    """inspect's fields for a Control-LoRA / diff-ControlNet: what the file's own shapes say."""
    import re

    from .formats import DTYPE_NAMES, storage_dtype

    zero = sorted((int(m.group(1)), int(v.shape[0])) for k, v in delta.tensors.items()
                  if (m := re.fullmatch(r"zero_convs\.(\d+)\.0\.weight", k)))
    middle = delta.tensors.get("middle_block_out.0.weight")
    stored = storage_dtype(delta.tensors, delta.source)
    family = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(delta.context_dim, "custom")
    return dict(format="ldm" if delta.kind == "control_lora" else "ldm-prefixed", family=family, variant="-",
                dtype=DTYPE_NAMES.get(stored, str(stored)), parameters=delta.parameters,
                residual_channels=tuple(c for _, c in zero) + ((int(middle.shape[0]),) if middle is not None else ()),
                context_dim=delta.context_dim, hint_channels=delta.hint_channels,
                extra={"rank": delta.rank, "needs_base_model": True})

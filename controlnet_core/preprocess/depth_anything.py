"""The original Depth Anything V2 files (`depth_anything_v2_vit{s,b,l}.pth`, or their safetensors copies) read into
transformers' `DepthAnythingForDepthEstimation`: the size from the weights, a rename table, strict loading.

Original layout (DepthAnything/Depth-Anything-V2 depth_anything_v2/dpt.py + dinov2.py): `pretrained.*` is a DINOv2
ViT with fused `attn.qkv`, `ls1/ls2.gamma` layer scales; `depth_head.projects/resize_layers` reassemble four
intermediate layers, `depth_head.scratch.layer{1-4}_rn` project them, `refinenet4 .. refinenet1` fuse from the
deepest, `output_conv1/2` make the depth. transformers names the same modules `backbone.*`, `neck.*`, `head.*`.
Licences: Small is Apache-2.0; Base and Large are CC-BY-NC-4.0 (non-commercial).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..errors import CheckpointError, PreprocessError
from .models import InputSpec

logger = logging.getLogger(__name__)

ORIGINAL_FILES = tuple(f"depth_anything_v2_vit{s}{ext}" for s in "slb" for ext in
                       (".pth", ".safetensors", "_fp32.safetensors", "_fp16.safetensors"))
PUBLISHED = "Hugging Face depth-anything/Depth-Anything-V2-{Small,Base,Large} (or Kijai/DepthAnythingV2-safetensors)"
# width -> (name, heads, layers, 1-based output layers, neck widths, fusion width)
SIZES = {384: ("vits", 6, 12, [3, 6, 9, 12], [48, 96, 192, 384], 64),
         768: ("vitb", 12, 12, [3, 6, 9, 12], [96, 192, 384, 768], 128),
         1024: ("vitl", 16, 24, [5, 12, 18, 24], [256, 512, 1024, 1024], 256)}
# the preprocessing of the original repository: short side 518 kept-aspect, multiples of 14, bicubic, ImageNet
INPUT = InputSpec(height=518, width=518, keep_aspect_ratio=True, multiple=14, resample="bicubic",
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

_RULES = [  # (original pattern, transformers replacement), applied in order, first match wins
    (r"^pretrained\.cls_token$", "backbone.embeddings.cls_token"),
    (r"^pretrained\.mask_token$", "backbone.embeddings.mask_token"),
    (r"^pretrained\.pos_embed$", "backbone.embeddings.position_embeddings"),
    (r"^pretrained\.patch_embed\.proj\.", "backbone.embeddings.patch_embeddings.projection."),
    (r"^pretrained\.blocks\.(\d+)\.attn\.proj\.", r"backbone.encoder.layer.\1.attention.o_proj."),
    (r"^pretrained\.blocks\.(\d+)\.ls(\d)\.gamma$", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
    (r"^pretrained\.blocks\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.", r"backbone.encoder.layer.\1.\2."),
    (r"^pretrained\.norm\.", "backbone.layernorm."),
    (r"^depth_head\.projects\.(\d)\.", r"neck.reassemble_stage.layers.\1.projection."),
    (r"^depth_head\.resize_layers\.(\d)\.", r"neck.reassemble_stage.layers.\1.resize."),
    (r"^depth_head\.scratch\.layer(\d)_rn\.", lambda m: f"neck.convs.{int(m[1]) - 1}."),
    (r"^depth_head\.scratch\.refinenet(\d)\.(.*)$", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}."
                                                              f"{_fusion_part(m[2])}"),
    (r"^depth_head\.scratch\.output_conv1\.", "head.conv1."),
    (r"^depth_head\.scratch\.output_conv2\.0\.", "head.conv2."),
    (r"^depth_head\.scratch\.output_conv2\.2\.", "head.conv3."),
]
_LEGACY = [("attention.q_proj.", "attention.attention.query."), ("attention.k_proj.", "attention.attention.key."),
           ("attention.v_proj.", "attention.attention.value."), ("attention.o_proj.", "attention.output.dense.")]


def _fusion_part(rest: str) -> str:
    return (rest.replace("out_conv.", "projection.").replace("resConfUnit", "residual_layer")
            .replace(".conv1.", ".convolution1.").replace(".conv2.", ".convolution2."))


def is_original(sd: dict[str, torch.Tensor]) -> bool:
    """True for the original layout (a DINOv2 `pretrained.*` backbone and a `depth_head.*`)."""
    return "pretrained.cls_token" in sd and any(k.startswith("depth_head.") for k in sd)


def find_original(models_dir: str | Path | None) -> Path | None:
    """The original weight file `models_dir` names (the file itself, or one under a published name in the
    folder); None when it is a transformers folder (config.json) or holds none."""
    if models_dir is None or str(models_dir) == "":
        return None
    path = Path(models_dir).expanduser()
    if path.is_file():
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    return next((path / n for n in ORIGINAL_FILES if (path / n).is_file()), None)


def convert(sd: dict[str, torch.Tensor], source: str = "<state dict>") -> tuple[dict, dict[str, torch.Tensor]]:
    """Original state dict -> (transformers DepthAnythingConfig keyword arguments, renamed state dict); pure."""
    if not is_original(sd):
        raise PreprocessError(f"{source}: not an original Depth Anything V2 file (no pretrained.cls_token / "
                              f"depth_head.* keys); expected one of {', '.join(ORIGINAL_FILES[::4])} from {PUBLISHED}")
    width = sd["pretrained.cls_token"].shape[-1]
    if width not in SIZES:
        raise PreprocessError(f"{source}: a DINOv2 backbone {width} wide; Depth Anything V2 S/B/L are "
                              f"{', '.join(map(str, SIZES))} wide (the giant model is not supported)")
    out = {}
    for key, value in sd.items():
        if key.endswith((".attn.qkv.weight", ".attn.qkv.bias")):
            block = key.split(".")[2]
            kind = key.rsplit(".", 1)[1]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"backbone.encoder.layer.{block}.attention.{name}.{kind}"] = part
            continue
        out[_rename(key, source)] = value
    return config_for(width), out


def _rename(key: str, source: str) -> str:
    for pattern, replacement in _RULES:
        new, hits = re.subn(pattern, replacement, key)
        if hits:
            return new
    raise PreprocessError(f"{source}: unexpected key {key!r} for a Depth Anything V2 file; is it a V1 or "
                          "Video Depth Anything file? Use a transformers model folder for those")


def config_for(width: int) -> dict:
    """DepthAnythingConfig arguments of the released V2 model of this backbone width (relative depth)."""
    _, heads, layers, out_indices, neck, fusion = SIZES[width]
    backbone = {"model_type": "dinov2", "hidden_size": width, "num_attention_heads": heads,
                "num_hidden_layers": layers, "image_size": 518, "patch_size": 14, "out_indices": out_indices,
                "reshape_hidden_states": False, "layerscale_value": 1.0, "mlp_ratio": 4}
    return {"backbone_config": backbone, "reassemble_hidden_size": width, "neck_hidden_sizes": neck,
            "fusion_hidden_size": fusion, "head_hidden_size": 32, "patch_size": 14,
            "reassemble_factors": [4, 2, 1, 0.5], "depth_estimation_type": "relative"}


def load_original(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The original file at `path` as a transformers DepthAnythingForDepthEstimation, loaded strictly."""
    import transformers

    from ..formats import read_state_dict

    try:
        sd = read_state_dict(path)
    except CheckpointError as exc:
        raise PreprocessError(str(exc)) from exc
    kwargs, renamed = convert(sd, str(path))
    with torch.device("meta"):
        model = transformers.DepthAnythingForDepthEstimation(transformers.DepthAnythingConfig(**kwargs))
    expected = model.state_dict()
    if not any(".q_proj." in k for k in expected):  # transformers < 5 names the attention projections apart
        renamed = {_legacy(k): v for k, v in renamed.items()}
    missing, extra = sorted(set(expected) - set(renamed)), sorted(set(renamed) - set(expected))
    bad = [k for k in set(expected) & set(renamed) if tuple(expected[k].shape) != tuple(renamed[k].shape)]
    if missing or extra or bad:
        raise PreprocessError(f"{path}: does not match Depth Anything V2 {SIZES[kwargs['reassemble_hidden_size']][0]}"
                              f" (missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {bad[:3]})")
    weights = {k: v.to(dtype, copy=True) for k, v in renamed.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    logger.info("loaded Depth Anything V2 %s from %s (original layout)", SIZES[kwargs["reassemble_hidden_size"]][0],
                path)
    return model.eval().requires_grad_(False)


def _legacy(key: str) -> str:
    for new, old in _LEGACY:
        key = key.replace(new, old)
    return key

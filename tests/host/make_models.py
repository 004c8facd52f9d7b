"""Random-weight SD1.5 and SDXL base models for the host tests, run with the HOST's python (it imports comfy).

    $COMFYUI_PYTHON tests/host/make_models.py COMFYUI_PATH OUT_DIR [sd15|sdxl]

Key names and shapes come from the host's own modules built on the meta device (so the host's checkpoint
detection sees exactly the layout it expects: `model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.text_model.*`); values are random, scaled by 1/sqrt(fan_in) so activations stay
finite. `sd15` (default) writes OUT_DIR/sd15_random.safetensors (fp16, ~2 GB). `sdxl` writes the files of the
host's separate loaders, fp16: OUT_DIR/sdxl_unet_random.safetensors (UNETLoader, 5.1 GB),
sdxl_clip_l_random.safetensors and sdxl_clip_g_random.safetensors (DualCLIPLoader type sdxl, 1.6 GB together);
no VAE (the tests compare latents). They are streamed to disk one tensor at a time (peak memory: the largest
tensor). ControlNet files are written by the pytest side (`tests.fixtures.random_controlnet_state_dict`), which
needs no host.
"""
from __future__ import annotations

import sys
from pathlib import Path


def _random_like(shapes: dict[str, tuple[int, ...]], seed: int, dtype) -> dict:
    """Norm scales near 1, biases small, weights N(0, 1/fan_in): a finite, non-trivial random network."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {key: _random_tensor(key, shape, gen, dtype) for key, shape in shapes.items()}


def _random_tensor(key: str, shape: tuple[int, ...], gen, dtype):
    """One tensor by the rules of `_random_like` (same generator order)."""
    import torch

    if key.endswith("position_ids"):
        return torch.arange(shape[-1]).expand(shape).clone()
    if len(shape) == 1 and key.endswith("weight"):  # norm scales
        return (1.0 + 0.1 * torch.randn(shape, generator=gen)).to(dtype)
    if len(shape) == 1:
        return (0.02 * torch.randn(shape, generator=gen)).to(dtype)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    scale = 0.02 if "embedding" in key else fan_in ** -0.5
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def write_random(shapes: dict[str, tuple[int, ...]], seed: int, path: Path) -> None:
    """A safetensors file of random fp16 tensors (int64 position ids), written tensor by tensor (8-byte header
    length, JSON header, data), so a 5 GB U-Net never sits in memory whole; renamed into place when complete."""
    import json

    import torch

    names = {torch.float16: "F16", torch.int64: "I64"}
    header, offset = {}, 0
    for key, shape in shapes.items():
        dtype = torch.int64 if key.endswith("position_ids") else torch.float16
        size = dtype.itemsize
        for s in shape:
            size *= s
        header[key] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-aligned
    gen = torch.Generator().manual_seed(seed)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for key, shape in shapes.items():
            tensor = _random_tensor(key, shape, gen, torch.float16).contiguous()
            f.write(tensor.view(torch.uint8).numpy())
    tmp.replace(path)


def _meta_shapes(module, prefix: str) -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def sd15_shapes() -> dict[str, tuple[int, ...]]:
    """{checkpoint key: shape} of an SD1.5 checkpoint, from the host's UNet, VAE and CLIP-L classes."""
    import torch

    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    with torch.device("meta"):
        unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=2,
                         channel_mult=(1, 2, 4, 4), num_heads=8, use_spatial_transformer=True,
                         transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                         transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], context_dim=768,
                         legacy=False, use_linear_in_transformer=False, device="meta", operations=ops)
        ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                    "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                    "dropout": 0.0}
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
        clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32)
    shapes = _meta_shapes(unet, "model.diffusion_model.")
    shapes |= _meta_shapes(vae, "first_stage_model.")
    clip_shapes = _meta_shapes(clip.transformer, "cond_stage_model.transformer.")
    # An SD1.5 checkpoint stores no projection head (host: process_clip_state_dict_for_saving).
    shapes |= {k: v for k, v in clip_shapes.items() if "text_projection" not in k and "logit_scale" not in k}
    return shapes


def sdxl_unet_shapes() -> dict[str, tuple[int, ...]]:
    """{key: shape} of an SDXL base U-Net file for UNETLoader (unprefixed ldm keys), from the host's UNetModel with
    the config its detection derives from SDXL weights (supported_models.SDXL)."""
    import torch

    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[2, 2, 2],
                         channel_mult=(1, 2, 4), num_head_channels=64, use_spatial_transformer=True,
                         transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                         transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048,
                         adm_in_channels=2816, num_classes="sequential", use_linear_in_transformer=True,
                         legacy=False, device="meta", operations=comfy.ops.disable_weight_init)
    return _meta_shapes(unet, "")


def sdxl_clip_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """{"clip_l": shapes, "clip_g": shapes}: the two text encoders of the host's SDXLClipModel in the
    transformers layout its separate CLIP loader reads (`text_model.*`, `text_projection.weight`)."""
    import torch

    import comfy.sdxl_clip

    clip = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float16)
    return {name: _meta_shapes(getattr(clip, name).transformer, "") for name in ("clip_l", "clip_g")}


def main(argv: list[str]) -> int:
    comfyui, out_dir = Path(argv[0]).resolve(), Path(argv[1])
    which = argv[2] if len(argv) > 2 else "sd15"
    sys.path.insert(0, str(comfyui))  # a script for the host's interpreter, never imported by the pack
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # model_management probes CUDA at import otherwise
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    if which == "sdxl":
        write_random(sdxl_unet_shapes(), seed=2, path=out_dir / "sdxl_unet_random.safetensors")
        for seed, (name, shapes) in enumerate(sdxl_clip_shapes().items(), start=3):
            write_random(shapes, seed=seed, path=out_dir / f"sdxl_{name}_random.safetensors")
        return 0
    target = out_dir / "sd15_random.safetensors"
    tmp = target.with_suffix(".partial")
    save_file(_random_like(sd15_shapes(), seed=1, dtype=torch.float16), str(tmp))
    tmp.replace(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

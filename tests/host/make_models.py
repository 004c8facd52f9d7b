"""Random-weight SD1.5-architecture files for the host tests, run with the HOST's python (it imports comfy).

    $COMFYUI_PYTHON tests/host/make_models.py COMFYUI_PATH OUT_DIR

Key names and shapes come from the host's own modules built on the meta device (so the host's checkpoint
detection sees exactly the layout it expects: `model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.text_model.*`); values are random, scaled by 1/sqrt(fan_in) so activations stay
finite. Writes OUT_DIR/sd15_random.safetensors (fp16, ~2 GB). ControlNet files are written by the pytest side
(`tests.fixtures.random_controlnet_state_dict`), which needs no host.
"""
from __future__ import annotations

import sys
from pathlib import Path


def _random_like(shapes: dict[str, tuple[int, ...]], seed: int, dtype) -> dict:
    """Norm scales near 1, biases small, weights N(0, 1/fan_in): a finite, non-trivial random network."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            out[key] = torch.arange(shape[-1]).expand(shape).clone()
            continue
        if len(shape) == 1 and key.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            value = 0.02 * torch.randn(shape, generator=gen)
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            scale = 0.02 if "embedding" in key else fan_in ** -0.5
            value = torch.randn(shape, generator=gen) * scale
        out[key] = value.to(dtype)
    return out


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


def main(argv: list[str]) -> int:
    comfyui, out_dir = Path(argv[0]).resolve(), Path(argv[1])
    sys.path.insert(0, str(comfyui))  # a script for the host's interpreter, never imported by the pack
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # model_management probes CUDA at import otherwise
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "sd15_random.safetensors"
    tmp = target.with_suffix(".partial")
    save_file(_random_like(sd15_shapes(), seed=1, dtype=torch.float16), str(tmp))
    tmp.replace(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

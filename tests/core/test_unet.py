"""Reference controlled U-Net: ldm names, config derivation, parity with diffusers' UNet2DConditionModel.

Oracle: diffusers 0.42.1 `UNet2DConditionModel` given `down_block_additional_residuals` (added to its down-block
samples, i.e. to the skips) and `mid_block_additional_residual`, on the same random weights mapped by the
independent key map in tests/fixtures.py. Rel diff = max|ours - ref| / max|ref|; bound 1e-5 in fp32.
"""
from __future__ import annotations

import math

import pytest
import torch

from controlnet_core.blocks import skip_channels
from controlnet_core.errors import CheckpointError
from controlnet_core.unet import ControlledUNet, UNetConfig
from tests.fixtures import (
    SPECS,
    diffusers_unet_config,
    random_unet_state_dict,
    unet_ldm_shapes,
    unet_to_diffusers_layout,
)

REL_TOL = 1e-5


def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def build_pair(name: str, seed: int = 3):
    """(ours, diffusers) U-Nets holding the same random weights, both loaded strictly."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    sd = random_unet_state_dict(name, seed)
    ours = ControlledUNet(UNetConfig.from_state_dict(sd))
    ours.load_state_dict(sd, strict=True)
    ref = UNet2DConditionModel(**diffusers_unet_config(name))
    ref.load_state_dict(unet_to_diffusers_layout(sd, name), strict=True)
    ref.set_attn_processor(AttnProcessor())
    return ours.eval(), ref.eval()


def unet_inputs(cfg: UNetConfig, batch: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
    t = torch.tensor([10.0, 600.0][:batch])
    ctx = torch.randn(batch, 5, cfg.context_dim, generator=g)
    return x, t, ctx, g


def random_control(unet: ControlledUNet, x: torch.Tensor, g: torch.Generator) -> dict[str, list[torch.Tensor]]:
    """Non-zero residuals shaped like the skips (measured from a plain forward pass)."""
    shapes = []
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.append(o.shape)) for b in unet.input_blocks]
    hooks.append(unet.middle_block.register_forward_hook(lambda m, i, o: shapes.append(o.shape)))
    b, adm = x.shape[0], unet.config.adm_in_channels
    with torch.no_grad():
        unet(x, torch.zeros(b), torch.zeros(b, 1, unet.config.context_dim), torch.zeros(b, adm) if adm else None)
    for h in hooks:
        h.remove()
    res = [0.3 * torch.randn(s, generator=g) for s in shapes]
    return {"output": res[:-1], "middle": res[-1:]}


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sd21", "tiny-sdxl"])
def test_config_and_names_match_ldm_keys(name):
    spec = SPECS[name]
    meta = {"model.diffusion_model." + k: torch.empty(s, device="meta") for k, s in unet_ldm_shapes(spec).items()}
    cfg = UNetConfig.from_state_dict(meta)  # prefixed keys are accepted
    assert (cfg.model_channels, cfg.channel_mult, cfg.transformer_depth, cfg.context_dim, cfg.adm_in_channels) == (
        spec.model_channels, spec.channel_mult, spec.depth, spec.context_dim, spec.adm)
    with torch.device("meta"):
        unet = ControlledUNet(cfg)
    assert {k: tuple(v.shape) for k, v in unet.state_dict().items()} == unet_ldm_shapes(spec)


@pytest.mark.parametrize("name, tensors, params", [("sd15", 686, 859_520_964), ("sdxl", 1680, 2_567_463_684)])
def test_full_size_unet_matches_published_counts(name, tensors, params):
    """Tensor and parameter counts from reference_architecture.md §4 (measured on the original models)."""
    spec = SPECS[name]
    cfg = UNetConfig.from_state_dict({k: torch.empty(s, device="meta") for k, s in unet_ldm_shapes(spec).items()})
    with torch.device("meta"):
        sd = ControlledUNet(cfg).state_dict()
    assert len(sd) == tensors and sum(math.prod(v.shape) for v in sd.values()) == params
    assert name != "sd15" or cfg == UNetConfig()  # the defaults are SD1.5
    assert {k: tuple(v.shape) for k, v in sd.items()} == unet_ldm_shapes(spec)


def test_not_a_unet_raises():
    with pytest.raises(CheckpointError, match="out.2.weight"):
        UNetConfig.from_state_dict({"input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)})


@pytest.mark.parametrize("name, size", [("tiny-sd15", 16), ("tiny-sd21", 16), ("tiny-sdxl", 16), ("tiny-sd15", 13)])
def test_parity_with_diffusers_given_residuals(name, size):
    ours, ref = build_pair(name)
    x, t, ctx, g = unet_inputs(ours.config, 2, size)
    control = random_control(ours, x, g)
    kwargs = {}
    y = None
    if ours.config.adm_in_channels:
        added = {"text_embeds": torch.randn(2, 1280, generator=g),
                 "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128], [96, 160, 8, 4, 128, 128]])}
        kwargs["added_cond_kwargs"] = added
        y = torch.cat([added["text_embeds"], ref.add_time_proj(added["time_ids"].flatten()).reshape(2, -1)], -1)
    with torch.no_grad():
        plain_ref = ref(x, t, ctx, return_dict=False, **kwargs)[0]
        ctrl_ref = ref(x, t, ctx, down_block_additional_residuals=tuple(control["output"]),
                       mid_block_additional_residual=control["middle"][0], return_dict=False, **kwargs)[0]
        plain = ours(x, t, ctx, y)
        ctrl = ours(x, t, ctx, y, control=control)
    assert rel_diff(plain, plain_ref) <= REL_TOL
    assert rel_diff(ctrl, ctrl_ref) <= REL_TOL
    assert rel_diff(ctrl_ref, plain_ref) > 1e-3  # the residuals matter: the comparison is not vacuous


def test_control_lists_are_not_mutated():
    sd = random_unet_state_dict("tiny-sd15", 4)
    unet = ControlledUNet(UNetConfig.from_state_dict(sd))
    unet.load_state_dict(sd, strict=True)
    x, t, ctx, g = unet_inputs(unet.config, 1, 8)
    control = random_control(unet, x, g)
    before = {k: [r.clone() for r in v] for k, v in control.items()}
    ids = {k: [id(r) for r in v] for k, v in control.items()}
    with torch.no_grad():
        unet(x, t, ctx, control=control)
    assert {k: [id(r) for r in v] for k, v in control.items()} == ids
    assert all(torch.equal(a, b) for k in before for a, b in zip(before[k], control[k]))


def test_output_residuals_pop_from_the_end():
    """Residual i goes to skip i (host order shallow->deep); a shorter list feeds only the deepest skips."""
    sd = random_unet_state_dict("tiny-sd15", 4)
    unet = ControlledUNet(UNetConfig.from_state_dict(sd))
    unet.load_state_dict(sd, strict=True)
    x, t, ctx, g = unet_inputs(unet.config, 1, 8)
    full = random_control(unet, x, g)
    assert [r.shape[1] for r in full["output"]] == list(skip_channels(unet.config))
    deep = {"output": full["output"][-2:], "middle": []}  # pops pair with the two deepest skips
    padded = {"output": [None] * (len(full["output"]) - 2) + full["output"][-2:], "middle": []}
    with torch.no_grad():
        assert torch.equal(unet(x, t, ctx, control=deep), unet(x, t, ctx, control=padded))
        assert not torch.equal(unet(x, t, ctx, control=deep), unet(x, t, ctx))

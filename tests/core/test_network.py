"""ControlNet network: config derivation, strict loading, numerical parity with diffusers' ControlNetModel.

Oracle: diffusers 0.42.1 `ControlNetModel` (an implementation we did not write) on the same random weights, attention
forced to the plain math `AttnProcessor`. Rel diff = max|ours - ref| / max|ref| per residual; bound 1e-5 in fp32.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from controlnet_core.blocks import CrossAttention, GroupNorm32, timestep_embedding
from controlnet_core.controlnet import ControlNet, ControlNetConfig
from controlnet_core.errors import CheckpointError, ControlNetError
from tests.fixtures import (
    SPECS,
    Spec,
    controlnet_ldm_shapes,
    diffusers_controlnet_config,
    random_controlnet_state_dict,
    to_diffusers_layout,
)

REL_TOL = 1e-5
# Host tables (comfy/model_detection.py SDXL_mid_cnet / SDXL_small_cnet): depth per level and in the middle.
SDXL_MID = Spec(channel_mult=(1, 2, 4), depth=(0, 0, 1), mid_depth=1, context_dim=2048, linear=True, adm=2816)
SDXL_SMALL = Spec(channel_mult=(1, 2, 4), depth=(0, 0, 0), mid_depth=0, context_dim=2048, linear=True, adm=2816)
TINY_MID = Spec(model_channels=64, channel_mult=(1, 2, 2), depth=(0, 0, 1), mid_depth=1, context_dim=2048,
                linear=True, adm=2816)
TINY_SMALL = Spec(model_channels=64, channel_mult=(1, 2, 2), depth=(0, 0, 0), mid_depth=0, context_dim=2048,
                  linear=True, adm=2816)
EXPECTED = {  # spec -> (family, variant, number of residuals)
    "sd15": ("sd1", "full", 13), "sd21": ("sd2", "full", 13), "sdxl": ("sdxl", "full", 10),
    "tiny-sd15": ("sd1", "full", 7), "tiny-sd21": ("sd2", "full", 7), "tiny-sdxl": ("sdxl", "full", 10),
}


def meta_state_dict(spec: Spec) -> dict[str, torch.Tensor]:
    """Shape-only state dict: full-size configs cost nothing to derive and build on the meta device."""
    return {k: torch.empty(s, device="meta") for k, s in controlnet_ldm_shapes(spec).items()}


def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def inputs(cfg: ControlNetConfig, batch: int = 2, size: int = 16, seed: int = 0):
    """Latent, hint (8x), timesteps, context and (SDXL) the diffusers added_cond_kwargs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
    hint = torch.rand(batch, cfg.hint_channels, 8 * size, 8 * size, generator=g)
    t = torch.tensor([3.0, 700.0, 999.0, 0.0][:batch])
    ctx = torch.randn(batch, 7, cfg.context_dim, generator=g)
    added = None
    if cfg.adm_in_channels:
        added = {"text_embeds": torch.randn(batch, cfg.adm_in_channels - 6 * 256, generator=g),
                 "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128], [96, 160, 8, 4, 128, 128]] * batch)[:batch]}
    return x, hint, t, ctx, added


def sdxl_y(dnet, added: dict) -> torch.Tensor:
    """ldm `y` = [pooled text, sinusoid256 of the 6 size/crop ids], built with diffusers' own add_time_proj."""
    tid = added["time_ids"]
    return torch.cat([added["text_embeds"], dnet.add_time_proj(tid.flatten()).reshape(tid.shape[0], -1)], dim=-1)


def build_pair(spec: Spec | str, seed: int = 1):
    """(ours, diffusers) ControlNets holding the same random weights, both loaded strictly."""
    from diffusers import ControlNetModel
    from diffusers.models.attention_processor import AttnProcessor

    sd = random_controlnet_state_dict(spec, seed)
    ours = ControlNet(ControlNetConfig.from_state_dict(sd))
    ours.load_state_dict(sd, strict=True)
    ref = ControlNetModel(**diffusers_controlnet_config(spec))
    ref.load_state_dict(to_diffusers_layout(sd), strict=True)
    ref.set_attn_processor(AttnProcessor())
    return ours.eval(), ref.eval()


def parity(spec: Spec | str, batch: int = 2, size: int = 16) -> list[float]:
    """Per-residual rel diff of ours vs diffusers, in host order (output shallow->deep, then middle)."""
    ours, ref = build_pair(spec)
    x, hint, t, ctx, added = inputs(ours.config, batch, size)
    with torch.no_grad():
        down, mid = ref(x, t, ctx, hint, added_cond_kwargs=added, return_dict=False)
        y = sdxl_y(ref, added) if added else None
        out = ours(x, hint, t, ctx, y)
    got, want = [*out["output"], *out["middle"]], [*down, mid]
    assert len(got) == len(want) == len(ours.config.residual_channels)
    for a, b, c in zip(got, want, ours.config.residual_channels):
        assert a.shape == b.shape and a.shape[1] == c
        assert b.abs().max() > 0  # non-zero zero convs: the comparison is not vacuous
    return [rel_diff(a, b) for a, b in zip(got, want)]


# ---------------------------------------------------------------------------------------------------------------------
# Config derivation and strict loading
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED))
def test_config_from_state_dict(name):
    spec = SPECS[name]
    shapes = controlnet_ldm_shapes(spec)
    cfg = ControlNetConfig.from_state_dict(meta_state_dict(spec))
    family, variant, n = EXPECTED[name]
    assert (cfg.family, cfg.variant) == (family, variant)
    widths = [shapes[f"zero_convs.{i}.0.weight"][0] for i in range(n - 1)] + [shapes["middle_block_out.0.weight"][0]]
    assert cfg.residual_channels == tuple(widths)
    assert (cfg.model_channels, cfg.channel_mult, cfg.transformer_depth) == (
        spec.model_channels, spec.channel_mult, spec.depth)
    assert (cfg.transformer_depth_middle, cfg.context_dim, cfg.use_linear_in_transformer, cfg.adm_in_channels) == (
        spec.mid_depth, spec.context_dim, spec.linear, spec.adm)
    assert (cfg.num_heads, cfg.num_head_channels) == ((8, -1) if spec.context_dim == 768 else (-1, 64))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_module_names_equal_ldm_keys(name):
    """Same key set and shapes as the checkpoint: v1.1 unprefixed files load strictly with no key map."""
    spec = SPECS[name]
    with torch.device("meta"):
        net = ControlNet(ControlNetConfig.from_state_dict(meta_state_dict(spec)))
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == controlnet_ldm_shapes(spec)


def test_sd15_defaults_are_the_contract():
    assert ControlNetConfig.from_state_dict(meta_state_dict(SPECS["sd15"])) == ControlNetConfig()
    assert sum(math.prod(s) for s in controlnet_ldm_shapes(SPECS["sd15"]).values()) == 361_279_120


@pytest.mark.parametrize("spec, variant, depth, mid", [(SDXL_MID, "mid", (0, 0, 1), 1),
                                                      (SDXL_SMALL, "small", (0, 0, 0), 0)])
def test_sdxl_variants_full_size_config(spec, variant, depth, mid):
    cfg = ControlNetConfig.from_state_dict(meta_state_dict(spec))
    got = (cfg.family, cfg.variant, cfg.transformer_depth, cfg.transformer_depth_middle)
    assert got == ("sdxl", variant, depth, mid)
    assert len(cfg.residual_channels) == 10


@pytest.mark.parametrize("spec, variant", [(TINY_MID, "mid"), (TINY_SMALL, "small")])
def test_sdxl_variants_build_and_run(spec, variant):
    sd = random_controlnet_state_dict(spec, seed=2)
    net = ControlNet(ControlNetConfig.from_state_dict(sd))
    net.load_state_dict(sd, strict=True)
    assert net.config.variant == variant
    x, hint, t, ctx, _ = inputs(net.config)
    with torch.no_grad():
        out = net(x, hint, t, ctx, torch.randn(2, 2816))
    shapes = [tuple(r.shape[1:]) for r in [*out["output"], *out["middle"]]]
    assert [s[0] for s in shapes] == list(net.config.residual_channels)
    assert shapes[-1] == (128, 4, 4) and all(torch.isfinite(r).all() for r in out["output"])


def test_sdxl_mid_parity_with_diffusers():
    worst = max(parity(TINY_MID))
    assert worst <= REL_TOL, worst


def test_not_an_ldm_controlnet_raises():
    sd = random_controlnet_state_dict("tiny-sd15")
    with pytest.raises(CheckpointError, match="to_ldm"):
        ControlNetConfig.from_state_dict(to_diffusers_layout(sd))
    with pytest.raises(CheckpointError, match="zero_convs.0.0.weight"):
        ControlNetConfig.from_state_dict({"control_model." + k: v for k, v in sd.items()})


def test_strict_load_rejects_wrong_shapes():
    sd = random_controlnet_state_dict("tiny-sd15")
    net = ControlNet(ControlNetConfig.from_state_dict(random_controlnet_state_dict("tiny-sd21")))
    with pytest.raises(RuntimeError, match="size mismatch"):
        net.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------------------------------
# Parity with diffusers
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sd21", "tiny-sdxl"])
def test_parity_with_diffusers(name):
    rel = parity(name)
    assert max(rel) <= REL_TOL, (name, rel)


def test_parity_odd_latent_size():
    """13x13 latent (104 px hint): the stride-2 convs round up the same way in both implementations."""
    assert max(parity("tiny-sd15", batch=1, size=13)) <= REL_TOL


@pytest.mark.slow
def test_parity_full_size_sd15():
    """Full SD1.5 ControlNet, 512 px hint, 64x64 latent, batch 1."""
    rel = parity("sd15", batch=1, size=64)
    assert max(rel) <= REL_TOL, rel


# ---------------------------------------------------------------------------------------------------------------------
# forward contract: guided_hint, broadcasting, errors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd15():
    sd = random_controlnet_state_dict("tiny-sd15", seed=5)
    net = ControlNet(ControlNetConfig.from_state_dict(sd))
    net.load_state_dict(sd, strict=True)
    return net.eval()


def test_guided_hint_gives_the_same_numbers(tiny_sd15):
    x, hint, t, ctx, _ = inputs(tiny_sd15.config)
    with torch.no_grad():
        a = tiny_sd15(x, hint, t, ctx)
        b = tiny_sd15(x, None, t, ctx, guided_hint=tiny_sd15.encode_hint(hint))
    assert all(torch.equal(p, q) for p, q in zip(a["output"] + a["middle"], b["output"] + b["middle"]))


def test_encode_hint_independent_of_x_t_text(tiny_sd15):
    _, hint, _, _, _ = inputs(tiny_sd15.config)
    with torch.no_grad():
        g = tiny_sd15.encode_hint(hint)
    assert g.shape == (2, tiny_sd15.config.model_channels, 16, 16) and g.abs().max() > 0


def test_hint_batch_one_broadcasts(tiny_sd15):
    x, hint, t, ctx, _ = inputs(tiny_sd15.config)
    with torch.no_grad():
        one = tiny_sd15(x, hint[:1], t, ctx)
        rep = tiny_sd15(x, hint[:1].expand(2, -1, -1, -1).contiguous(), t, ctx)
    for p, q in zip(one["output"] + one["middle"], rep["output"] + rep["middle"]):
        assert rel_diff(p, q) <= 1e-6


def test_forward_errors_name_the_fix(tiny_sd15):
    x, hint, t, ctx, _ = inputs(tiny_sd15.config)
    with pytest.raises(ControlNetError, match="neither hint nor guided_hint"):
        tiny_sd15(x, None, t, ctx)
    with pytest.raises(ControlNetError, match="8x the latent"):
        tiny_sd15(x, hint[..., :64, :64], t, ctx)
    with pytest.raises(ControlNetError, match="movedim"):
        tiny_sd15.encode_hint(hint.movedim(1, -1))
    sdxl = ControlNet(ControlNetConfig.from_state_dict(random_controlnet_state_dict("tiny-sdxl")))
    with pytest.raises(ControlNetError, match="needs y"):
        sdxl(x, hint, t, torch.randn(2, 7, 2048))


# ---------------------------------------------------------------------------------------------------------------------
# Primitives against independent formulas
# ---------------------------------------------------------------------------------------------------------------------


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.0, 250.0, 999.0])
    ref = get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.allclose(timestep_embedding(t, 320), ref, rtol=0, atol=1e-6)


def test_group_norm_runs_in_float32():
    norm = GroupNorm32(32, 64).half()
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
        x = (torch.randn(2, 64, 8, 8) * 30 + 5).half()
        ref = F.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), 1e-5).half()
        assert torch.equal(norm(x), ref)


def _einsum_attention(attn: CrossAttention, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """The reference's explicit path: q k^T * d^-0.5 in fp32, softmax in fp32, then @ v (ldm attention.py)."""
    h = attn.heads
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    q, k, v = (z.unflatten(-1, (h, -1)).transpose(1, 2) for z in (q, k, v))
    sim = torch.einsum("bhid,bhjd->bhij", q.float(), k.float()) * q.shape[-1] ** -0.5
    out = torch.einsum("bhij,bhjd->bhid", sim.softmax(-1).to(v.dtype), v)
    return attn.to_out(out.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_sdpa_attention_matches_explicit_fp32_softmax(dtype, tol):
    """SDPA vs the reference's einsum path with fp32 softmax; in half precision SDPA is no further from fp32."""
    torch.manual_seed(0)
    attn = CrossAttention(64, 96, heads=4, dim_head=16)
    x, ctx = torch.randn(2, 50, 64) * 3, torch.randn(2, 11, 96) * 3
    with torch.no_grad():
        ref = _einsum_attention(attn, x, ctx)  # fp32 reference
        attn.to(dtype)
        got = attn(x.to(dtype), ctx.to(dtype)).float()
        explicit = _einsum_attention(attn, x.to(dtype), ctx.to(dtype)).float()
    assert rel_diff(got, ref) <= tol
    if dtype != torch.float32:
        assert rel_diff(got, ref) <= 1.25 * rel_diff(explicit, ref)

"""Effect mask, control modes and schedules through the real host (their math is unit-tested in tests/core)."""
from __future__ import annotations

import logging

import pytest
import torch

from tests.host import graphs as G
from tests.host.graphs import TOLERANCE, effect_ratio

log = logging.getLogger(__name__)
SD15_RESIDUALS = 13  # 12 skips + middle


def _half_mask(b: G.Base, size: int = 64) -> list:
    """MASK (1, size, size): 1 on the left half, 0 on the right (host nodes only)."""
    zeros = b.graph.add("SolidMask", value=0.0, width=size, height=size)
    left = b.graph.add("SolidMask", value=1.0, width=size // 2, height=size)
    return b.graph.out(b.graph.add("MaskComposite", destination=b.graph.out(zeros), source=b.graph.out(left), x=0,
                                   y=0, operation="add"))


def _batch_mask(b: G.Base, size: int = 64) -> list:
    """MASK (2, size, size): item 0 all ones, item 1 all zeros (host nodes only)."""
    white = b.graph.add("EmptyImage", width=size, height=size, batch_size=1, color=0xFFFFFF)
    black = b.graph.add("EmptyImage", width=size, height=size, batch_size=1, color=0)
    both = b.graph.add("ImageBatch", image1=b.graph.out(white), image2=b.graph.out(black))
    return b.graph.out(b.graph.add("ImageToMask", image=b.graph.out(both), channel="red"))


def _energy(delta: torch.Tensor) -> tuple[float, float]:
    """Effect norm on the left and right halves of the latent."""
    w = delta.shape[-1] // 2
    return float(delta[..., :w].norm()), float(delta[..., w:].norm())


@pytest.fixture(scope="module")
def half_strength(server) -> torch.Tensor:
    """The host's own ControlNet at strength 0.5 (reference for masks and schedules that halve the control)."""
    b = G.base()
    G.sample(b, *G.apply(b, "ControlNetApplyAdvanced", G.native_loader(b), b.positive, b.negative, strength=0.5),
             "half_native")
    return server.run_latents(b.graph.prompt())["half_native"]


def test_mask_scales_and_confines_the_effect(server, reference, half_strength):
    b = G.base()
    loader = G.core_loader(b)
    masks = {"mask_zero": b.graph.out(b.graph.add("SolidMask", value=0.0, width=64, height=64)),
             "mask_half_value": b.graph.out(b.graph.add("SolidMask", value=0.5, width=64, height=64)),
             "mask_left": _half_mask(b)}
    for prefix, mask in masks.items():
        G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", loader, b.positive, b.negative, mask=mask), prefix)
    out = server.run_latents(b.graph.prompt())
    none, full = reference["ref_none"], reference["ref_ours"]
    assert torch.equal(out["mask_zero"], none)  # mask 0 everywhere = no control at all
    assert effect_ratio(out["mask_half_value"], half_strength, none) <= TOLERANCE  # mask 0.5 = strength 0.5
    # Left-half mask: the U-Net's global self-attention spreads any residual over the whole 8x8 latent, so the
    # effect is not zero on the right; but it must lean left, clearly more than the unmasked effect does.
    left_m, right_m = _energy(out["mask_left"] - none)
    left_f, right_f = _energy(full - none)
    log.info("mask: effect left/right %.3g (masked) vs %.3g (unmasked)", left_m / right_m, left_f / right_f)
    assert left_m / right_m > 1.25 * (left_f / right_f)


def test_mask_is_per_batch_item(server):
    b = G.base(batch=2)
    G.sample(b, b.positive, b.negative, "maskb_none")
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b), b.positive, b.negative, mask=_batch_mask(b)),
             "maskb_ours")
    out = server.run_latents(b.graph.prompt())
    none, ours = out["maskb_none"], out["maskb_ours"]
    assert (ours[0] - none[0]).norm() > 1e-3 * none[0].norm()  # item 0: mask 1, controlled
    torch.testing.assert_close(ours[1], none[1], rtol=1e-5, atol=1e-5 * float(none.abs().max()))  # item 1: mask 0


def test_control_modes(server, reference):
    b = G.base()
    loader = G.core_loader(b)
    soft = ", ".join(f"{0.825 ** (SD15_RESIDUALS - 1 - i):.9f}" for i in range(SD15_RESIDUALS))
    variants = {
        "mode_prompt": G.control_strength(b, "My prompt is more important"),
        "mode_controlnet": G.control_strength(b, "ControlNet is more important"),
        "mode_prompt_uncond0": G.control_strength(b, "My prompt is more important", uncond_multiplier=0.0),
        "mode_balanced_soft": G.control_strength(b, "Balanced", block_multipliers=soft),
    }
    for prefix, weights in variants.items():
        G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", loader, b.positive, b.negative, control_strength=weights), prefix)
    for prefix, mode in (("cfg1_prompt", "My prompt is more important"),
                         ("cfg1_controlnet", "ControlNet is more important")):
        pos, neg = G.apply(b, "CNCore_ApplyControlNet", loader, b.positive, b.negative,
                           control_strength=G.control_strength(b, mode))
        G.sample(b, pos, neg, prefix, cfg=1.0)
    out = server.run_latents(b.graph.prompt())
    none, balanced = reference["ref_none"], reference["ref_ours"]
    effect = (balanced - none).norm()
    # soft weights are the documented 0.825 ** (12 - i), shallowest skip first, middle block 1
    torch.testing.assert_close(out["mode_prompt"], out["mode_balanced_soft"], rtol=1e-4, atol=1e-4 * float(effect))
    assert (out["mode_prompt"] - balanced).norm() > 0.05 * effect
    # ControlNet is more important = the soft weights and nothing on the unconditional rows
    assert torch.equal(out["mode_controlnet"], out["mode_prompt_uncond0"])
    assert (out["mode_controlnet"] - out["mode_prompt"]).norm() > 0.01 * effect
    # at cfg 1 the host runs no unconditional rows: the two soft modes coincide
    torch.testing.assert_close(out["cfg1_controlnet"], out["cfg1_prompt"], rtol=0, atol=0)


# 3 normal-scheduler steps sit at percents 0, ~0.5 and ~1 (sigma_min). Strength 1 at the first, 0.25 around the
# second, 0 at the end: not symmetric, so a reversed sigma->percent mapping gives 0, 0.25, 1 instead.
STEP_SCHEDULE = "0:1, 0.4:1, 0.45:0.25, 0.55:0.25, 0.6:0, 1:0"


def test_schedule_follows_the_host_sigma_to_percent_mapping(server, reference):
    """A schedule that differs per percent equals two host ControlNets whose windows (converted to sigmas by the
    host's own percent_to_sigma) hold strength 1 over [0, 0.4] and 0.25 over [0.45, 0.55]."""
    b = G.base()
    weights = G.control_strength(b, "Balanced", schedule=STEP_SCHEDULE)
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b), b.positive, b.negative,
                         control_strength=weights), "sched_ours", steps=3)
    native = G.native_loader(b)
    pos, neg = G.apply(b, "ControlNetApplyAdvanced", native, b.positive, b.negative, strength=1.0, start=0.0, end=0.4)
    G.sample(b, pos, neg, "sched_first_only", steps=3)
    G.sample(b, *G.apply(b, "ControlNetApplyAdvanced", native, pos, neg, strength=0.25, start=0.45, end=0.55),
             "sched_native", steps=3)
    out = server.run_latents(b.graph.prompt())
    ratio = effect_ratio(out["sched_ours"], out["sched_native"], out["sched_first_only"])
    log.info("schedule %r: |ours - native windows| / |0.25 window's effect| = %.3g", STEP_SCHEDULE, ratio)
    assert ratio <= TOLERANCE  # measured against the middle step's own effect: not vacuous

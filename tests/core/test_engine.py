"""Residual engine (controlnet_core/engine.py): caches and in-place sums change no number, cond-only, masks,
resize modes, windows, residual reuse, family check.

Exactness: where the engine and the reference run the same ops in the same order (same net batch, same
`add_(alpha)` / `mul_`) the test asserts torch.equal. Running the net on fewer rows (cond-only) changes the CPU
kernels' blocking, which moves results by ~1e-6 of the tensor's scale (measured 7.7e-7): those comparisons use
REL_BATCH below and say so.
"""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from controlnet_core.controlnet import ControlNet, ControlNetConfig
from controlnet_core.engine import (Control, ResidualEngine, center_crop_box, check_family, prepare_for_device,
                                    resize_hint)
from controlnet_core.errors import ControlNetError, FamilyMismatchError
from controlnet_core.weights import ControlWeights, parse_schedule
from tests.fixtures import random_controlnet_state_dict

REL_BATCH = 2e-6  # max |a - b| / max |a| allowed when only the net's batch size differs (see module docstring)
H = W = 8  # latent size; hints are 8x


def make_net(spec="tiny-sd15", seed=0, dtype=torch.float32):
    sd = random_controlnet_state_dict(spec, seed, dtype=dtype)
    net = ControlNet(ControlNetConfig.from_state_dict(sd))
    net.load_state_dict(sd)
    return net.eval()


@pytest.fixture(scope="module")
def net():
    return make_net()


@pytest.fixture(scope="module")
def net2():
    return make_net(seed=1)


def inputs(batch=2, ctx=768, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, H, W, generator=g)
    t = torch.linspace(900, 100, batch)
    c = torch.randn(batch, 5, ctx, generator=g)
    return x, t, c


def hint_image(batch=1, h=8 * H, w=8 * W, seed=3):
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def flat(res):
    return [*res["output"], *res["middle"]]


def plain(net, x, hint, t, c, y=None):
    with torch.no_grad():
        return flat(net(x, hint, t, c, y))


def count_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    return calls, handle


def rel(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


# ------------------------------------------------------------------------------------------------ exactness

def test_one_control_at_scale_one_is_the_plain_path_bit_for_bit(net):
    x, t, c = inputs()
    hint = hint_image()
    control = Control(net, hint)
    ref = plain(net, x, hint, t, c)
    for _ in range(3):  # first call fills the hint cache, the next two use it
        got = flat(ResidualEngine()([control], x, t, c, uncond_rows=[False, True], percent=0.5))
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert len(ref) == 7 and all(r.abs().max() > 0.1 for r in ref)  # zero convs random: not vacuous


def test_scaled_sum_of_two_controls_equals_the_plain_path(net, net2):
    x, t, c = inputs()
    h1, h2 = hint_image(seed=1), hint_image(seed=2)
    soft = ControlWeights(mode="prompt")
    controls = [Control(net, h1, strength=0.7), Control(net2, h2, strength=1.3, weights=soft)]
    got = flat(ResidualEngine()(controls, x, t, c, uncond_rows=None, percent=0.0))
    r1, r2 = plain(net, x, h1, t, c), plain(net2, x, h2, t, c)
    s2 = [1.3 * w for w in soft.block_scales(7)]
    same_order = [torch.add(a * 0.7, b, alpha=s) for a, b, s in zip(r1, r2, s2)]  # the engine's op order
    assert all(torch.equal(g, e) for g, e in zip(got, same_order))
    naive = [a * 0.7 + b * s for a, b, s in zip(r1, r2, s2)]  # separate multiplies: may differ by FMA rounding
    assert max(rel(n, g) for n, g in zip(naive, got)) <= 1e-6
    assert max(rel(a * 0.7, g) for a, g in zip(r1, got)) > 0.01  # the second control really contributes


def test_first_residual_becomes_the_buffer_and_later_ones_add_in_place(net, net2):
    x, t, c = inputs()
    captured = []
    handle = net.register_forward_hook(lambda m, a, out: captured.append(flat(out)))
    try:
        got = ResidualEngine()([Control(net, hint_image()), Control(net2, hint_image(seed=5))], x, t, c,
                               uncond_rows=None, percent=0.3)
    finally:
        handle.remove()
    assert all(a is b for a, b in zip(captured[0], flat(got)))  # no copy, no new residual set


def test_out_is_accumulated_in_place(net):
    x, t, c = inputs()
    hint = hint_image()
    prev = {k: [torch.randn_like(r) for r in v] for k, v in net(x, hint, t, c).items()}
    before = [r.clone() for r in flat(prev)]
    ptrs = [r.data_ptr() for r in flat(prev)]
    got = ResidualEngine()([Control(net, hint, strength=0.5)], x, t, c, uncond_rows=None, percent=0.0, out=prev)
    assert got is prev and [r.data_ptr() for r in flat(got)] == ptrs
    ref = plain(net, x, hint, t, c)
    assert all(torch.equal(g, torch.add(b, r, alpha=0.5)) for g, b, r in zip(flat(got), before, ref))


def test_inactive_controls_return_out_untouched_or_none(net):
    x, t, c = inputs()
    calls, handle = count_calls(net)
    try:
        off = [Control(net, hint_image(), strength=0.0), Control(net, hint_image(), start_percent=0.5)]
        assert ResidualEngine()(off, x, t, c, uncond_rows=None, percent=0.2) is None
        prev = {"output": [torch.ones(2, 1)], "middle": [torch.ones(2, 1)]}
        assert ResidualEngine()(off, x, t, c, uncond_rows=None, percent=0.2, out=prev) is prev
        assert torch.equal(prev["output"][0], torch.ones(2, 1))
    finally:
        handle.remove()
    assert calls == []


# ------------------------------------------------------------------------------------------------ cond-only

@pytest.mark.parametrize("uncond_rows", [[False, True], [True, False], [False, True, False, True]])
def test_cond_only_equals_full_batch_with_uncond_zeroed(net, uncond_rows):
    batch = len(uncond_rows)
    x, t, c = inputs(batch)
    hint = hint_image()
    weights = ControlWeights(mode="controlnet")
    calls, handle = count_calls(net)
    try:
        got = flat(ResidualEngine()([Control(net, hint, strength=0.8, weights=weights)], x, t, c,
                                    uncond_rows=uncond_rows, percent=0.0, batched_number=2))
    finally:
        handle.remove()
    cond = [i for i, u in enumerate(uncond_rows) if not u]
    assert calls == [len(cond)]  # the net ran on the conditional rows only: half the FLOPs
    scales = [0.8 * w for w in weights.block_scales(7)]
    mult = torch.tensor([0.0 if u else 1.0 for u in uncond_rows]).view(-1, 1, 1, 1)
    full = [r * mult * s for r, s in zip(plain(net, x, hint, t, c), scales)]  # uncond control multiplied by 0
    for g, f in zip(got, full):
        assert torch.equal(g[torch.tensor(uncond_rows)], torch.zeros_like(g[torch.tensor(uncond_rows)]))
        assert rel(f, g) <= REL_BATCH  # only the net's batch size differs
    same_batch = plain(net, x[cond], hint, t[cond], c[cond])
    for g, r, s in zip(got, same_batch, scales):
        assert torch.equal(g[cond], torch.zeros_like(r).add_(r, alpha=s))  # bit for bit at the same batch


def test_uncond_multiplier_zero_in_balanced_mode_also_skips_uncond_rows(net):
    x, t, c = inputs()
    calls, handle = count_calls(net)
    try:
        got = flat(ResidualEngine()([Control(net, hint_image(), weights=ControlWeights(uncond_multiplier=0.0))],
                                    x, t, c, uncond_rows=[False, True], percent=0.0))
    finally:
        handle.remove()
    assert calls == [1] and all(torch.count_nonzero(g[1]) == 0 and g[0].abs().max() > 0 for g in got)


def test_fractional_uncond_multiplier_scales_uncond_rows(net):
    x, t, c = inputs()
    hint = hint_image()
    got = flat(ResidualEngine()([Control(net, hint, strength=2.0, weights=ControlWeights(uncond_multiplier=0.25))],
                                x, t, c, uncond_rows=[False, True], percent=0.0))
    for g, r in zip(got, plain(net, x, hint, t, c)):
        assert torch.equal(g[0], r[0] * 2.0)
        assert rel(r[1] * 0.5, g[1]) <= 1e-6  # 0.25 x 2.0, folded into one multiply


def test_chain_with_cond_only_control_adds_into_cond_rows_only(net, net2):
    x, t, c = inputs()
    h1, h2 = hint_image(seed=1), hint_image(seed=2)
    got = flat(ResidualEngine()([Control(net, h1), Control(net2, h2, weights=ControlWeights(mode="controlnet"))],
                                x, t, c, uncond_rows=[False, True], percent=0.0))
    r1 = plain(net, x, h1, t, c)
    soft = ControlWeights(mode="controlnet").block_scales(7)
    r2 = plain(net2, x[:1], h2, t[:1], c[:1])
    for g, a, b, s in zip(got, r1, r2, soft):
        assert torch.equal(g[1], a[1])  # uncond row: first control only
        assert torch.equal(g[0], torch.add(a[0], b[0], alpha=s))


# ------------------------------------------------------------------------------------------------ hint cache

def test_hint_encoder_runs_once_per_size_and_the_cache_is_bounded(net):
    control = Control(net, hint_image(h=64, w=96))
    calls, handle = count_calls(net.input_hint_block)
    try:
        engine = ResidualEngine()
        for step in range(4):  # 4 steps at one size: one encoder pass
            engine([control], *inputs(), uncond_rows=None, percent=step / 4)
        assert calls == [1]
        for size in (4, 6, 10, 12, 14):  # five more sizes through a 4-entry cache
            x = torch.randn(2, 4, size, size)
            engine([control], x, torch.tensor([1.0, 1.0]), torch.randn(2, 5, 768), uncond_rows=None, percent=0.0)
        assert len(calls) == 6 and len(control._hints) == 4
        engine([control], *inputs(), uncond_rows=None, percent=0.0)  # size 8 was evicted (least recent)
        assert len(calls) == 7
        engine([control], torch.randn(2, 4, 14, 14), torch.tensor([1.0, 1.0]), torch.randn(2, 5, 768),
               uncond_rows=None, percent=0.0)  # size 14 still cached
        assert len(calls) == 7
    finally:
        handle.remove()


def test_hint_is_encoded_at_its_own_batch_and_broadcast(net):
    x, t, c = inputs(4)
    hint = hint_image(batch=2)
    calls, handle = count_calls(net.input_hint_block)
    try:
        got = flat(ResidualEngine()([Control(net, hint)], x, t, c, uncond_rows=[False, False, True, True],
                                    percent=0.0, batched_number=2))
    finally:
        handle.remove()
    assert calls == [2]  # not 4
    with torch.no_grad():
        g = net.encode_hint(hint)
        ref = flat(net(x, None, t, c, guided_hint=g[[0, 1, 0, 1]]))  # host rule: image i in every chunk
    assert all(torch.equal(a, b) for a, b in zip(ref, got))


def test_changed_hint_invalidates_the_cache(net):
    x, t, c = inputs()
    control = Control(net, hint_image())
    ResidualEngine()([control], x, t, c, uncond_rows=None, percent=0.0)
    control.hint.mul_(0.5)  # edited in place
    got = flat(ResidualEngine()([control], x, t, c, uncond_rows=None, percent=0.0))
    assert all(torch.equal(a, b) for a, b in zip(plain(net, x, control.hint, t, c), got))
    control.hint = hint_image(seed=9)  # replaced
    got = flat(ResidualEngine()([control], x, t, c, uncond_rows=None, percent=0.0))
    assert all(torch.equal(a, b) for a, b in zip(plain(net, x, control.hint, t, c), got))


def test_cache_is_freed_with_the_control(net):
    control = Control(net, hint_image())
    ResidualEngine()([control], *inputs(), uncond_rows=None, percent=0.0)
    cached = weakref.ref(next(iter(control._hints.values()))[2])
    assert cached() is not None
    del control
    gc.collect()
    assert cached() is None


# ------------------------------------------------------------------------------------------------ weights

def test_soft_weights_and_schedule_reach_each_residual(net):
    x, t, c = inputs()
    hint = hint_image()
    weights = ControlWeights(mode="prompt", schedule=parse_schedule("linear:1.0,0.0"))
    got = flat(ResidualEngine()([Control(net, hint, strength=1.5, weights=weights)], x, t, c, uncond_rows=None,
                                percent=0.25))
    for i, (g, r) in enumerate(zip(got, plain(net, x, hint, t, c))):
        assert torch.equal(g, r * (1.5 * 0.75 * 0.825 ** (6 - i)))


def test_sdxl_convention_in_the_engine():
    net = make_net("tiny-sdxl")
    x, t, c = inputs(ctx=2048)
    y = torch.randn(2, 2816)
    hint = hint_image()
    got = flat(ResidualEngine()([Control(net, hint, weights=ControlWeights(mode="prompt"))], x, t, c, y,
                                uncond_rows=None, percent=0.0))
    ref = plain(net, x, hint, t, c, y)
    assert len(got) == 10
    for i, (g, r) in enumerate(zip(got, ref)):
        assert torch.equal(g, r * 0.825 ** (9 - i))  # middle block keeps 1.0


def test_window_and_schedule_decide_activity_without_touching_tensors():
    meta_hint = torch.empty(1, 3, 64, 64, device="meta")  # any tensor access would fail or need a sync
    control = Control(torch.nn.Identity(), meta_hint, start_percent=0.2, end_percent=0.6,
                      weights=ControlWeights(schedule=parse_schedule("0.0:1.0, 0.5:1.0, 0.5:0.0")))
    assert [control.active(p) for p in (0.1, 0.2, 0.4, 0.5, 0.6, 0.7)] == [False, True, True, False, False, False]
    assert Control(torch.nn.Identity(), meta_hint, end_percent=0.6).active(0.6)  # window inclusive
    assert not Control(torch.nn.Identity(), meta_hint, strength=0.0).active(0.5)
    x = torch.empty(2, 4, 8, 8, device="meta")
    assert ResidualEngine()([control], x, x[:, 0, 0, 0], x, uncond_rows=None, percent=0.9) is None


# ------------------------------------------------------------------------------------------------ masks

def area(mask, h, w):
    """Independent area resize for integer factors: mean over each block."""
    m, mh, mw = mask.shape
    return mask.reshape(m, h, mh // h, w, mw // w).mean(dim=(2, 4))


def test_mask_is_area_resized_to_each_block_per_batch_item(net):
    x, t, c = inputs(4)
    hint = hint_image()
    mask = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(4))
    got = flat(ResidualEngine()([Control(net, hint, mask=mask)], x, t, c, uncond_rows=[False, False, True, True],
                                percent=0.0, batched_number=2))
    ref = plain(net, x, hint, t, c)
    for g, r in zip(got, ref):
        m = area(mask, *r.shape[-2:])[[0, 1, 0, 1]].unsqueeze(1)  # image i's mask in each chunk
        assert rel(r * m, g) <= 1e-6
    assert {tuple(r.shape[-2:]) for r in ref} == {(8, 8), (4, 4)}  # two block resolutions exercised


def test_single_mask_broadcasts_and_small_masks_are_bilinear(net):
    x, t, c = inputs()
    hint = hint_image()
    mask = torch.tensor([[0.0, 1.0], [1.0, 0.5]])  # (H, W), smaller than every block: bilinear up
    got = flat(ResidualEngine()([Control(net, hint, mask=mask, weights=ControlWeights(uncond_multiplier=0.5))],
                                x, t, c, uncond_rows=[False, True], percent=0.0))
    for g, r in zip(got, plain(net, x, hint, t, c)):
        up = F.interpolate(mask[None, None], size=r.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        assert rel(r[0] * up, g[0]) <= 1e-6 and rel(r[1] * up * 0.5, g[1]) <= 1e-6


def test_mask_batch_must_match_or_divide(net):
    x, t, c = inputs(4)
    control = Control(net, hint_image(), mask=torch.rand(3, 64, 64))
    with pytest.raises(ControlNetError, match="mask batch 3 neither matches nor divides the image batch 2"):
        ResidualEngine()([control], x, t, c, uncond_rows=[False, False, True, True], percent=0.0, batched_number=2)
    ok = Control(net, hint_image(), mask=torch.rand(2, 64, 64))  # 2 divides the image batch 4
    assert ResidualEngine()([ok], x, t, c, uncond_rows=None, percent=0.0) is not None


# ------------------------------------------------------------------------------------------------ resize modes

def host_center_crop(img, height, width):
    """The host's common_upscale(..., "center") crop, written from its definition: keep the centre region with the
    target aspect, margin = round(half the excess) on the long side, then nearest-exact resize."""
    h, w = img.shape[-2:]
    if w * height > h * width:  # wider than the target
        keep = w * (width / height) / (w / h)
        x0, y0 = round((w - keep) / 2), 0
    elif w * height < h * width:
        keep = h * (w / h) / (width / height)
        x0, y0 = 0, round((h - keep) / 2)
    else:
        x0 = y0 = 0
    crop = img[..., y0:h - y0, x0:w - x0]
    return F.interpolate(crop, size=(height, width), mode="nearest-exact")


@pytest.mark.parametrize("src, dst", [((100, 60), (64, 64)), ((50, 120), (64, 96)), ((64, 64), (32, 96)),
                                      ((37, 91), (48, 40)), ((64, 64), (64, 64))])
def test_crop_matches_the_host_center_crop(src, dst):
    img = torch.rand(2, 3, *src)
    assert torch.equal(resize_hint(img, *dst, "crop"), host_center_crop(img, *dst))
    top, left, ch, cw = center_crop_box(*src, *dst)
    assert abs(cw * dst[0] - ch * dst[1]) <= 2 * max(dst) and (top == 0 or left == 0)  # aspect, to the pixel


def test_just_resize_and_fill():
    img = torch.rand(1, 3, 40, 80) + 0.1  # 2:1, strictly positive so padding is visible
    stretched = resize_hint(img, 64, 64, "just_resize")
    assert torch.equal(stretched, F.interpolate(img, size=(64, 64), mode="nearest-exact"))
    filled = resize_hint(img, 64, 64, "fill")  # fits as 32 x 64, centred, bars above and below
    assert filled.shape == (1, 3, 64, 64)
    border = torch.cat([img[..., 0, :], img[..., -1, :], img[..., :, 0], img[..., :, -1]], dim=-1)
    colour = border.median(dim=-1).values[:, :, None, None]  # (1, 3, 1, 1): the border's median colour
    assert torch.equal(filled[..., :16, :], colour.expand(-1, -1, 16, 64))
    assert torch.equal(filled[..., 48:, :], colour.expand(-1, -1, 16, 64))
    assert torch.equal(filled[..., 16:48, :], F.interpolate(img, size=(32, 64), mode="nearest-exact"))
    black = torch.zeros(1, 3, 40, 80)
    black[..., 10:30, 20:60] = 1.0  # an edge hint: black border -> black bars, as before
    assert torch.count_nonzero(resize_hint(black, 64, 64, "fill")[..., :16, :]) == 0


def test_resize_and_fill_means_the_same_in_apply_and_the_preprocessor():
    """One meaning of "Resize and Fill": the engine's bars are the Preprocessor's fill colour."""
    from controlnet_core.preprocess.resize import fit

    img = torch.rand(2, 3, 40, 80)
    ours = resize_hint(img, 64, 64, "fill")
    theirs = fit(img.movedim(1, -1), 64, 64, "Resize and Fill").movedim(-1, 1)
    assert torch.equal(ours[..., :16, :], theirs[..., :16, :]) and torch.equal(ours[..., 48:, :], theirs[..., 48:, :])
    with pytest.raises(ControlNetError, match="stretch"):
        resize_hint(img, 64, 64, "stretch")


def test_engine_uses_the_resized_hint(net):
    x, t, c = inputs()
    hint = hint_image(h=100, w=60)
    for mode in ("crop", "fill", "just_resize"):
        got = flat(ResidualEngine()([Control(net, hint, resize_mode=mode)], x, t, c, uncond_rows=None, percent=0.0))
        ref = plain(net, x, resize_hint(hint, 8 * H, 8 * W, mode), t, c)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))


# ------------------------------------------------------------------------------------------------ reuse

def test_reuse_every_k_recomputes_on_the_right_calls(net):
    hint = hint_image()
    control = Control(net, hint, reuse_steps=2, weights=ControlWeights(schedule=parse_schedule("linear:1.0,0.5")))
    calls, handle = count_calls(net)
    outs = []
    try:
        for step in range(5):
            x, t, c = inputs(seed=step)
            outs.append(flat(ResidualEngine()([control], x, t, c, uncond_rows=None, percent=step / 4)))
        assert len(calls) == 3  # steps 0, 2, 4 computed; 1 and 3 reused
        for step in (1, 3):
            x, t, c = inputs(seed=step - 1)
            first = plain(net, x, hint, t, c)
            scale = 1.0 - 0.5 * step / 4
            assert all(torch.equal(o, r * scale) for o, r in zip(outs[step], first))  # last residuals, new scale
        assert all(a is not b for a, b in zip(outs[0], outs[1]))  # kept residuals are never handed out
        del calls[:]
        x, t, c = inputs(seed=0)
        ResidualEngine()([control], x, t, c, uncond_rows=None, percent=0.0)  # new run: percent went back
        assert len(calls) == 1
        exact = Control(net, hint)  # reuse_steps=1: every call computes
        for step in range(3):
            ResidualEngine()([exact], *inputs(seed=step), uncond_rows=None, percent=step / 4)
        assert len(calls) == 4
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------------ misc

def test_family_check_names_both_families_and_the_fix():
    sd15 = ControlNetConfig()
    check_family(sd15, context_dim=768, adm_in_channels=None, model_channels=320)
    with pytest.raises(FamilyMismatchError, match=r"SD1.x \(context 768\) but the model is SDXL.*load a ControlNet "
                                                  r"made for SDXL"):
        check_family(sd15, context_dim=2048, adm_in_channels=2816, model_channels=320)
    with pytest.raises(FamilyMismatchError, match="SD2.x"):
        check_family(sd15, context_dim=1024, adm_in_channels=None, model_channels=320)
    with pytest.raises(FamilyMismatchError, match="model_channels 320 but the model has 384"):
        check_family(sd15, context_dim=768, adm_in_channels=None, model_channels=384)


def test_fp16_file_prepared_once_to_the_compute_dtype(net):
    sd = random_controlnet_state_dict("tiny-sd15", 0, dtype=torch.float16)
    half = ControlNet(ControlNetConfig.from_state_dict(sd)).to(torch.float16)
    half.load_state_dict(sd)
    assert half.dtype == torch.float16
    prepared = prepare_for_device(half, "cpu", torch.float32)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in prepared.parameters())
    x, t, c = inputs()
    got = flat(ResidualEngine()([Control(prepared, hint_image())], x, t, c, uncond_rows=None, percent=0.0))
    assert all(g.dtype == torch.float32 for g in got)
    assert max(rel(a, b) for a, b in zip(plain(net, x, hint_image(), t, c), got)) < 2e-3  # fp16-rounded weights


def test_bad_arguments_raise_clear_errors(net):
    x, t, c = inputs()
    with pytest.raises(ControlNetError, match="uncond_rows has 3 entries"):
        ResidualEngine()([Control(net, hint_image())], x, t, c, uncond_rows=[False] * 3, percent=0.0)
    with pytest.raises(ControlNetError, match="Python float"):
        ResidualEngine()([Control(net, hint_image())], x, t, c, uncond_rows=None, percent=torch.tensor(0.5))
    with pytest.raises(ControlNetError, match="resize_mode"):
        Control(net, hint_image(), resize_mode="stretch")
    with pytest.raises(ControlNetError, match="reuse_steps"):
        Control(net, hint_image(), reuse_steps=0)
    with pytest.raises(ControlNetError, match="start_percent"):
        Control(net, hint_image(), start_percent=0.8, end_percent=0.2)
    with pytest.raises(ControlNetError, match=r"\(B, 3, H, W\)"):
        Control(net, torch.rand(64, 64, 3))

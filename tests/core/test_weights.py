"""Control modes, soft weights, schedules (controlnet_core/weights.py, docs/weights.md)."""
import math

import pytest

from controlnet_core.errors import ControlNetError
from controlnet_core.weights import MODES, ControlWeights, Schedule, parse_schedule


def test_modes_map_node_labels_to_internal_names():
    assert MODES == {"Balanced": "balanced", "My prompt is more important": "prompt",
                     "ControlNet is more important": "controlnet"}
    for label, mode in MODES.items():
        assert ControlWeights(mode=mode).mode == mode
    with pytest.raises(ControlNetError, match="Balanced"):
        ControlWeights(mode="Balanced")  # the label is for nodes; the core takes the internal name


def test_balanced_is_one_everywhere():
    assert ControlWeights().block_scales(13) == (1.0,) * 13
    assert ControlWeights(base_multiplier=0.5).block_scales(10) == (1.0,) * 10  # base ignored in Balanced


@pytest.mark.parametrize("mode", ["prompt", "controlnet"])
def test_sd15_soft_weights_are_a1111(mode):
    # A1111 hook.py: scale_i = 0.825 ** (12 - i), i = 0 shallowest skip ... 12 middle block.
    scales = ControlWeights(mode=mode).block_scales(13)
    assert len(scales) == 13
    for i, s in enumerate(scales):
        assert s == pytest.approx(0.825 ** (12 - i), rel=1e-15)
    assert scales[0] == pytest.approx(0.09941, abs=1e-5) and scales[-1] == 1.0
    assert all(a < b for a, b in zip(scales, scales[1:]))  # strictly stronger with depth


def test_sdxl_convention_counts_from_the_middle_block():
    # docs/weights.md: exponent = residuals between this one and the middle block, so the middle keeps 1.0
    # (ACN's universal weights) and not A1111's truncated 13-list (middle 0.825**3).
    scales = ControlWeights(mode="prompt").block_scales(10)
    assert scales == tuple(0.825 ** (9 - i) for i in range(10))
    assert scales[-1] == 1.0 and scales[-2] == 0.825
    assert scales != ControlWeights(mode="prompt").block_scales(13)[:10]  # not the A1111 truncation


def test_base_multiplier_and_block_multipliers():
    w = ControlWeights(mode="prompt", base_multiplier=0.5, block_multipliers=(2.0, 0.0, 1.0, 3.0))
    assert w.block_scales(4) == (2.0 * 0.125, 0.0, 0.5, 3.0)
    b = ControlWeights(block_multipliers=[0.1] * 13)
    assert b.block_multipliers == (0.1,) * 13  # normalised to a tuple: the dataclass stays hashable
    assert b.block_scales(13) == (0.1,) * 13
    with pytest.raises(ControlNetError, match="13 values"):
        b.block_scales(10)


def test_uncond_scale():
    assert ControlWeights().uncond_scale() == 1.0
    assert ControlWeights(uncond_multiplier=0.25).uncond_scale() == 0.25
    assert ControlWeights(mode="prompt", uncond_multiplier=0.25).uncond_scale() == 0.25
    assert ControlWeights(mode="controlnet", uncond_multiplier=0.7).uncond_scale() == 0.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ControlNetError, match="uncond_multiplier"):
            ControlWeights(uncond_multiplier=bad)
    with pytest.raises(ControlNetError, match="base_multiplier"):
        ControlWeights(base_multiplier=0.0)


def test_weights_are_frozen_and_hashable():
    w = ControlWeights(mode="prompt", schedule=parse_schedule("0:1, 1:0"))
    with pytest.raises(AttributeError):
        w.mode = "balanced"
    assert hash(w) == hash(ControlWeights(mode="prompt", schedule=parse_schedule("0.0:1.0, 1.0:0.0")))


def test_constant_linear_ease():
    assert parse_schedule("constant") == Schedule() and Schedule()(0.3) == 1.0
    assert parse_schedule("") == Schedule()
    assert parse_schedule("constant:0.4")(0.9) == 0.4
    lin = parse_schedule("linear:1.0,0.2")
    assert (lin(0.0), lin(1.0)) == (1.0, 0.2) and lin(0.5) == pytest.approx(0.6, abs=1e-12)
    ease = parse_schedule("Ease: 1.0, 0.0")
    assert (ease(0.0), ease(1.0)) == (1.0, 0.0) and ease(0.5) == pytest.approx(0.5)
    assert ease(0.1) == pytest.approx(1 - (3 * 0.01 - 2 * 0.001))  # smoothstep: flat near the ends
    assert ease(0.1) > 1 - 0.1  # slower than linear at the start
    assert lin(-1.0) == 1.0 and lin(2.0) == 0.2  # percent clamped to [0, 1]


def test_keyframes_interpolate_linearly_and_hold_outside():
    s = parse_schedule("0.2:1.0, 0.6:0.6")
    assert s.kind == "keyframes" and s.params == ((0.2, 1.0), (0.6, 0.6))
    assert s(0.0) == 1.0 and s(0.2) == 1.0  # held before the first keyframe
    assert s(0.4) == pytest.approx(0.8, abs=1e-12)
    assert s(0.6) == 0.6 and s(1.0) == 0.6  # held after the last
    unsorted = parse_schedule("0.5:0.6, 0.0:1.0")
    assert unsorted.params == ((0.0, 1.0), (0.5, 0.6))
    assert parse_schedule("keyframes: 0:1, 1:0")(0.25) == pytest.approx(0.75)


def test_repeated_keyframe_percent_is_a_step():
    s = parse_schedule("0.0:1.0, 0.5:1.0, 0.5:0.3, 1.0:0.3")
    assert s(0.49) == 1.0 and s(0.5) == 0.3 and s(0.75) == 0.3  # right-continuous jump


@pytest.mark.parametrize("text, match", [
    ("0.0:1.0, 0.5", "percent:value"),
    ("0.0:1.0, a:0.6", "percent:value"),
    ("0.0:1.0:2", "percent:value"),
    ("1.5:1.0", "outside"),
    ("linear:1.0", "2 value"),
    ("linear:1.0,x", "comma-separated"),
    ("ease:1,2,3", "2 value"),
    ("constant:nan", "finite"),
    ("wobble", "percent:value"),
])
def test_schedule_errors_name_the_text_and_the_syntax(text, match):
    with pytest.raises(ControlNetError, match=match) as info:
        parse_schedule(text)
    assert "linear:1.0,0.2" in str(info.value) or "outside" in str(info.value)


def test_schedule_constructor_validates():
    with pytest.raises(ControlNetError, match="unknown"):
        Schedule("cosine", (1.0,))
    with pytest.raises(ControlNetError, match="no keyframes"):
        Schedule("keyframes", ())
    with pytest.raises(ControlNetError, match="Schedule"):
        ControlWeights(schedule="linear:1,0")
    assert math.isclose(Schedule("linear", (0, 1))(0.3), 0.3)

"""The untrained demo: one PNG of the expected size; the control changes the sample only through the zero convs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from controlnet_core.__main__ import main
from controlnet_core.demo import (
    DemoSettings,
    build_models,
    canny_hint,
    canvas_size,
    controlled_minus_plain,
    run_demo,
    sample_image,
)

SMALL = DemoSettings(size=128, steps=3, seed=1)


@pytest.fixture(scope="module")
def hint() -> torch.Tensor:
    return canny_hint(sample_image(SMALL.size))


def test_hint_is_a_canny_edge_map(hint):
    assert hint.shape == (1, 3, SMALL.size, SMALL.size)
    assert set(hint.unique().tolist()) == {0.0, 1.0}
    assert 0.005 < hint.mean() < 0.2  # edges only, not a filled picture


def test_demo_writes_one_png_of_the_expected_size(tmp_path):
    out = tmp_path / "nested" / "demo.png"
    result = run_demo(out, SMALL)
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == canvas_size()
        pixels = np.asarray(picture.convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # panels were drawn, not a blank canvas
    assert result.path == out and result.max_difference > 0
    assert len(result.residual_magnitudes) == 10 and min(result.residual_magnitudes) > 0  # 3 levels: 9 + middle
    assert {"canny hint", "built U-Net + ControlNet", "picture"} <= set(result.seconds)


def test_control_changes_the_sample_only_through_non_zero_zero_convs(hint):
    controlled = controlled_minus_plain(build_models(SMALL, hint), hint, SMALL)
    assert controlled.shape == (1, 4, SMALL.size // 8, SMALL.size // 8)
    assert controlled.abs().max() > 1e-3
    at_init = dataclasses.replace(SMALL, zero_conv_scale=0.0)  # zero convs at zero, as the paper initialises them
    assert torch.count_nonzero(controlled_minus_plain(build_models(at_init, hint), hint, at_init)) == 0


def test_demo_is_deterministic_and_leaves_the_global_rng_alone(hint):
    state = torch.random.get_rng_state()
    first = controlled_minus_plain(build_models(SMALL, hint), hint, SMALL)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, controlled_minus_plain(build_models(SMALL, hint), hint, SMALL))
    other = dataclasses.replace(SMALL, seed=2)
    assert not torch.equal(first, controlled_minus_plain(build_models(other, hint), hint, other))


def test_demo_command(tmp_path, capsys):
    out = tmp_path / "cli.png"
    assert main(["demo", "--out", str(out), "--size", "64", "--steps", "1"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["demo", "--out", str(out), "--size", "100"]) == 1
    assert "multiple of 32" in capsys.readouterr().err

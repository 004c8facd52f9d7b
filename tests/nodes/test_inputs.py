"""nodes/inputs.py: the pure input parsing and checks behind the nodes (no host needed)."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from tests.nodes.schemas import REPO, pack_module

inputs = pack_module("nodes.inputs")
errors = pack_module("controlnet_core.errors")
preprocess = pack_module("controlnet_core.preprocess")


def test_preprocessor_options_are_scoped_to_the_selected_preprocessor():
    widgets = inputs.preprocessor_widgets()
    names = [w[0] for w in widgets]
    assert len(names) == len(set(names))
    given = {"canny.low_threshold": 50, "canny.high_threshold": 150, "straight_lines.low_threshold": 7,
             "resolution": 512, "lineart_standard.gaussian_sigma": 2.0}
    assert inputs.options_for("canny", given) == {"low_threshold": 50, "high_threshold": 150, "resolution": 512}
    assert inputs.options_for("straight_lines", given) == {"low_threshold": 7, "resolution": 512}


def test_option_defaults_lie_in_their_ranges():
    for name, owner, option in inputs.preprocessor_widgets():
        if option.kind in ("int", "float"):
            assert option.min <= option.default <= option.max, name
        if option.kind == "choice":
            assert option.default in option.choices, name


def test_default_widget_values_run_through_the_core():
    """What the node passes with untouched widgets is accepted by controlnet_core.preprocess.run."""
    image = torch.rand(1, 32, 32, 3)
    defaults = {name: o.default for name, _, o in inputs.preprocessor_widgets() if o.kind != "mask"}
    out = preprocess.run("canny", image, **inputs.options_for("canny", defaults))
    assert out.shape == (1, 32, 32, 3) and set(out.unique().tolist()) <= {0.0, 1.0}


def test_block_multipliers():
    assert inputs.parse_block_multipliers("") is None
    assert inputs.parse_block_multipliers(" 1, 0.5;0 ") == (1.0, 0.5, 0.0)
    with pytest.raises(errors.ControlNetError, match="not a comma-separated list"):
        inputs.parse_block_multipliers("1, half")
    assert len(inputs.parse_block_multipliers(", ".join(["1"] * 13))) == 13
    with pytest.raises(errors.ControlNetError, match="has 14 values; a control has at most 13"):
        inputs.parse_block_multipliers(", ".join(["1"] * 14))


@pytest.mark.parametrize("name, huge, fits, limit", [
    ("block_multipliers", "1," * 5_000_000, ", ".join(["0.5"] * 13), 1_024),
    ("schedule", "0:1, " * 2_000_000, "0:1, 0.5:0.2, 1:0", 65_536),
])
def test_ten_megabytes_of_text_is_refused_without_echoing_it(name, huge, fits, limit):
    """A 10 MB paste of valid syntax is refused at queue time (ControlStrength.validate_inputs' check), naming
    the input and the length; the answer stays one short sentence."""
    blank = {"block_multipliers": None, "schedule": None}
    problem = inputs.check_strength_texts(**blank | {name: huge})
    assert problem.startswith(f"{name} is {len(huge):,} characters long; at most {limit:,}") and len(problem) < 200
    assert inputs.check_strength_texts(**blank | {name: fits}) is None


def test_hint_from_image():
    image = torch.rand(2, 16, 24, 3)
    hint = inputs.hint_from_image(image)
    assert hint.shape == (2, 3, 16, 24) and torch.equal(hint, image.movedim(-1, 1))
    assert inputs.hint_from_image(torch.rand(1, 16, 16, 4)).shape == (1, 3, 16, 16)  # alpha dropped
    assert inputs.hint_from_image(torch.rand(1, 16, 16, 1)).shape == (1, 3, 16, 16)  # grey expanded


@pytest.mark.parametrize("image, message", [
    (torch.rand(0, 16, 16, 3), "empty"),
    (torch.rand(1, 1, 1, 3), "1x1 pixels"),
    (torch.rand(1, 0, 0, 3), "0x0 pixels"),
    (torch.full((1, 16, 16, 3), float("nan")), "NaN"),
    (torch.rand(16, 16, 3), "expected an IMAGE"),
])
def test_bad_images_are_refused(image, message):
    with pytest.raises(errors.ControlNetError, match=message):
        inputs.hint_from_image(image)


def test_effect_mask():
    assert inputs.effect_mask(None) is None
    assert inputs.effect_mask(torch.tensor([[2.0, -1.0]])).tolist() == [[1.0, 0.0]]
    with pytest.raises(errors.ControlNetError, match="NaN"):
        inputs.effect_mask(torch.full((1, 4, 4), float("nan")))
    with pytest.raises(errors.ControlNetError, match="expected a MASK"):
        inputs.effect_mask(torch.ones(1, 1, 4, 4))


def test_resize_modes_are_the_engines():
    engine = pack_module("controlnet_core.engine")
    assert sorted(inputs.RESIZE_MODES.values()) == sorted(engine.RESIZE_MODES)


@pytest.mark.skipif(shutil.which("node") is None, reason="node (JavaScript) is not installed")
def test_web_extension_parses():
    result = subprocess.run(["node", "--check", str(REPO / "web" / "controlnet_core.js")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr

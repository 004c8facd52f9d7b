"""The trained demo, shortened: it trains the toy ControlNet from the committed base, draws one PNG with hints,
samples and the metric curve, and reports `shape IoU A -> B after N steps`; the control changes nothing at step 0."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from controlnet_core.__main__ import main
from controlnet_core.demo import DemoSettings, run_demo

SHORT = DemoSettings(steps=4, eval_every=2, eval_size=8)


def test_demo_writes_the_picture_and_the_curve(tmp_path):
    out = tmp_path / "nested" / "demo.png"
    state = torch.random.get_rng_state()
    result = run_demo(out, SHORT)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert [s for s, _ in result.curve] == [0, 2, 4]
    assert all(0 <= m["iou"] <= 1 and 0 <= m["edge_f1"] <= 1 for _, m in result.curve)
    assert re.fullmatch(r"shape IoU \d\.\d\d -> \d\.\d\d after 4 steps", result.summary)
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 400 and picture.height > 400
        pixels = np.asarray(picture.convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # panels were drawn, not a blank canvas


def test_demo_is_deterministic(tmp_path):
    a = run_demo(tmp_path / "a.png", SHORT)
    b = run_demo(tmp_path / "b.png", SHORT)
    assert a.curve == b.curve


def test_demo_command(tmp_path, capsys):
    out = tmp_path / "cli.png"
    assert main(["demo", "--out", str(out), "--steps", "2", "--eval-every", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert out.is_file() and str(out) in lines[-2]
    assert re.fullmatch(r"shape IoU \d\.\d\d -> \d\.\d\d after 2 steps", lines[-1])
    assert main(["demo", "--out", str(out), "--steps", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err


def test_settings_refuse_a_too_small_eval_set():
    with pytest.raises(Exception, match="eval_size"):
        DemoSettings(eval_size=2)

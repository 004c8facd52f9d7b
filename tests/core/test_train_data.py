"""Training data: fill50k layout and paired folders, hints from files or from our preprocessors, prompts encoded
once."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from controlnet_core.toy.data import fill_circles
from controlnet_core.train.data import (
    PairedDataset,
    PromptCache,
    read_fill50k,
    read_paired_folders,
)


def write_png(path, chw01: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((chw01.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


@pytest.fixture
def circles():
    return fill_circles(3, torch.Generator().manual_seed(0), size=32)


def test_fill50k_layout(tmp_path, circles):
    lines = []
    for i in range(3):
        write_png(tmp_path / "source" / f"{i}.png", circles.hint[i])
        write_png(tmp_path / "target" / f"{i}.png", (circles.target[i] + 1) / 2)
        lines.append(json.dumps({"source": f"source/{i}.png", "target": f"target/{i}.png",
                                 "prompt": circles.prompts()[i]}))
    (tmp_path / "prompt.json").write_text("\n".join(lines) + "\n")
    data = PairedDataset(read_fill50k(tmp_path), 32)
    target, hint, prompts = data.batch([0, 1, 2])
    assert target.shape == hint.shape == (3, 3, 32, 32) and prompts == circles.prompts()
    assert (target - circles.target).abs().max() < 1 / 255 + 1e-6  # [-1, 1], 8-bit round trip
    assert torch.equal(hint, circles.hint)


def test_paired_folders_with_hints_from_a_preprocessor(tmp_path, circles):
    for i in range(2):
        write_png(tmp_path / "target" / f"img{i}.png", (circles.target[i] + 1) / 2)
    (tmp_path / "target" / "img0.txt").write_text("a red circle\n")
    with pytest.raises(FileNotFoundError, match="hint/img0"):
        read_paired_folders(tmp_path)
    data = PairedDataset(read_paired_folders(tmp_path, hints=False), 32, preprocessor="canny")
    _, hint, prompts = data.batch([0, 1])
    assert prompts == ["a red circle", ""]
    assert hint.shape == (2, 3, 32, 32) and set(hint.unique().tolist()) <= {0.0, 1.0} and hint.max() == 1


def test_prompts_are_encoded_once():
    calls = []

    def encode(prompts):
        calls.append(list(prompts))
        return torch.stack([torch.full((2, 4), float(len(p))) for p in prompts])

    cache = PromptCache(encode)
    a = cache(["x", "yy", "x"])
    b = cache(["yy", "x"])
    assert calls == [["x", "yy"]] and a.shape == (3, 2, 4) and torch.equal(b, a[[1, 0]])

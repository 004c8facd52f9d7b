"""Learned preprocessors in the real host: weights from models/controlnet_preprocessors (the subfolder or the folder
itself), held across runs by the host's model management, and a one-line error naming a missing file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.host.assets import HINT_IMAGE
from tests.host.server import HostError
from tests.host.test_preprocessor import _preprocess, _saved_images
from tests.learned_nets import random_weights, save_upstream
from tests.nodes.schemas import pack_module


@pytest.fixture(scope="module")
def learned_files(server):
    """TEED in models/controlnet_preprocessors/softedge/, lineart in models/controlnet_preprocessors/ itself."""
    preprocess = pack_module("controlnet_core.preprocess")
    nets = pack_module("controlnet_core.preprocess.nets.teed"), pack_module("controlnet_core.preprocess.nets.lineart")
    root = server.base / "models" / "controlnet_preprocessors"
    teed = save_upstream(nets[0].TEED, random_weights(nets[0].TEED), root / "softedge")
    lineart = save_upstream(nets[1].LINEART, random_weights(nets[1].LINEART), root)
    return preprocess, teed, lineart


def _close(saved: np.ndarray, expected: np.ndarray) -> bool:
    """Equal up to 1 grey level on a few pixels (the host computes with more threads, in another order)."""
    diff = np.abs(saved.astype(np.int16) - expected)
    return saved.shape == expected.shape and diff.max() <= 1 and (diff == 0).mean() >= 0.99


def _expected(preprocess, inputs, name: str, path, **options) -> np.ndarray:
    image = torch.from_numpy(np.array(Image.open(inputs[HINT_IMAGE]).convert("RGB"))).float()[None] / 255
    hint = preprocess.run(name, image, models_dir=path, **options)[0]
    return np.clip(255.0 * hint.numpy(), 0, 255).astype(np.uint8)  # as SaveImage writes it


def test_the_node_runs_learned_preprocessors_from_the_model_folders(server, inputs, learned_files):
    preprocess, teed, lineart = learned_files
    for run in range(2):
        entry = server.run(_preprocess(HINT_IMAGE, "teed", f"pre_teed_{run}", **{"teed.safe_steps": 0}))
        (saved,) = _saved_images(server, entry)
        assert _close(saved, _expected(preprocess, inputs, "teed", teed, safe_steps=0)) and saved.std() > 0
    assert server.log_path.read_text().count(f"loaded teed from {teed}") == 1, "TEED was read from disk twice"
    entry = server.run(_preprocess(HINT_IMAGE, "lineart", "pre_lineart"))
    (saved,) = _saved_images(server, entry)
    assert _close(saved, _expected(preprocess, inputs, "lineart", lineart)) and saved.std() > 0


def test_a_missing_weight_file_is_one_line_naming_it_and_the_folders(server, learned_files):
    with pytest.raises(HostError) as info:
        server.run(_preprocess(HINT_IMAGE, "pidinet", "pre_pidinet"))
    message = info.value.payload["exception_message"]
    assert "table5_pidinet.pth" in message and "controlnet_preprocessors" in message and "softedge" in message
    assert "lllyasviel/Annotators" in message and "\n" not in message.strip()

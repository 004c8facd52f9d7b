"""The Preprocessor node on the real host: options reach the core, network weights load once, clear errors."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.host.assets import DIM_IMAGE, HINT_IMAGE
from tests.host.graphs import Graph
from tests.host.server import HostError
from tests.nodes.schemas import pack_module


def _preprocess(image: str, preprocessor: str, prefix: str, **options) -> dict:
    g = Graph()
    loaded = g.add("LoadImage", image=image)
    hint = g.add("CNCore_Preprocessor", image=g.out(loaded), preprocessor=preprocessor, **options)
    g.add("SaveImage", images=g.out(hint), filename_prefix=prefix)
    return g.prompt()


def _saved_images(server, entry: dict) -> list[np.ndarray]:
    items = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    return [np.asarray(Image.open(server.base / "output" / i["subfolder"] / i["filename"])) for i in items]


@pytest.fixture(scope="module")
def depth_model(server):
    """A tiny random DPT depth model in the host's models/controlnet_preprocessors/depth folder."""
    transformers = importlib.import_module("transformers")
    torch.manual_seed(1)
    config = transformers.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                                    image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                                    neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                    reassemble_factors=[4, 2, 1, 0.5])
    folder = server.base / "models" / "controlnet_preprocessors" / "depth"
    folder.mkdir(parents=True, exist_ok=True)
    transformers.DPTForDepthEstimation(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_resize": True,
         "size": {"height": 32, "width": 32}, "keep_aspect_ratio": False, "ensure_multiple_of": 1, "resample": 3,
         "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return folder


def test_canny_options_reach_the_core(server, inputs):
    entry = server.run(_preprocess(DIM_IMAGE, "canny", "pre_canny",
                                   **{"canny.low_threshold": 20, "canny.high_threshold": 60}))
    (saved,) = _saved_images(server, entry)
    image = torch.from_numpy(np.array(Image.open(inputs[DIM_IMAGE]).convert("RGB"))).float()[None] / 255
    preprocess = pack_module("controlnet_core.preprocess")
    expected = preprocess.run("canny", image, low_threshold=20, high_threshold=60)[0]
    assert np.array_equal(saved, (expected * 255).round().to(torch.uint8).numpy())
    default = preprocess.run("canny", image)[0]
    assert not torch.equal(expected, default)  # the thresholds mattered


def test_network_preprocessor_loads_its_weights_once(server, depth_model):
    for resolution in (0, 48):
        entry = server.run(_preprocess(HINT_IMAGE, "depth", f"pre_depth_{resolution}", resolution=resolution))
        (saved,) = _saved_images(server, entry)
        assert saved.shape[-1] == 3 and saved.std() > 0
    log = server.log_path.read_text()
    assert log.count(f"from {depth_model}") == 1, "the depth model was read from disk more than once"


def test_missing_model_folder_names_the_folder(server):
    with pytest.raises(HostError) as info:
        server.run(_preprocess(HINT_IMAGE, "segmentation", "pre_seg"))
    message = info.value.payload["exception_message"]
    assert "controlnet_preprocessors" in message and "segmentation" in message
    assert server.run(_preprocess(HINT_IMAGE, "invert", "pre_invert"))["status"]["status_str"] == "success"

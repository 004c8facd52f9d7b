"""Pose in the real host: the Preprocessor's POSE_KEYPOINT output and `ui.openpose_json` (read from /history),
Render Pose Keypoints (Core) drawing them again, and the weights from models/controlnet_preprocessors/openpose."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.host.assets import HINT_IMAGE
from tests.host.graphs import Graph
from tests.host.test_preprocessor import _saved_images
from tests.learned_nets import random_weights
from tests.nodes.schemas import pack_module


@pytest.fixture(scope="module")
def body_file(server):
    nets = pack_module("controlnet_core.preprocess.nets.openpose")
    folder = server.base / "models" / "controlnet_preprocessors" / "openpose"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "body_pose_model.pth"
    torch.save(random_weights(nets.OPENPOSE_BODY), path)
    yield path
    path.unlink(missing_ok=True)  # not left in the base dir (CI disk)


def test_keypoints_come_out_in_ui_and_as_a_second_output(server, inputs, body_file):
    g = Graph()
    loaded = g.add("LoadImage", image=HINT_IMAGE)
    pose = g.add("CNCore_Preprocessor", image=g.out(loaded), preprocessor="openpose")
    g.add("SaveImage", images=g.out(pose), filename_prefix="pose_hint")
    drawn = g.add("CNCore_RenderPose", pose_keypoint=g.out(pose, 1))
    g.add("SaveImage", images=g.out(drawn), filename_prefix="pose_drawn")
    entry = server.run(g.prompt())
    frames = json.loads(entry["outputs"][pose]["openpose_json"][0])
    image = torch.from_numpy(np.array(Image.open(inputs[HINT_IMAGE]).convert("RGB"))).float()[None] / 255
    expected = pack_module("controlnet_core.preprocess").run_detailed("openpose", image, models_dir=body_file)
    assert len(frames) == 1 and frames[0]["canvas_width"] == image.shape[2]
    assert len(frames[0]["people"]) == len(expected.keypoints[0]["people"])
    hint, redrawn = _saved_images(server, entry)
    assert hint.shape == redrawn.shape and (hint == redrawn).all()  # the keypoints carry the whole hint

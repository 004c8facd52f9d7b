"""Pose in the real host: the Preprocessor's POSE_KEYPOINT output and `ui.openpose_json` (read from /history),
Render Pose Keypoints (Core) drawing them again, and the weights from models/controlnet_preprocessors/openpose and
.../dwpose (DWPose: the YOLOX-l detector and RTMPose-l, read once and held by the host's model management)."""
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


def test_detect_route_returns_the_poses_the_node_finds(server, inputs, body_file):
    """POST /controlnet_core/detect with a pose module answers A1111's `poses` beside the images: the node's
    keypoints for the same picture."""
    import base64
    import urllib.request

    picture = base64.b64encode(inputs[HINT_IMAGE].read_bytes()).decode()
    body = json.dumps({"controlnet_module": "openpose", "controlnet_input_images": [picture, picture],
                       "controlnet_processor_res": -1}).encode()
    request = urllib.request.Request(server.url + "/controlnet_core/detect", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        answer = json.loads(reply.read())
    image = torch.from_numpy(np.array(Image.open(inputs[HINT_IMAGE]).convert("RGB"))).float()[None] / 255
    expected = pack_module("controlnet_core.preprocess").run_detailed("openpose", image, models_dir=body_file)
    assert len(answer["images"]) == len(answer["poses"]) == 2
    assert answer["poses"][0] == answer["poses"][1]
    got, want = answer["poses"][0], expected.keypoints[0]
    assert (got["canvas_width"], got["canvas_height"]) == (want["canvas_width"], want["canvas_height"])
    assert len(got["people"]) == len(want["people"])
    for person, reference in zip(got["people"], want["people"]):
        assert np.allclose(person["pose_keypoints_2d"], reference["pose_keypoints_2d"], atol=1e-3)


def test_a_network_preprocessor_shows_its_status_line(server, body_file):
    """The host's node status text (BinaryEventTypes.TEXT over /ws): '<preprocessor> on <device>, frame k/n'."""
    from tests.host.test_progress import run_watching

    g = Graph()
    image = g.add("LoadImage", image=HINT_IMAGE)
    frames = g.add("RepeatImageBatch", image=g.out(image), amount=3)
    pose = g.add("CNCore_Preprocessor", image=g.out(frames), preprocessor="openpose", **{"openpose.batch_size": 1})
    received = run_watching(server, g.prompt())
    texts = []
    for opcode, payload in received:
        if opcode == 2 and int.from_bytes(payload[:4], "big") == 3:  # BinaryEventTypes.TEXT
            size = int.from_bytes(payload[4:8], "big")
            node, text = payload[8:8 + size].decode(), payload[8 + size:].decode()
            if node == pose:
                texts.append(text)
    assert texts and texts[0] == "openpose on cpu, frame 0/3" and texts[-1] == "openpose on cpu, frame 3/3", texts


@pytest.fixture(scope="module")
def dwpose_files(server):
    """Random YOLOX-l and RTMPose-l, biased so that people are found (tests/core/test_pose_dwpose.py), saved as
    mmdetection / mmpose publish them, in models/controlnet_preprocessors/dwpose under their published names."""
    from tests.core.test_pose_dwpose import detector_weights, pose_weights, upstream_file

    folder = server.base / "models" / "controlnet_preprocessors" / "dwpose"
    folder.mkdir(parents=True, exist_ok=True)
    paths = upstream_file(detector_weights(), folder / "yolox_l.pth"), upstream_file(pose_weights(),
                                                                                      folder / "dw-ll_ucoco_384.pth")
    yield folder
    for path in paths:
        path.unlink(missing_ok=True)


def test_dwpose_runs_from_the_model_folder_with_the_cores_keypoints(server, inputs, dwpose_files):
    """Two prompts with DWPose (with and without the face, so the node runs twice): the node's keypoints equal the
    core's on the same files, the hint redraws from them, and each file is read from disk once."""
    image = torch.from_numpy(np.array(Image.open(inputs[HINT_IMAGE]).convert("RGB"))).float()[None] / 255
    run_detailed = pack_module("controlnet_core.preprocess").run_detailed
    for run, face in enumerate((True, False)):
        want = run_detailed("dwpose", image, models_dir=str(dwpose_files), face=face).keypoints[0]
        assert want["people"], "the biased random detector finds nobody: the comparison would be vacuous"
        g = Graph()
        loaded = g.add("LoadImage", image=HINT_IMAGE)
        pose = g.add("CNCore_Preprocessor", image=g.out(loaded), preprocessor="dwpose", **{"dwpose.face": face})
        g.add("SaveImage", images=g.out(pose), filename_prefix=f"dwpose_hint_{run}")
        drawn = g.add("CNCore_RenderPose", pose_keypoint=g.out(pose, 1))
        g.add("SaveImage", images=g.out(drawn), filename_prefix=f"dwpose_drawn_{run}")
        entry = server.run(g.prompt())
        (frame,) = json.loads(entry["outputs"][pose]["openpose_json"][0])
        assert (frame["canvas_width"], frame["canvas_height"]) == (want["canvas_width"], want["canvas_height"])
        assert len(frame["people"]) == len(want["people"])
        for person, reference in zip(frame["people"], want["people"]):
            for key in ("pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d"):
                assert (person[key] is None) == (reference[key] is None), key
                if reference[key] is not None:
                    assert np.allclose(person[key], reference[key], atol=1e-3), key
        if not face:
            assert all(person["face_keypoints_2d"] is None for person in frame["people"])
        hint, redrawn = _saved_images(server, entry)
        assert hint.shape == redrawn.shape and (hint == redrawn).all() and hint.max() > 0
    log = server.log_path.read_text()
    for name in ("yolox_l.pth", "dw-ll_ucoco_384.pth"):
        reads = log.count(f"from {dwpose_files / name}")
        assert reads == 1, f"{name} was read from disk {reads} times for two prompts"

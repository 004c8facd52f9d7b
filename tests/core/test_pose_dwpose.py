"""DWPose against rtmlib 0.0.16's YOLOX and RTMPose tools (the DWPose annotator's numpy/cv2 pre- and
post-processing) on the same random weights of the real architectures.

onnx / onnxruntime are not installed in the test environment, so rtmlib's tools cannot run an exported network:
their `inference` step (the only part that needs onnxruntime) is replaced by our torch module, and everything
around it - rtmlib's letterbox, grid decode and class-aware NMS, its box -> centre/scale, warpAffine crop,
normalisation and SimCC decode, its COCO -> OpenPose index map - is rtmlib's own. The networks themselves are
checked against the published sizes (parameters, multiply-adds) and by loading files saved as upstream saves them.

The random detector is biased (small predictor weights, objectness only on the stride-32 level, class 0 only,
boxes about 7 cells wide) so that a few people are found; the pose classifiers are scaled so that some keypoints
fall below the 0.3 score threshold.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from controlnet_core.errors import PreprocessError
from controlnet_core.preprocess import PREPROCESSORS, run_detailed
from controlnet_core.preprocess.nets import (
    NetCache,
    build_loaded,
    key_shapes,
    load_network,
)
from controlnet_core.preprocess.nets.openpose import OPENPOSE_BODY
from controlnet_core.preprocess.nets.rtmpose import DWPOSE_L, RTMPose
from controlnet_core.preprocess.nets.yolox import YOLOX, YOLOX_L
from controlnet_core.preprocess.pose import wholebody as dw
from tests.learned_nets import random_weights

rtmlib = pytest.importorskip("rtmlib")
from rtmlib.tools.object_detection.yolox import YOLOX as RtmYOLOX
from rtmlib.tools.pose_estimation.post_processings import convert_coco_to_openpose
from rtmlib.tools.pose_estimation.rtmpose import RTMPose as RtmRTMPose

H, W = 192, 256  # letterbox ratio 2.5: 640 x 480 of the 640 x 640 detector input


def detector_weights(seed: int = 0, found: bool = True) -> dict[str, torch.Tensor]:
    sd = random_weights(YOLOX_L, seed)
    for i in range(3):
        for part in ("obj", "cls", "reg"):
            sd[f"bbox_head.multi_level_conv_{part}.{i}.weight"] *= 0.05
        sd[f"bbox_head.multi_level_conv_obj.{i}.bias"][:] = 0.5 if i == 2 and found else -10.0
        cls = sd[f"bbox_head.multi_level_conv_cls.{i}.bias"]
        cls[:] = -10.0
        cls[0] = 0.35
        sd[f"bbox_head.multi_level_conv_reg.{i}.bias"][2:] = math.log(7.0)
    return sd


def pose_weights(seed: int = 1) -> dict[str, torch.Tensor]:
    sd = random_weights(DWPOSE_L, seed)
    sd["head.cls_x.weight"] *= 0.055
    sd["head.cls_y.weight"] *= 0.055
    return sd


def picture(seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    return np.kron(g.integers(0, 256, (H // 8, W // 8, 3)).astype(np.uint8), np.ones((8, 8, 1), np.uint8))


def upstream_file(sd, path, meta=None):
    """Saved as mmdetection / mmpose publish a checkpoint: {"meta": {...}, "state_dict": {...}}."""
    torch.save({"meta": meta or {"epoch": 270, "mmpose_version": "1.1.0", "dataset_meta": {"num_keypoints": 133}},
                "state_dict": sd}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dwpose")
    sds = {"det": detector_weights(), "pose": pose_weights()}
    upstream_file(sds["det"], folder / "yolox_l.pth")
    upstream_file(sds["pose"], folder / "dw-ll_ucoco_384.pth")
    return sds, folder


@pytest.fixture(scope="module")
def nets(files):
    """Ours: loaded through the architectures' `finish` (BatchNorms folded, SiLU fused, channels-last)."""
    sds, _ = files
    return build_loaded(YOLOX_L, sds["det"]), build_loaded(DWPOSE_L, sds["pose"])


@pytest.fixture(scope="module")
def published(files):
    """The reference side: the same weights in the modules as published (BatchNorm after each convolution)."""
    sds, _ = files
    return build_loaded(YOLOX_L, sds["det"], finish=False), build_loaded(DWPOSE_L, sds["pose"], finish=False)


def torch_inference(net, captured=None):
    """Stands in for rtmlib's onnxruntime call: (H, W, 3) input -> the network's outputs as numpy, batch 1."""
    def inference(img):
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))[None]
        with torch.no_grad():
            out = net(x.to(next(net.parameters()).device))
        out = [o.cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))]
        if captured is not None:
            captured.append(out)
        return out
    return inference


def rtm_detector(net):
    tool = RtmYOLOX.__new__(RtmYOLOX)
    tool.model_input_size, tool.nms_thr, tool.score_thr, tool.det_mode = (640, 640), 0.45, 0.3, "multiclass"
    tool.inference = torch_inference(net)
    return tool


def rtm_pose(net, captured):
    tool = RtmRTMPose.__new__(RtmRTMPose)
    tool.model_input_size, tool.to_openpose = (288, 384), False
    tool.mean, tool.std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    tool.inference = torch_inference(net, captured)
    return tool


def test_networks_have_the_published_sizes():
    """YOLOX-l: 54.2 M parameters, 155.6 GFLOPs (= 77.8 GMAC) at 640²; DWPose-l 384x288: 10.1 GFLOPs (mmpose
    counts multiply-adds)."""
    from torch.utils.flop_counter import FlopCounterMode

    for build, shape, params, gmac in ((YOLOX, (1, 3, 640, 640), 54.2, 77.8), (RTMPose, (1, 3, 384, 288), None, 10.1)):
        with torch.device("meta"):
            net = build()
            with FlopCounterMode(display=False) as flops:
                net(torch.zeros(shape))
        if params is not None:
            assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - params) < 0.05
        assert abs(flops.get_total_flops() / 2e9 - gmac) < 0.2
    shapes = key_shapes(YOLOX())
    assert shapes["backbone.stem.conv.conv.weight"] == (64, 12, 3, 3)
    assert shapes["bbox_head.multi_level_conv_cls.2.weight"] == (80, 256, 1, 1)
    shapes = key_shapes(RTMPose())
    assert shapes["head.final_layer.weight"] == (133, 1024, 7, 7) and shapes["head.mlp.1.weight"] == (256, 108)
    assert shapes["head.gau.uv.weight"] == (1152, 256) and shapes["head.cls_y.weight"] == (768, 256)


def test_finish_folds_every_batchnorm_and_keeps_the_outputs(nets, published):
    for ours, ref, shape in zip(nets, published, ((2, 3, 96, 128), (2, 3, 384, 288))):
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ref.modules())
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 4 - 2
        with torch.no_grad():
            for got, want in zip(*(o if isinstance(o, tuple) else (o,) for o in (ours(x), ref(x)))):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.fixture(scope="module")
def compared(nets, published):
    """Ours (both frames in one detector call, all people in one pose call) and rtmlib's tools frame by frame and
    box by box on our boxes (so that the pose comparison does not depend on float rounding of the boxes), rtmlib's
    on the modules as published."""
    det, pose = nets
    ref_det, ref_pose = published
    frames = np.stack([picture(0), picture(1)])
    boxes = dw.run_detector(frames, det, "cpu")
    keypoints, scores = dw.run_pose(*dw.crops(frames, boxes), pose, "cpu")
    ref_boxes, ref_kp, ref_simcc = [], [], []
    for frame, frame_boxes in zip(frames, boxes):
        want, classes = rtm_detector(ref_det)(frame)
        ref_boxes.append(want[classes == 0])
        captured = []
        ref_kp.append(rtm_pose(ref_pose, captured)(frame, bboxes=list(frame_boxes))[0])
        ref_simcc += captured
    return boxes, keypoints, scores, ref_boxes, np.concatenate(ref_kp), ref_simcc


def test_boxes_equal_rtmlib_yolox(compared):
    boxes, _, _, ref_boxes, _, _ = compared
    for got, want in zip(boxes, ref_boxes):
        assert 2 <= len(got) == len(want) <= 6
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_keypoints_equal_rtmlib_rtmpose(compared):
    _, keypoints, scores, _, ref_kp, ref_simcc = compared
    # DWPose scores a keypoint by the smaller of the two axis maxima (rtmlib 0.0.16 takes their mean), and a
    # keypoint scored <= 0 gets bin -1 (so the positions agree where both scores are positive)
    want_scores = np.concatenate([np.minimum(x.max(-1), y.max(-1)) for x, y in ref_simcc])
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    scored = want_scores > 0
    assert scored.mean() > 0.5
    np.testing.assert_allclose(keypoints[scored], ref_kp[scored], rtol=0, atol=1e-3)
    assert 0.05 < (scores > dw.KPT_SCORE).mean() < 0.95  # the threshold matters for these weights


def test_openpose_mapping_equals_rtmlib(nets):
    g = np.random.default_rng(3)
    kp, sc = g.uniform(0, 200, (3, 133, 2)), g.uniform(0, 1, (3, 133))
    got_kp, got_sc = dw.to_openpose(kp, sc)
    want_kp, want_sc = convert_coco_to_openpose(kp, sc)
    np.testing.assert_array_equal(got_kp, want_kp)
    body = [i for i in range(134) if i != 1]  # the neck's score: DWPose's rule (both shoulders > 0.3), not rtmlib's
    np.testing.assert_array_equal(got_sc[:, body], want_sc[:, body])
    np.testing.assert_array_equal(got_sc[:, 1], ((sc[:, 5] > 0.3) & (sc[:, 6] > 0.3)).astype(float))


def test_registry_run_equals_rtmlib_end_to_end(files, compared):
    """Files saved as upstream does, through the registry (frames chunked, drawing) vs rtmlib's keypoints."""
    _, folder = files
    _, _, _, ref_boxes, ref_kp, ref_simcc = compared
    image = torch.from_numpy(np.stack([picture(0), picture(1)])).float() / 255.0
    steps, cache = [], NetCache()
    result = run_detailed("dwpose", image, models_dir=str(folder), batch_size=1, model_cache=cache,
                          progress=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 2), (2, 2)] and cache.loads == 2
    sc = np.concatenate([np.minimum(x.max(-1), y.max(-1)) for x, y in ref_simcc])
    kp, sc = convert_coco_to_openpose(ref_kp, sc)
    sc[:, 1] = (sc[:, 2] > 0.3) & (sc[:, 5] > 0.3)  # the neck (after the map the shoulders are 2 and 5)
    people = [p for frame in result.keypoints for p in frame["people"]]
    assert [len(f["people"]) for f in result.keypoints] == [len(b) for b in ref_boxes]
    assert result.keypoints[0]["canvas_width"] == W and result.keypoints[0]["canvas_height"] == H
    for person, k, s in zip(people, kp, sc):
        want = [v for (x, y), c in zip(k[:18], s[:18]) for v in ((x, y, 1.0) if c > 0.3 else (0, 0, 0))]
        np.testing.assert_allclose(person["pose_keypoints_2d"], want, atol=1e-3)
        for key, (lo, hi) in (("hand_left_keypoints_2d", (92, 113)), ("hand_right_keypoints_2d", (113, 134)),
                              ("face_keypoints_2d", (24, 92))):
            present = s[lo:hi] >= 0.3
            got = person[key]
            assert (got is None) == (not present.any())
            if got is not None:
                got = np.array(got).reshape(-1, 3)
                np.testing.assert_array_equal(got[: hi - lo, 2], present.astype(float))
                np.testing.assert_allclose(got[: hi - lo][present, :2], k[lo:hi][present], atol=1e-3)
    assert result.image.shape == (2, H, W, 3) and result.image.amax() > 0.5
    det, pose, _ = dw.load_nets(cache, str(folder), "cpu")
    assert cache.loads == 2  # held, not read again
    people = dw.detect(np.stack([picture(0)]), det, pose, "cpu", hands=False, face=False)[0]
    assert people and all(p.left_hand is None and p.right_hand is None and p.face is None for p in people)


def test_no_person_gives_a_black_hint(files, tmp_path):
    sds, _ = files
    upstream_file(detector_weights(found=False), tmp_path / "yolox_l.pth")
    upstream_file(sds["pose"], tmp_path / "dw-ll_ucoco_384.pth")
    image = torch.from_numpy(picture(0))[None].float() / 255.0
    result = run_detailed("dwpose", image, models_dir=str(tmp_path / "yolox_l.pth"))
    assert result.image.shape == (1, H, W, 3) and not result.image.any()
    assert result.keypoints == [{"people": [], "canvas_height": H, "canvas_width": W}]


def test_upstream_files_load_and_others_are_refused(files, tmp_path):
    sds, folder = files
    arch, net = load_network(folder / "yolox_l.pth", [YOLOX_L])
    assert arch is YOLOX_L and torch.equal(net.bbox_head.multi_level_conv_obj[2].bias, sds["det"][
        "bbox_head.multi_level_conv_obj.2.bias"])
    # mmcv's EMA hook leaves `ema_*` copies in mmdetection checkpoints: they are not weights of the module
    ema = {**sds["det"], **{"ema_" + k.replace(".", "_"): v for k, v in list(sds["det"].items())[:4]}}
    assert load_network(upstream_file(ema, tmp_path / "ema.pth"), [YOLOX_L])[0] is YOLOX_L
    assert load_network(folder / "dw-ll_ucoco_384.pth", [DWPOSE_L])[0] is DWPOSE_L
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    upstream_file(random_weights(OPENPOSE_BODY), wrong / "yolox_l.pth")
    with pytest.raises(PreprocessError, match=r"yolox_l\.pth: .* match none of the expected architectures.*yolox_l"):
        run_detailed("dwpose", torch.rand(1, 32, 32, 3), models_dir=str(wrong))
    upstream_file(sds["det"], wrong / "yolox_l.pth")
    torch.save(sds["det"], wrong / "dw-ll_ucoco_384.pth")  # the detector under the pose model's name
    with pytest.raises(PreprocessError, match=r"dw-ll_ucoco_384\.pth: .*expected dwpose_l_384"):
        run_detailed("dwpose", torch.rand(1, 32, 32, 3), models_dir=str(wrong))


class HistoryBuffer:
    """Stands in for the mmengine objects a training checkpoint keeps beside its weights."""


def test_missing_and_unsafe_files(files, tmp_path):
    sds, folder = files
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreprocessError, match=r"yolox_l\.pth not found in .*empty.*download\.openmmlab\.com"):
        run_detailed("dwpose", torch.rand(1, 32, 32, 3), models_dir=str(tmp_path / "empty"))
    only_det = tmp_path / "only_det"
    only_det.mkdir()
    (only_det / "yolox_l.pth").symlink_to(folder / "yolox_l.pth")
    with pytest.raises(PreprocessError, match=r"dw-ll_ucoco_384\.pth not found in .*only_det.*yzd-v/DWPose"):
        run_detailed("dwpose", torch.rand(1, 32, 32, 3), models_dir=str(only_det))
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    (unsafe / "yolox_l.pth").symlink_to(folder / "yolox_l.pth")
    torch.save({"state_dict": sds["pose"], "message_hub": HistoryBuffer()}, unsafe / "dw-ll_ucoco_384.pth")
    with pytest.raises(PreprocessError) as err:
        run_detailed("dwpose", torch.rand(1, 32, 32, 3), models_dir=str(unsafe))
    text = str(err.value)
    assert "dw-ll_ucoco_384.pth: cannot be read safely" in text and "\n" not in text
    exec(text.split("python -c ")[1].strip('"'), {})  # noqa: S102 - the one-line fix the error gives, on this trusted file
    assert load_network(unsafe / "dw-ll_ucoco_384.pth", [DWPOSE_L])[0] is DWPOSE_L


def test_registry_options_and_cli(files, tmp_path):
    spec = PREPROCESSORS["dwpose"]
    assert spec.net_folder == "dwpose" and spec.keypoints and not spec.frame_independent
    assert {o.name: o.default for o in spec.options} == {"hands": True, "face": True, "draw_body": True,
                                                         "xinsir_sticks": False, "smooth": False, "batch_size": 4}
    from PIL import Image

    from controlnet_core.__main__ import main

    _, folder = files
    Image.fromarray(picture(0)).save(tmp_path / "in.png")
    args = ["preprocess", "dwpose", str(tmp_path / "in.png"), str(tmp_path / "out.png"),
            "--models_dir", str(folder / "dw-ll_ucoco_384.pth"), "--keypoints_json", str(tmp_path / "k.json")]
    assert main(args) == 0
    frames = json.loads((tmp_path / "k.json").read_text())
    assert frames[0]["canvas_width"] == W and len(frames[0]["people"]) >= 1

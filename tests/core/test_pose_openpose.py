"""OpenPose against controlnet_aux 0.0.10's OpenposeDetector (the ControlNet 1.1 annotator) on the same weights.

Networks: the real architectures with random weights, ours loaded from the published-layout files; outputs within
1e-4 of the maximum. Decoding: the body maps come from a fixed module (two synthetic people drawn as heat-map
blobs and PAF strips at the network's output size) handed to both pipelines, so that grouping has people to find;
hands and face then run the random-weight networks on both sides. Keypoints must be the same.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from controlnet_core.errors import PreprocessError
from controlnet_core.preprocess import run_detailed
from controlnet_core.preprocess.nets import load_network
from controlnet_core.preprocess.nets.openpose import (
    OPENPOSE_BODY,
    OPENPOSE_FACE,
    OPENPOSE_HAND,
)
from controlnet_core.preprocess.pose.cmu import LIMB_SEQ, PAF_IDX, detect

pytest.importorskip("controlnet_aux")
from controlnet_aux.open_pose import OpenposeDetector, util
from controlnet_aux.open_pose.body import Body
from controlnet_aux.open_pose.face import Face, FaceNet
from controlnet_aux.open_pose.hand import Hand
from controlnet_aux.open_pose.model import bodypose_model, handpose_model

from tests.learned_nets import random_weights

H, W = 256, 384  # body scale 0.71875: 184 x 276 picture, maps 23 x 35


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{arch name: state dict}, and a folder holding the three files under their published names."""
    folder = tmp_path_factory.mktemp("openpose")
    sds = {}
    for seed, arch in enumerate((OPENPOSE_BODY, OPENPOSE_HAND, OPENPOSE_FACE)):
        sds[arch.name] = random_weights(arch, seed)
        torch.save(sds[arch.name], folder / arch.files[0])
    return sds, folder


def reference(name: str, sd):
    """controlnet_aux's module for `name`, loaded the way its Body / Hand / Face do."""
    if name == "openpose_face":
        net = FaceNet()
        net.load_state_dict(sd)
    else:
        net = bodypose_model() if name == "openpose_body" else handpose_model()
        net.load_state_dict(util.transfer(net, sd))
    return net.eval()


@pytest.mark.parametrize("arch", (OPENPOSE_BODY, OPENPOSE_HAND, OPENPOSE_FACE), ids=lambda a: a.name)
def test_network_outputs_equal_the_annotator(files, arch):
    sds, folder = files
    found, ours = load_network(folder / arch.files[0], [arch])
    assert found is arch
    ref = reference(arch.name, sds[arch.name])
    x = torch.rand(2, 3, 184, 184) - 0.5
    with torch.no_grad():
        got, want = ours(x), ref(x)
    if arch is OPENPOSE_FACE:
        want = want[-1]
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for g, r in zip(got, want):
        assert g.shape == r.shape
        assert (g - r).abs().max() <= 1e-4 * r.abs().max()
    if arch is OPENPOSE_BODY:  # upstream quirk kept: a ReLU on the stage-6 heat maps
        assert got[1].min() >= 0 and want[1].min() >= 0 and got[0].min() < 0


class FixedMaps(torch.nn.Module):
    """Stands in for the body network: the same (PAFs, heat maps) for every picture of the batch."""

    def __init__(self, paf: np.ndarray, heat: np.ndarray):
        super().__init__()
        self.paf = torch.nn.Parameter(torch.from_numpy(paf)[None], requires_grad=False)
        self.heat = torch.nn.Parameter(torch.from_numpy(heat)[None], requires_grad=False)

    def forward(self, x):
        assert x.shape[-2:] == (184, 280)
        return self.paf.expand(len(x), -1, -1, -1), self.heat.expand(len(x), -1, -1, -1)


def synthetic_maps(people: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """People (18, 2) in map cells (NaN missing) -> PAFs (38, 23, 35) and heat maps (19, 23, 35) float32."""
    yy, xx = np.mgrid[0:23, 0:35].astype(np.float64)
    heat, paf = np.zeros((19, 23, 35)), np.zeros((38, 23, 35))
    for body in people:
        for j, (x, y) in enumerate(body):
            if not np.isnan(x):
                heat[j] = np.maximum(heat[j], np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 1.5))
        for (a, b), (px, py) in zip(LIMB_SEQ, PAF_IDX):
            pa, pb = body[a - 1], body[b - 1]
            if np.isnan(pa).any() or np.isnan(pb).any():
                continue
            d = pb - pa
            n = np.linalg.norm(d)
            t = ((xx - pa[0]) * d[0] + (yy - pa[1]) * d[1]) / n ** 2
            dist = np.abs((xx - pa[0]) * d[1] - (yy - pa[1]) * d[0]) / n
            strip = (t >= -0.1) & (t <= 1.1) & (dist <= 1.0)
            paf[px][strip], paf[py][strip] = d[0] / n, d[1] / n
    return paf.astype(np.float32), heat.astype(np.float32)


def two_people() -> list[np.ndarray]:
    base = np.array([[8, 4], [8, 7], [5, 7], [4, 11], [4, 15], [11, 7], [12, 11], [12, 15], [6, 14], [6, 18],
                     [6, 21], [10, 14], [10, 18], [10, 21], [7, 3], [9, 3], [6, 4], [10, 4]], np.float64)
    second = base + (17, 0.5)
    second[[9, 10, 15]] = np.nan  # partial: no right knee / ankle, no left eye
    return [base, second]


def picture(seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    img = g.integers(0, 256, (H // 8, W // 8, 3)).astype(np.uint8)
    return np.kron(img, np.ones((8, 8, 1), np.uint8))  # blocks: structure for the hand and face nets


def reference_detector(fixed: FixedMaps, sds):
    body = Body.__new__(Body)
    body.model = fixed
    hand = Hand.__new__(Hand)
    hand.model = reference("openpose_hand", sds["openpose_hand"])
    face = Face.__new__(Face)
    face.model = reference("openpose_face", sds["openpose_face"])
    return OpenposeDetector(body, hand, face)


def test_body_keypoints_equal_the_annotator(files):
    sds, _ = files
    fixed = FixedMaps(*synthetic_maps(two_people()))
    frames = np.stack([picture(0), picture(1)])
    ours = detect(frames, fixed, None, None, "cpu", batch_size=2)
    for frame, people in zip(frames, ours):
        ref = reference_detector(fixed, sds).detect_poses(frame)
        assert len(people) == len(ref) == 2
        for p, r in zip(people, ref):
            want = np.array([(k.x, k.y) if k is not None else (np.nan, np.nan) for k in r.body.keypoints])
            np.testing.assert_allclose(p.body, want, rtol=0, atol=1e-12)
    missing = sorted(int(np.isnan(p.body[:, 0]).sum()) for p in ours[0])
    assert missing == [0, 3]  # one whole person, one without right knee, right ankle and left eye


@pytest.mark.slow
def test_keypoints_equal_the_annotator_with_hands_and_face(files):
    """Full-size hand (4 scales up to 736 px) and face networks: slow on a CPU."""
    sds, folder = files
    people = two_people()
    people[1][[3, 4, 6, 7]] = np.nan  # the second person has no forearms: hands of one person only
    fixed = FixedMaps(*synthetic_maps(people))
    hand = load_network(folder / OPENPOSE_HAND.files[0], [OPENPOSE_HAND])[1]
    face = load_network(folder / OPENPOSE_FACE.files[0], [OPENPOSE_FACE])[1]
    frames = picture(0)[None]
    ours = detect(frames, fixed, hand, face, "cpu")
    for frame, people in zip(frames, ours):
        ref = reference_detector(fixed, sds).detect_poses(frame, include_hand=True, include_face=True)
        assert len(people) == len(ref) == 2
        for p, r in zip(people, ref):
            want = np.array([(k.x, k.y) if k is not None else (np.nan, np.nan) for k in r.body.keypoints])
            np.testing.assert_allclose(p.body, want, rtol=0, atol=1e-12)
            for got, hand_ref in ((p.left_hand, r.left_hand), (p.right_hand, r.right_hand)):
                assert (got is None) == (hand_ref is None)
                if got is not None:
                    want = np.array([(k.x, k.y) for k in hand_ref])
                    shown = ~np.isnan(got).any(1)
                    np.testing.assert_allclose(got[shown], want[shown], atol=1e-6)
                    assert ((want[~shown] < 0).any(1)).all()
            assert (p.face is None) == (r.face is None)
            if p.face is not None and len(r.face) == 70:
                np.testing.assert_allclose(p.face, np.array([(k.x, k.y) for k in r.face]), atol=1e-6)
    assert sum(p.left_hand is not None or p.right_hand is not None for people in ours for p in people) >= 1
    assert sum(p.face is not None for people in ours for p in people) >= 1


def test_registry_run_equals_the_detector_end_to_end(files):
    """Random body weights through the registry (file loading, uint8 in, drawing) vs OpenposeDetector.__call__."""
    sds, folder = files
    frame = picture(2)
    result = run_detailed("openpose", torch.from_numpy(frame)[None].float() / 255.0, models_dir=str(folder))
    ref = reference_detector(FixedMaps(*synthetic_maps([])), sds)
    ref.body_estimation.model = reference("openpose_body", sds["openpose_body"])
    poses = ref.detect_poses(frame)
    people = result.keypoints[0]["people"]
    assert len(people) == len(poses) >= 1  # these random weights do find somebody
    for p, r in zip(people, poses):
        want = [v for k in r.body.keypoints for v in ((k.x * W, k.y * H, 1.0) if k is not None else (0, 0, 0))]
        np.testing.assert_allclose(p["pose_keypoints_2d"], want, atol=1e-9)
    hint = ref(frame, detect_resolution=H, image_resolution=H, output_type="np")  # draws per person
    assert len(poses) > 1 or (np.asarray(hint) == (result.image[0].numpy() * 255).round()).all()


def test_no_person_missing_files_and_body_only_file(files, tmp_path):
    sds, _ = files
    image = torch.from_numpy(picture(2))[None].float() / 255.0
    blind = tmp_path / "blind"
    blind.mkdir()
    zero = {k: (v * 0 if k.startswith("Mconv7_stage6_L2") else v) for k, v in sds["openpose_body"].items()}
    torch.save(zero, blind / "body_pose_model.pth")
    result = run_detailed("openpose", image.repeat(2, 1, 1, 1), models_dir=str(blind / "body_pose_model.pth"))
    assert result.image.shape == (2, H, W, 3) and not result.image.any()  # nobody: a black hint, empty people
    assert result.keypoints == [{"people": [], "canvas_height": H, "canvas_width": W}] * 2
    with pytest.raises(PreprocessError, match=r"hand_pose_model\.pth not found in .*blind.*lllyasviel/Annotators"):
        run_detailed("openpose", image, models_dir=str(blind), hands=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreprocessError, match=r"body_pose_model\.pth not found in .*empty"):
        run_detailed("openpose", image, models_dir=str(tmp_path / "empty"))


def test_cli_writes_the_keypoints_json(files, tmp_path, capsys):
    import json

    from PIL import Image

    from controlnet_core.__main__ import main

    _, folder = files
    Image.fromarray(picture(2)).save(tmp_path / "in.png")
    args = ["preprocess", "openpose", str(tmp_path / "in.png"), str(tmp_path / "out.png"),
            "--models_dir", str(folder / "body_pose_model.pth"), "--keypoints_json", str(tmp_path / "k.json")]
    assert main(args) == 0
    frames = json.loads((tmp_path / "k.json").read_text())
    assert frames[0]["canvas_width"] == W and len(frames[0]["people"]) >= 1
    assert main(["preprocess", "canny", str(tmp_path / "in.png"), str(tmp_path / "c.png"),
                 "--keypoints_json", str(tmp_path / "c.json")]) == 1
    assert "makes no keypoints" in capsys.readouterr().err

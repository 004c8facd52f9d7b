"""canny against cv2.Canny (the ControlNet canny annotator) on real photographs, both backends; Otsu against cv2."""
import cv2
import numpy as np
import pytest
import skimage.data as skimage_data  # a test dependency: missing it fails the suite, never skips it
import torch

from controlnet_core.preprocess import run  # noqa: E402
from controlnet_core.preprocess._image import rgb_to_gray_u8  # noqa: E402
from controlnet_core.preprocess.edges import canny_torch, hysteresis, otsu_threshold  # noqa: E402

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "immunohistochemistry")


def photo(name: str) -> np.ndarray:
    """An skimage sample photograph as (H, W, 3) uint8 (grey ones repeated to RGB, as HWC3 does)."""
    array = getattr(skimage_data, name)()
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else np.ascontiguousarray(array[..., :3])


def as_image(*frames: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) frames -> host IMAGE (B, H, W, 3) float in [0, 1]."""
    return torch.from_numpy(np.stack(frames)).float() / 255.0


def f1_with_tolerance(ours: np.ndarray, reference: np.ndarray, radius: int = 1) -> float:
    """Edge F1 where a pixel counts as matched if the other map has an edge within `radius` (Chebyshev)."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    near_ref = cv2.dilate(reference.astype(np.uint8), kernel) > 0
    near_ours = cv2.dilate(ours.astype(np.uint8), kernel) > 0
    precision = (ours & near_ref).sum() / max(1, ours.sum())
    recall = (reference & near_ours).sum() / max(1, reference.sum())
    return float(2 * precision * recall / max(precision + recall, 1e-12))


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("backend", ["torch", "opencv"])
def test_canny_matches_cv2_on_photographs(name, backend):
    rgb = photo(name)
    reference = cv2.Canny(rgb, 100, 200) > 0
    out = run("canny", as_image(rgb), low_threshold=100, high_threshold=200, backend=backend)
    assert out.shape == (1, *rgb.shape[:2], 3)
    assert torch.equal(out[..., 0], out[..., 2])  # grey RGB
    ours = out[0, ..., 0].numpy() > 0.5
    assert f1_with_tolerance(ours, reference) >= 0.97
    mismatched = int((ours != reference).sum())
    assert mismatched == 0, f"{name}: {mismatched} pixels differ from cv2.Canny"  # the README claims 0
    assert reference.sum() > 0.01 * reference.size  # the comparison is not vacuous


@pytest.mark.parametrize("low, high", [(50, 100), (1, 255), (200, 100), (0, 0), (150, 151)])
def test_canny_torch_thresholds_and_swap_match_cv2(low, high):
    rgb = photo("coffee")
    reference = cv2.Canny(rgb, low, high) > 0
    ours = canny_torch(torch.from_numpy(rgb).permute(2, 0, 1)[None], low, high)[0].numpy()
    assert int((ours != reference).sum()) == 0


def test_canny_batch_equals_frame_by_frame_cv2():
    # crops of different photographs in one batch: components must never join across frames
    frames = [photo("astronaut")[:300, :400], photo("rocket")[100:400, 100:500], photo("coffee")[:300, :400],
              np.ascontiguousarray(photo("camera")[200:500, 50:450])]
    out = run("canny", as_image(*frames), backend="torch")[..., 0].numpy() > 0.5
    for i, frame in enumerate(frames):
        assert np.array_equal(out[i], cv2.Canny(frame, 100, 200) > 0), f"frame {i}"


def test_canny_auto_backend_equals_torch_backend():
    image = as_image(photo("chelsea"), np.ascontiguousarray(photo("chelsea")[::-1]))
    assert torch.equal(run("canny", image), run("canny", image, backend="torch"))


def test_hysteresis_keeps_only_components_with_a_strong_pixel():
    candidate = torch.zeros(2, 8, 8, dtype=torch.bool)
    candidate[0, 1, 1:7] = True  # a horizontal run ...
    candidate[0, 2:6, 6] = True  # ... joined to a vertical one
    candidate[0, 6, 0:3] = True  # separate run, weak only
    candidate[1, 0, 0:8] = True  # frame 1: weak only, touching where frame 0's strong run would continue
    strong = torch.zeros_like(candidate)
    strong[0, 5, 6] = True
    kept = hysteresis(candidate, strong)
    expected = torch.zeros_like(candidate)
    expected[0, 1, 1:7] = True
    expected[0, 2:6, 6] = True
    assert torch.equal(kept, expected)


def test_canny_on_a_diagonal_chain_connects_through_diagonal_neighbours():
    candidate = torch.eye(64, dtype=torch.bool)[None]  # an 8-connected diagonal line of 64 weak pixels
    strong = torch.zeros_like(candidate)
    strong[0, 63, 63] = True
    assert torch.equal(hysteresis(candidate, strong), candidate)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_canny_on_cuda_matches_cv2():
    rgb = photo("astronaut")
    out = run("canny", as_image(rgb).cuda())
    assert out.device.type == "cuda"
    assert np.array_equal(out[0, ..., 0].cpu().numpy() > 0.5, cv2.Canny(rgb, 100, 200) > 0)


def test_gray_conversion_is_bit_exact_with_cv2_for_every_colour():
    levels = np.arange(0, 256, 3, dtype=np.uint8)  # 86**3 colours, every step of the fixed-point rounding
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    rgb = np.stack([r, g, b], axis=-1).reshape(86 * 86, 86, 3)
    ours = rgb_to_gray_u8(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0, 0].numpy()
    assert np.array_equal(ours, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


@pytest.mark.parametrize("name", PHOTOS)
def test_otsu_matches_cv2_threshold(name):
    rgb = photo(name)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    level, reference = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    ours = otsu_threshold(torch.from_numpy(gray)[None, None])
    assert int(ours[0]) == int(level)
    out = run("threshold", as_image(rgb), threshold=0)
    assert np.array_equal(out[0, ..., 0].numpy() > 0.5, reference > 0)


def test_temporal_otsu_is_otsu_of_the_whole_batch():
    a, b = photo("astronaut"), photo("camera")
    stacked = cv2.cvtColor(np.concatenate([a, b]), cv2.COLOR_RGB2GRAY)  # one histogram over both frames
    level, _ = cv2.threshold(stacked, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    out = run("threshold", as_image(a, b), threshold=0, temporal_normalize=True)[..., 0].numpy() > 0.5
    for i, frame in enumerate((a, b)):
        assert np.array_equal(out[i], cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) > level)
    per_frame = run("threshold", as_image(a, b), threshold=0)[..., 0].numpy() > 0.5
    assert not np.array_equal(per_frame, out)  # the option changes something on these frames


@pytest.mark.parametrize("level, invert", [(127, False), (60, True), (200, False)])
def test_fixed_threshold_and_binary_match_cv2(level, invert):
    rgb = photo("coins")
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    mode = cv2.THRESH_BINARY_INV if invert else cv2.THRESH_BINARY
    _, reference = cv2.threshold(gray, level, 255, mode)
    out = run("threshold", as_image(rgb), threshold=level, invert=invert)
    assert np.array_equal(out[0, ..., 0].numpy() > 0.5, reference > 0)
    if invert:  # Aux's Binary preprocessor is the inverted threshold
        assert torch.equal(out, run("binary", as_image(rgb), threshold=level))

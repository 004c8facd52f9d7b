"""Preprocessor registry, input checks, every algorithmic preprocessor (shape, range, determinism, reference)."""
import inspect
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from controlnet_core.errors import PreprocessError
from controlnet_core.preprocess import (COMMON_OPTIONS, CHUNK_FRAMES, KINDS, PREPROCESSORS, get_spec,
                                        list_preprocessors, run)
from controlnet_core.preprocess._image import check_image

import skimage.data as skimage_data  # noqa: E402  (a test dependency: missing it fails)

ALGORITHMIC = [name for name, spec in PREPROCESSORS.items() if spec.model_folder is None and spec.net_folder is None]


def photo(name: str = "astronaut", crop: tuple[slice, slice] | None = None) -> np.ndarray:
    array = getattr(skimage_data, name)()
    array = np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array[..., :3]
    return np.ascontiguousarray(array if crop is None else array[crop])


def as_image(*frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).float() / 255.0


@pytest.fixture(scope="module")
def small_batch() -> torch.Tensor:
    """Two different 72x104 frames (non-square, not multiples of 64), each with a drawn rectangle (straight lines)."""
    frames = [photo("astronaut", (slice(40, 112), slice(180, 284))),
              photo("coffee", (slice(100, 172), slice(200, 304)))]
    for i, frame in enumerate(frames):
        cv2.rectangle(frame, (10 + 4 * i, 8), (90, 60 - 3 * i), (255, 255, 255), 2)
    return as_image(*frames)


def extra_inputs(name: str, image: torch.Tensor) -> dict:
    if name == "inpaint":
        mask = torch.zeros(image.shape[:3])
        mask[:, 10:40, 20:60] = 1.0
        return {"mask": mask}
    return {}


# ------------------------------------------------------------------------------------------------ registry

def test_registry_lists_the_required_preprocessors():
    required = {"canny", "lineart_standard", "scribble_xdog", "threshold", "binary", "invert", "shuffle", "tile",
                "color_grid", "inpaint", "normal_from_depth", "straight_lines", "luminance", "intensity", "depth",
                "segmentation", "resize"}
    assert required <= set(list_preprocessors())
    assert list_preprocessors() == sorted(PREPROCESSORS)


@pytest.mark.parametrize("name", sorted(PREPROCESSORS))
def test_spec_options_are_widget_ready_and_match_the_function_signature(name):
    spec = PREPROCESSORS[name]
    assert spec.name == name and spec.description and "\n" not in spec.description
    parameters = inspect.signature(spec.function).parameters
    for option in spec.options:
        assert option.kind in KINDS and option.tooltip
        assert option.name in parameters, f"{name}: option {option.name} is not a parameter of {spec.target}"
        assert parameters[option.name].default == option.default, f"{name}.{option.name}: default differs"
        if option.kind in ("int", "float"):
            assert option.min <= option.default <= option.max and option.step > 0
        if option.kind == "choice":
            assert option.default in option.choices
    if spec.model_folder is not None or spec.net_folder is not None:
        assert {"models_dir", "model_cache", "progress"} <= set(parameters)


def test_common_options_are_distinct_from_preprocessor_options():
    common = {o.name for o in COMMON_OPTIONS}
    for spec in PREPROCESSORS.values():
        assert not common & {o.name for o in spec.options}, spec.name


def test_importing_the_registry_is_cheap():
    code = ("import sys, controlnet_core.preprocess as p; p.PREPROCESSORS['canny'].options; "
            "print(sorted(m for m in ('cv2', 'transformers', 'scipy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_rejects_unknown_names_options_and_values(small_batch):
    with pytest.raises(PreprocessError, match="unknown preprocessor 'cany'.*canny"):
        run("cany", small_batch)
    with pytest.raises(PreprocessError, match="canny has no option 'gamma'"):
        run("canny", small_batch, gamma=2.0)
    with pytest.raises(PreprocessError, match="'low_threshold' of canny: 300 is above the maximum 255"):
        run("canny", small_batch, low_threshold=300)
    with pytest.raises(PreprocessError, match="not a whole number"):
        run("canny", small_batch, low_threshold=10.5)
    with pytest.raises(PreprocessError, match="not one of"):
        run("canny", small_batch, backend="cuda")
    with pytest.raises(PreprocessError, match="not a boolean"):
        run("threshold", small_batch, invert="maybe")


def test_run_coerces_command_line_strings(small_batch):
    assert torch.equal(run("threshold", small_batch, threshold="90", invert="true"),
                       run("threshold", small_batch, threshold=90, invert=True))


# ------------------------------------------------------------------------------------------------ input checks

def test_bad_inputs_are_refused_with_clear_errors(small_batch):
    with pytest.raises(PreprocessError, match="empty batch"):
        run("invert", small_batch[:0])
    with pytest.raises(PreprocessError, match="2x2 pixels"):
        run("canny", torch.rand(1, 2, 2, 3))
    nan = small_batch.clone()
    nan[0, 3, 4, 1] = float("nan")
    with pytest.raises(PreprocessError, match="1 NaN/Inf"):
        run("canny", nan)
    with pytest.raises(PreprocessError, match="expected \\(batch, height, width, channels\\)"):
        run("canny", small_batch[0])
    with pytest.raises(PreprocessError, match="5 channels"):
        run("canny", torch.rand(1, 16, 16, 5))
    with pytest.raises(PreprocessError, match="dtype torch.uint8"):
        run("canny", (small_batch * 255).to(torch.uint8))
    with pytest.raises(PreprocessError, match="not a tensor"):
        run("canny", small_batch.numpy())


def test_grey_is_expanded_and_alpha_dropped(small_batch):
    grey = small_batch[..., :1]
    assert torch.equal(check_image(grey), grey.expand(-1, -1, -1, 3))
    rgba = torch.cat([small_batch, torch.zeros_like(small_batch[..., :1])], dim=-1)
    assert torch.equal(run("canny", rgba), run("canny", small_batch))
    grey_alpha = torch.cat([grey, torch.ones_like(grey)], dim=-1)
    assert torch.equal(run("invert", grey_alpha), 1 - grey.expand(-1, -1, -1, 3))


# ------------------------------------------------------------------------------------------------ every preprocessor

@pytest.mark.parametrize("name", ALGORITHMIC)
def test_shape_range_dtype_and_determinism(name, small_batch):
    extra = extra_inputs(name, small_batch)
    first = run(name, small_batch, **extra)
    second = run(name, small_batch.clone(), **extra)
    expected_size = (512, 512) if name == "resize" else tuple(small_batch.shape[1:3])
    assert first.shape == (2, *expected_size, 3) and first.dtype == torch.float32
    assert first.device == small_batch.device and first.is_contiguous()
    low = -1.0 if name == "inpaint" else 0.0
    assert float(first.min()) >= low and float(first.max()) <= 1.0
    assert torch.equal(first, second)
    assert float(first.std()) > 0  # not a constant image
    if name not in ("invert", "resize", "tile", "inpaint"):
        assert not torch.allclose(first, small_batch, atol=0.05)  # it did something


@pytest.mark.parametrize("name", ALGORITHMIC)
def test_runs_under_inference_mode_as_the_host_executes_nodes(name, small_batch):
    """The host runs nodes under torch.inference_mode, which does not reach worker threads."""
    extra = extra_inputs(name, small_batch)
    expected = run(name, small_batch, **extra)
    with torch.inference_mode():
        got = run(name, small_batch.clone(), **extra)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", [n for n in ALGORITHMIC if PREPROCESSORS[n].frame_independent])
def test_frame_independent_preprocessors_give_each_frame_its_own_result(name, small_batch):
    both = run(name, small_batch)
    for i in range(2):
        assert torch.allclose(both[i: i + 1], run(name, small_batch[i: i + 1]), atol=1e-6)


def test_long_batches_are_chunked_with_progress_and_equal_one_call(small_batch):
    frames = small_batch.repeat(CHUNK_FRAMES // 2 + 3, 1, 1, 1)  # more than one chunk
    total = frames.shape[0]
    calls = []
    out = run("scribble_xdog", frames, progress=lambda done, count: calls.append((done, count)))
    assert calls == [(CHUNK_FRAMES, total), (total, total)]
    assert torch.equal(out, get_spec("scribble_xdog").function(check_image(frames)))
    calls.clear()
    run("lineart_standard", small_batch, progress=lambda done, count: calls.append((done, count)))
    assert calls == [(2, 2)]  # batch statistics: one call


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_canny_reports_progress_itself(small_batch, backend):
    frames = small_batch.repeat(9, 1, 1, 1)  # 18 frames: more than one torch chunk
    calls = []
    out = run("canny", frames, backend=backend, progress=lambda done, count: calls.append((done, count)))
    assert calls[-1] == (18, 18) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) == (18 if backend == "opencv" else 2)
    assert torch.equal(out, run("canny", frames, backend="opencv"))


def test_invert_is_one_minus_image(small_batch):
    assert torch.equal(run("invert", small_batch), 1.0 - small_batch)


def reference_lineart_standard(rgb: np.ndarray, sigma: float = 6.0, threshold: float = 8.0) -> np.ndarray:
    """A1111/Aux lineart_standard, written from their formula with cv2 (uint8 result)."""
    x = rgb.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), sigma) - x, axis=2).clip(0, 255)
    above = intensity[intensity > threshold]
    intensity /= max(16.0, float(np.median(above))) if above.size else 16.0
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def test_lineart_standard_matches_the_reference_formula():
    rgb = photo("chelsea")
    ours = run("lineart_standard", as_image(rgb))[0, ..., 0].numpy() * 255
    reference = reference_lineart_standard(rgb).astype(np.float32)
    diff = ours - reference  # the reference truncates to uint8, we keep the fraction: diff in [0, 1)
    assert float(diff.min()) > -0.01 and float(diff.max()) < 1.01
    assert reference.mean() > 5  # there are lines


def test_lineart_standard_temporal_normalize_uses_one_median_for_the_batch():
    a = photo("page")
    b = (a.astype(np.float32) * 0.4 + 255 * 0.6).round().astype(np.uint8)  # the same page, fainter
    together = run("lineart_standard", as_image(a, b), temporal_normalize=True)[..., 0].numpy() * 255
    intensities = []
    for frame in (a, b):
        x = frame.astype(np.float32)
        intensities.append(np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255))
    stacked = np.stack(intensities)
    shared = max(16.0, float(np.median(stacked[stacked > 8])))
    expected = (stacked / shared * 127).clip(0, 255)
    assert np.abs(together - expected).max() < 0.05
    per_frame = run("lineart_standard", as_image(a, b))[..., 0].numpy() * 255
    assert np.abs(per_frame - expected).max() > 1.0  # the option matters for these two frames


def test_scribble_xdog_matches_the_reference_formula():
    rgb = photo("astronaut")
    x = rgb.astype(np.float32)
    dog = (255 - np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2))
    reference = 2 * (255 - dog.clip(0, 255).astype(np.uint8).astype(np.int32)) > 32
    ours = run("scribble_xdog", as_image(rgb))[0, ..., 0].numpy() > 0.5
    assert (ours != reference).mean() < 1e-3
    assert 0.01 < reference.mean() < 0.5


def test_color_grid_matches_cv2_cubic_down_nearest_up():
    rgb = photo("coffee")
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (w // 64, h // 64), interpolation=cv2.INTER_CUBIC)
    reference = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    ours = run("color_grid", as_image(rgb))[0].numpy() * 255
    assert np.abs(ours - reference).max() <= 1.0


def test_tile_matches_cv2_area_down_cubic_up_and_is_identity_below_1_1():
    rgb = photo("astronaut", (slice(0, 200), slice(0, 300)))
    image = as_image(rgb)
    assert torch.equal(run("tile", image, down_sampling_rate=1.0), image)
    x = rgb.astype(np.float32) / 255
    reference = cv2.resize(cv2.resize(x, (150, 100), interpolation=cv2.INTER_AREA), (300, 200),
                           interpolation=cv2.INTER_CUBIC).clip(0, 1)
    ours = run("tile", image, down_sampling_rate=2.0)[0].numpy()
    assert np.abs(ours - reference).max() < 0.02
    assert np.abs(ours - x).mean() > 0.01  # it blurred


def test_luminance_and_intensity_match_cv2():
    rgb = photo("rocket")
    image = as_image(rgb)
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[..., 0] / 100
    assert np.abs(run("luminance", image)[0, ..., 0].numpy() - lab).max() < 5e-3
    assert np.abs(run("luminance", image, gamma=0.5)[0, ..., 0].numpy() - np.sqrt(lab)).max() < 1e-2
    value = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 2] / 255
    assert np.abs(run("intensity", image)[0, ..., 0].numpy() - value).max() < 1e-6


def test_luminance_normalize_per_frame_and_temporal():
    rgb = photo("chelsea")
    image = torch.cat([as_image(rgb), as_image(rgb) * 0.5 + 0.25])  # frame 1: lower contrast
    per_frame = run("luminance", image, normalize=True)
    temporal = run("luminance", image, normalize=True, temporal_normalize=True)
    for i in range(2):
        assert float(per_frame[i].min()) == 0.0 and abs(float(per_frame[i].max()) - 1.0) < 1e-6
    assert float(temporal.min()) == 0.0 and abs(float(temporal.max()) - 1.0) < 1e-6
    assert float(temporal[1].max() - temporal[1].min()) < 0.8  # frame 1 keeps its lower contrast


def test_shuffle_is_a_seeded_smooth_flow_shared_by_all_frames():
    h, w = 96, 160
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    ramp = torch.stack([xs, ys, torch.zeros_like(xs)], dim=-1)[None]  # pixel value = its own coordinate
    flow = run("shuffle", ramp.repeat(2, 1, 1, 1), seed=3, cell_size=32)
    assert torch.equal(flow[0], flow[1])  # one field for the batch: video frames stay aligned
    for channel in (0, 1):  # the min-max normalised noise reaches both image borders
        assert float(flow[0, ..., channel].min()) < 1e-4 and float(flow[0, ..., channel].max()) > 1 - 1e-4
    step = (flow[0, 1:, :, :2] - flow[0, :-1, :, :2]).abs().max()
    assert float(step) < 0.2  # smooth: neighbours move together
    assert torch.equal(run("shuffle", ramp, seed=3, cell_size=32), flow[:1])
    assert not torch.equal(run("shuffle", ramp, seed=4, cell_size=32), flow[:1])
    constant = torch.full((1, 64, 64, 3), 0.3)
    assert torch.allclose(run("shuffle", constant), constant)


def test_inpaint_sets_masked_pixels_to_minus_one(small_batch):
    mask = torch.zeros(1, *small_batch.shape[1:3])
    mask[0, :20] = 1.0
    mask[0, 20:30] = 0.5
    out = run("inpaint", small_batch, mask=mask)  # one mask for both frames
    assert torch.all(out[:, :20] == -1.0)
    assert torch.allclose(out[:, 20:30], small_batch[:, 20:30] * 0.5 - 0.5)
    assert torch.equal(out[:, 30:], small_batch[:, 30:])
    half = torch.zeros(2, small_batch.shape[1] // 2, small_batch.shape[2] // 2)
    half[:, :10] = 1.0  # a smaller mask is resized to the image
    assert torch.all(run("inpaint", small_batch, mask=half)[:, :18] == -1.0)
    with pytest.raises(PreprocessError, match="needs a mask"):
        run("inpaint", small_batch)
    with pytest.raises(PreprocessError, match="mask batch 3 does not match the image batch 2"):
        run("inpaint", small_batch, mask=torch.zeros(3, 8, 8))


def sphere_depth(size: int = 96, radius: float = 0.35) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(-0.5, 0.5, size), torch.linspace(-0.5, 0.5, size), indexing="ij")
    height = (radius ** 2 - xs ** 2 - ys ** 2).clamp_min(0).sqrt()
    return (height / height.max())[None, ..., None].expand(1, size, size, 3).contiguous()


@pytest.mark.parametrize("convention, right_red", [("bae", "low"), ("opengl", "high")])
def test_normal_from_depth_points_the_right_way(convention, right_red):
    out = run("normal_from_depth", sphere_depth(), convention=convention, bg_threshold=0.05)
    n = out[0] * 2 - 1  # (H, W, 3) unit normals
    assert torch.allclose(n.norm(dim=-1), torch.ones(96, 96), atol=1e-5)
    centre, right, top, corner = n[48, 48], n[48, 76], n[20, 48], n[2, 2]
    assert float(centre[2]) > 0.95 and float(corner[2]) == 1.0  # facing the viewer; background flat
    assert (float(right[0]) < -0.3) if right_red == "low" else (float(right[0]) > 0.3)
    assert float(top[1]) > 0.3  # green = up in both conventions
    steeper = run("normal_from_depth", sphere_depth(), strength=3.0, convention=convention, bg_threshold=0.05)
    assert float(steeper[0, 48, 76, 2]) < float(out[0, 48, 76, 2])  # more relief: the rim tilts further


def test_normal_from_depth_temporal_uses_the_batch_range():
    depth = torch.cat([sphere_depth(), sphere_depth() * 0.5])
    per_frame = run("normal_from_depth", depth, bg_threshold=0.0)
    temporal = run("normal_from_depth", depth, bg_threshold=0.0, temporal_normalize=True)
    assert torch.allclose(per_frame[0], per_frame[1], atol=1e-5)  # each frame stretched to [0, 1]
    assert not torch.allclose(temporal[0], temporal[1], atol=1e-3)  # the shallower frame stays flatter


def test_straight_lines_equal_the_cv2_pipeline_and_find_a_rectangle():
    canvas = np.full((128, 160, 3), 30, np.uint8)
    cv2.rectangle(canvas, (30, 25), (130, 100), (220, 200, 180), 3)
    out = run("straight_lines", as_image(canvas))[0, ..., 0].numpy()
    edges = cv2.Canny(canvas, 100, 200)
    reference = np.zeros(canvas.shape[:2], np.uint8)
    segments = cv2.HoughLinesP(edges, 1, np.pi / 180, 50, minLineLength=32.0, maxLineGap=4.0)
    for x0, y0, x1, y1 in segments.reshape(-1, 4):
        cv2.line(reference, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
    assert np.array_equal(out > 0.5, reference > 0)
    assert out[25:30, 40:120].max() == 1.0 and out[60, 60:100].max() == 0.0  # top edge found, inside empty


# ------------------------------------------------------------------------------------------------ resolution

def test_resolution_is_the_short_side_rounded_to_multiples_of_8(small_batch):
    out = run("invert", small_batch, resolution=300)  # 72x104 -> short side 300 -> 300 x 433.3
    assert out.shape[1:3] == (304, 432)
    wide = torch.rand(1, 600, 1000, 3)
    assert run("invert", wide, resolution=512).shape[1:3] == (512, 856)  # 853.3 -> 856


def test_pixel_perfect_follows_a1111_and_fits_the_target_exactly():
    from controlnet_core.preprocess import pixel_perfect_resolution

    assert pixel_perfect_resolution(512, 768, 1024, 1024, "Crop and Resize") == 1024  # max(2, 1.33) * 512
    assert pixel_perfect_resolution(512, 768, 1024, 1024, "Just Resize") == 1024
    assert pixel_perfect_resolution(512, 768, 1024, 1024, "Resize and Fill") == 683  # min(2, 1.33) * 512
    image = torch.rand(1, 96, 144, 3)
    out = run("invert", image, pixel_perfect=True, target_width=288, target_height=192)
    assert out.shape[1:3] == (192, 288)
    with pytest.raises(PreprocessError, match="target_width and target_height"):
        run("invert", image, pixel_perfect=True)


def test_resize_modes():
    from controlnet_core.preprocess import fit

    ramp = torch.linspace(0, 1, 128)[None, None, :, None].expand(1, 64, 128, 3).contiguous()  # 128 wide, 64 high
    stretched = fit(ramp, 64, 64, "Just Resize")
    assert stretched.shape == (1, 64, 64, 3) and abs(float(stretched[0, 0, -1, 0]) - 1.0) < 0.02
    cropped = fit(ramp, 64, 64, "Crop and Resize")  # covers: 64x128 stays, the centre 64 columns are kept
    assert torch.equal(cropped, ramp[:, :, 32:96])
    filled = fit(ramp, 64, 64, "Resize and Fill")  # fits: 32x64 in the middle, borders = median border colour
    border = torch.cat([ramp[0, 0, :, 0], ramp[0, -1, :, 0], ramp[0, :, 0, 0], ramp[0, :, -1, 0]])
    assert filled.shape == (1, 64, 64, 3)
    assert torch.allclose(filled[0, :16, :, 0], border.median().expand(16, 64))
    assert torch.allclose(filled[0, 16:48, :, 0], fit(ramp, 64, 32, "Just Resize")[0, ..., 0])
    hint = run("resize", ramp, width=64, height=64, mode="Crop and Resize")
    assert torch.equal(hint, cropped)


def test_target_size_fits_the_output(small_batch):
    out = run("canny", small_batch, target_width=64, target_height=64, resize_mode="Just Resize")
    assert out.shape == (2, 64, 64, 3)

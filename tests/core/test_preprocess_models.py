"""Network preprocessors with tiny random transformers models saved to temporary folders (offline, no hub)."""
import importlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import transformers  # noqa: E402  (a test dependency: missing it fails)

from controlnet_core.errors import PreprocessError  # noqa: E402
from controlnet_core.preprocess import ModelCache, run  # noqa: E402
from controlnet_core.preprocess.models import InputSpec, prepare_pixels  # noqa: E402
from controlnet_core.preprocess.segment import ade20k_palette  # noqa: E402

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def save_processor(folder, **config) -> None:
    """Write preprocessor_config.json with the keys a DPT / Depth Anything / SegFormer processor saves."""
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_rescale": True, "rescale_factor": 1 / 255,
                                                                 "do_normalize": True, "do_resize": True, **config}))


@pytest.fixture(scope="module")
def dpt_folder(tmp_path_factory):
    """A tiny DPT (the MiDaS v3 architecture) depth model, 32x32 input, no aspect ratio kept."""
    torch.manual_seed(1)
    config = transformers.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                                    image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                                    neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                    reassemble_factors=[4, 2, 1, 0.5])
    folder = tmp_path_factory.mktemp("dpt")
    transformers.DPTForDepthEstimation(config).save_pretrained(folder)
    save_processor(folder, size={"height": 32, "width": 32}, keep_aspect_ratio=False, ensure_multiple_of=1,
                   resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return folder


@pytest.fixture(scope="module")
def depth_anything_folder(tmp_path_factory):
    """A tiny Depth Anything (DINOv2 backbone, patch 14): keeps the aspect ratio, sizes are multiples of 14."""
    torch.manual_seed(2)
    backbone = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=37, image_size=28, patch_size=14, out_indices=[1, 2],
                                         reshape_hidden_states=False)
    config = transformers.DepthAnythingConfig(backbone_config=backbone.to_dict(), reassemble_hidden_size=32,
                                              reassemble_factors=[2, 1], neck_hidden_sizes=[16, 32],
                                              fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    folder = tmp_path_factory.mktemp("depth_anything")
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    save_processor(folder, size={"height": 42, "width": 42}, keep_aspect_ratio=True, ensure_multiple_of=14,
                   resample=3, **IMAGENET)
    return folder


@pytest.fixture(scope="module")
def upernet_folder(tmp_path_factory):
    """A tiny UperNet with a ConvNeXt backbone and ADE20K's 150 labels, 32x32 input."""
    torch.manual_seed(3)
    backbone = transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                           out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.UperNetConfig(backbone_config=backbone.to_dict(), hidden_size=16, num_labels=150,
                                        use_auxiliary_head=False, pool_scales=[1, 2])
    folder = tmp_path_factory.mktemp("upernet")
    transformers.UperNetForSemanticSegmentation(config).save_pretrained(folder)
    save_processor(folder, size={"height": 32, "width": 32}, resample=2, **IMAGENET)
    return folder


def frames(batch: int = 2, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random pictures on the 8-bit grid (as images from files are)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=g)
    x = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (x.permute(0, 2, 3, 1) * 255).round() / 255


def reference_depth(folder, image: torch.Tensor) -> torch.Tensor:
    """transformers alone: its own model, normalisation by hand from the processor config, bicubic up, min-max."""
    model = transformers.AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True).eval()
    config = json.loads((folder / "preprocessor_config.json").read_text())
    x = image.permute(0, 3, 1, 2)
    mean, std = torch.tensor(config["image_mean"]).view(1, 3, 1, 1), torch.tensor(config["image_std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        predicted = model(pixel_values=(x - mean) / std).predicted_depth[:, None]
    predicted = F.interpolate(predicted, size=x.shape[-2:], mode="bicubic", align_corners=False)
    lo = predicted.amin(dim=(1, 2, 3), keepdim=True)
    hi = predicted.amax(dim=(1, 2, 3), keepdim=True)
    return ((predicted - lo) / (hi - lo))[:, 0]


def test_dpt_depth_matches_transformers_and_is_normalised_per_frame(dpt_folder):
    image = frames()
    out = run("depth", image, models_dir=str(dpt_folder))
    assert out.shape == (2, 32, 32, 3) and out.dtype == torch.float32
    for i in range(2):
        assert float(out[i].min()) == 0.0 and abs(float(out[i].max()) - 1.0) < 1e-6
    assert torch.allclose(out[..., 0], reference_depth(dpt_folder, image), atol=1e-4)
    assert torch.equal(out, run("depth", image, models_dir=str(dpt_folder)))  # deterministic


def test_depth_anything_runs_at_other_sizes_and_temporal_normalize_uses_the_batch_range(depth_anything_folder):
    image = frames(3, 50, 77, seed=1)
    cache = ModelCache()
    out = run("depth", image, models_dir=str(depth_anything_folder), model_cache=cache)
    assert out.shape == (3, 50, 77, 3)
    assert prepare_pixels(image.permute(0, 3, 1, 2), cache.input_spec).shape[-2:] == (42, 70)  # 42/50 kept, x14
    temporal = run("depth", image, models_dir=str(depth_anything_folder), model_cache=cache, temporal_normalize=True)
    assert float(temporal.min()) == 0.0 and abs(float(temporal.max()) - 1.0) < 1e-6
    spans = [float(temporal[i].max() - temporal[i].min()) for i in range(3)]
    assert min(spans) < 0.999  # at least one frame keeps a narrower range than its own min-max stretch
    # temporal is an affine map of the per-frame result, with one scale for the whole batch
    for i in range(3):
        a, b = out[i, ..., 0].flatten(), temporal[i, ..., 0].flatten()
        slope = (b.max() - b.min()) / (a.max() - a.min())
        assert torch.allclose(b, b.min() + slope * (a - a.min()), atol=1e-4)


@pytest.mark.parametrize("height, width, size, keep, multiple", [
    (480, 640, 384, True, 32), (512, 768, 518, True, 14), (300, 451, 512, False, 1), (1080, 1920, 518, True, 14),
    (77, 50, 42, True, 14)])
def test_input_spec_sizes_follow_the_transformers_processors(height, width, size, keep, multiple):
    reference = importlib.import_module("transformers.models.dpt.image_processing_pil_dpt").get_resize_output_image_size
    expected = reference(np.zeros((3, height, width)), (size, size), keep, multiple)
    spec = InputSpec(height=size, width=size, keep_aspect_ratio=keep, multiple=multiple)
    assert spec.output_size(height, width) == (expected.height, expected.width)


def test_shortest_edge_sizes():
    assert InputSpec(shortest_edge=256).output_size(300, 450) == (256, 384)


def test_prepare_pixels_agrees_with_the_transformers_image_processor():
    pil_processor = importlib.import_module("transformers.models.dpt.image_processing_pil_dpt")
    processor = pil_processor.DPTImageProcessorPil(size={"height": 42, "width": 42}, keep_aspect_ratio=True,
                                                   ensure_multiple_of=14, resample=3, **IMAGENET)
    image = frames(1, 64, 96, seed=4)
    expected = processor(images=[(image[0].numpy() * 255).astype(np.uint8)], return_tensors="pt")["pixel_values"]
    spec = InputSpec.from_dict(processor.to_dict())
    ours = prepare_pixels(image.permute(0, 3, 1, 2), spec)
    assert ours.shape == expected.shape
    assert float((ours - expected).abs().mean()) < 0.05  # PIL's and torch's antialiased bicubic differ slightly


def test_model_cache_loads_once_and_exposes_the_model(dpt_folder, depth_anything_folder):
    cache = ModelCache()
    run("depth", frames(), models_dir=str(dpt_folder), model_cache=cache)
    model = cache.model
    run("depth", frames(seed=5), models_dir=str(dpt_folder), model_cache=cache)
    assert cache.loads == 1 and cache.model is model and isinstance(model, torch.nn.Module)
    assert cache.device == torch.device("cpu") and not model.training
    run("depth", frames(), models_dir=str(depth_anything_folder), model_cache=cache)
    assert cache.loads == 2 and cache.model is not model  # another folder: the old model is replaced
    cache.to(dtype=torch.float64)
    assert next(cache.model.parameters()).dtype == torch.float64
    out = run("depth", frames(), models_dir=str(depth_anything_folder), model_cache=cache)
    assert out.dtype == torch.float32 and cache.loads == 2
    cache.unload()
    assert cache.model is None and cache.device is None


def test_progress_is_reported_per_model_call(dpt_folder):
    calls = []
    run("depth", frames(5), models_dir=str(dpt_folder), batch_size=2,
        progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_missing_or_wrong_model_folders_give_clear_errors(tmp_path, upernet_folder):
    with pytest.raises(PreprocessError, match="needs a local model folder"):
        run("depth", frames())
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PreprocessError, match="lacks model.safetensors, preprocessor_config.json.*huggingface-cli"):
        run("depth", frames(), models_dir=str(tmp_path))
    collection = tmp_path / "collection"
    collection.mkdir()
    (collection / "upernet").symlink_to(upernet_folder, target_is_directory=True)
    with pytest.raises(PreprocessError, match="these subfolders hold models: upernet - pass one of them"):
        run("segmentation", frames(), models_dir=str(collection))
    with pytest.raises(PreprocessError, match="upernet.*cannot load as AutoModelForDepthEstimation"):
        run("depth", frames(), models_dir=str(upernet_folder))


def test_segmentation_paints_the_argmax_class_in_ade20k_colours(upernet_folder):
    image = frames(2, 40, 56, seed=6)
    out = run("segmentation", image, models_dir=str(upernet_folder))
    assert out.shape == (2, 40, 56, 3)
    model = transformers.AutoModelForSemanticSegmentation.from_pretrained(upernet_folder, local_files_only=True)
    pixels = F.interpolate(image.permute(0, 3, 1, 2), size=(32, 32), mode="bilinear", align_corners=False,
                           antialias=True)
    mean = torch.tensor(IMAGENET["image_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET["image_std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.eval()(pixel_values=(pixels - mean) / std).logits
    labels = F.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=False).argmax(dim=1)
    expected = ade20k_palette()[labels].float() / 255
    assert torch.allclose(out, expected)
    assert len(torch.unique(labels)) > 1  # several classes: the colouring is exercised


def test_ade20k_palette_is_the_annotator_palette():
    palette = ade20k_palette()
    assert palette.shape == (150, 3)
    assert palette[0].tolist() == [120, 120, 120]  # wall
    assert palette[2].tolist() == [6, 230, 230]  # sky
    assert palette[12].tolist() == [150, 5, 61]  # person
    assert palette[149].tolist() == [92, 0, 255]

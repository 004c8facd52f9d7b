"""Depth beyond transformers folders: original Depth Anything V2 files, metric models (ZoeDepth), and video depth that
does not flicker (clip-level normalisation + per-frame scale/shift alignment)."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import transformers  # noqa: E402  (a test dependency: missing it fails)

from controlnet_core.errors import PreprocessError
from controlnet_core.preprocess import ModelCache, run
from controlnet_core.preprocess.depth import align_to_previous
from controlnet_core.preprocess.depth_anything import convert, load_original


@pytest.fixture(scope="module")
def original_vits(tmp_path_factory):
    """The original Depth Anything V2 Small module (the depth_anything_v2 package = the authors' code), its own
    random initialisation, saved as depth_anything_v2_vits.pth."""
    dpt = importlib.import_module("depth_anything_v2.dpt")
    torch.manual_seed(0)
    model = dpt.DepthAnythingV2(encoder="vits", features=64, out_channels=[48, 96, 192, 384]).eval()
    with torch.no_grad():  # layer scales start at 1e-5 in DINOv2: make the blocks matter
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("dav2")
    torch.save(model.state_dict(), folder / "depth_anything_v2_vits.pth")
    return model, folder


def _compare_with_the_authors_code(original_vits, size: tuple[int, int]) -> float:
    model, folder = original_vits
    ours = load_original(folder / "depth_anything_v2_vits.pth")
    x = torch.randn(1, 3, *size)  # multiples of 14, as its processor makes them
    with torch.no_grad():
        ref = model(x)  # (1, H, W) relative inverse depth (ReLU output)
        got = ours(pixel_values=x).predicted_depth
    assert got.shape == ref.shape and ref.std() > 0
    return float((got - ref).abs().max() / ref.abs().max())


def test_an_original_depth_anything_v2_file_loads_close_to_the_authors_code(original_vits):
    # away from 518x518 transformers interpolates DINOv2's position embeddings a little differently from the
    # original (about 1 % here); a wrong rename (q/k, fusion order, head) would be off by far more
    assert _compare_with_the_authors_code(original_vits, (70, 98)) < 3e-2


@pytest.mark.slow
def test_at_its_native_518_pixels_the_converted_model_equals_the_authors_code(original_vits):
    assert _compare_with_the_authors_code(original_vits, (518, 518)) < 1e-5


def test_the_depth_preprocessor_reads_the_original_file_or_its_folder(original_vits):
    _, folder = original_vits
    image = torch.rand(1, 56, 84, 3)
    cache = ModelCache()
    from_folder = run("depth", image, models_dir=folder, model_cache=cache)
    from_file = run("depth", image, models_dir=folder / "depth_anything_v2_vits.pth", model_cache=cache)
    assert from_folder.shape == (1, 56, 84, 3) and torch.equal(from_folder, from_file)
    assert float(from_folder.amin()) == 0.0 and float(from_folder.amax()) == 1.0
    assert cache.loads == 1  # the folder and the file name the same weights: read once


def test_the_rename_table_covers_every_original_key_and_refuses_others(original_vits):
    model, _ = original_vits
    sd = model.state_dict()
    config, renamed = convert(sd)
    with torch.device("meta"):
        hf = transformers.DepthAnythingForDepthEstimation(transformers.DepthAnythingConfig(**config))
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert sd["pretrained.cls_token"].data_ptr() == model.pretrained.cls_token.data_ptr()  # the input is untouched
    with pytest.raises(PreprocessError, match="not an original Depth Anything V2"):
        convert({"conv.weight": torch.zeros(1)}, "x.pth")


@pytest.fixture(scope="module")
def zoedepth_folder(tmp_path_factory):
    """A tiny random ZoeDepth (metric depth) with a small DPT-hybrid-free BEiT backbone."""
    torch.manual_seed(3)
    backbone = transformers.BeitConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                       intermediate_size=37, image_size=32, patch_size=8,
                                       out_features=["stage1", "stage2", "stage3", "stage4"],
                                       reshape_hidden_states=False)
    config = transformers.ZoeDepthConfig(backbone_config=backbone.to_dict(), neck_hidden_sizes=[8, 16, 32, 32],
                                         fusion_hidden_size=16, bottleneck_features=16,
                                         reassemble_factors=[4, 2, 1, 0.5],
                                         bin_embedding_dim=16, num_relative_features=8, num_attractors=[4, 4, 4, 4],
                                         bin_configurations=[{"n_bins": 8, "min_depth": 1e-3, "max_depth": 10.0,
                                                              "name": "nyu"}])
    folder = tmp_path_factory.mktemp("zoe")
    transformers.ZoeDepthForDepthEstimation(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 32, "width": 32}, "keep_aspect_ratio": True, "ensure_multiple_of": 8,
         "resample": 2, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return folder


def test_a_zoedepth_folder_gives_near_white_from_its_metric_depth(zoedepth_folder):
    image = torch.rand(1, 40, 48, 3)
    cache = ModelCache()
    hint = run("depth", image, models_dir=zoedepth_folder, model_cache=cache)
    x = F.interpolate(image.permute(0, 3, 1, 2), size=(32, 40), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        metric = cache.model(pixel_values=(x - 0.5) / 0.5).predicted_depth[:, None]  # metres, far = large
    metric = F.interpolate(metric, size=(40, 48), mode="bicubic", align_corners=False)
    expected = (metric.amax() - metric) / (metric.amax() - metric.amin())  # near = white
    assert torch.allclose(hint[..., 0], expected[:, 0], atol=1e-4)


@pytest.fixture(scope="module")
def depth_pro_folder(tmp_path_factory):
    """A tiny random Depth Pro (metric depth; its image, patch and field-of-view encoders are small DINOv2s)."""
    torch.manual_seed(4)
    vit = {"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 24, "image_size": 8, "patch_size": 4}
    config = transformers.DepthProConfig(fusion_hidden_size=16, patch_size=8, intermediate_hook_ids=[1, 0],
                                         intermediate_feature_dims=[8, 8], scaled_images_ratios=[0.5, 1],
                                         scaled_images_overlap_ratios=[0.0, 0.5], scaled_images_feature_dims=[16, 16],
                                         merge_padding_value=1, image_model_config=vit, patch_model_config=vit,
                                         fov_model_config=vit, use_fov_model=False)
    folder = tmp_path_factory.mktemp("depth_pro")
    transformers.DepthProForDepthEstimation(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 16, "width": 16}, "resample": 2, "do_normalize": True,
         "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return folder


def test_a_depth_pro_folder_gives_near_white_from_its_metric_depth(depth_pro_folder):
    image = torch.rand(2, 24, 20, 3)
    cache = ModelCache()
    hint = run("depth", image, models_dir=depth_pro_folder, model_cache=cache)
    x = F.interpolate(image.permute(0, 3, 1, 2), size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        metric = cache.model(pixel_values=(x - 0.5) / 0.5).predicted_depth[:, None]  # (2, 1, h, w), far = large
    metric = F.interpolate(metric, size=(24, 20), mode="bicubic", align_corners=False)
    low = metric.amin(dim=(1, 2, 3), keepdim=True)
    high = metric.amax(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(hint[..., 0], ((high - metric) / (high - low))[:, 0], atol=1e-4)


def scene_clip(frames: int = 8, size: int = 48, seed: int = 0) -> torch.Tensor:
    """A fixed scene under a small camera pan (2 px per frame) and auto-exposure flicker (gain 0.8-1.2, offset)."""
    g = torch.Generator().manual_seed(seed)
    wide = F.interpolate(torch.rand(1, 3, 12, 24, generator=g), size=(size, 2 * size), mode="bicubic",
                         align_corners=False).clamp(0, 1)[0]  # (3, size, 2 size)
    gains = 0.8 + 0.4 * torch.rand(frames, generator=g)
    clip = [(wide[:, :, 2 * t: 2 * t + size] * gains[t] + 0.05 * (gains[t] - 1)).clamp(0, 1) for t in range(frames)]
    return torch.stack(clip).permute(0, 2, 3, 1).contiguous()  # (frames, size, size, 3)


def flicker(depth: torch.Tensor) -> float:
    """Mean |d_t - d_{t-1}| of the normalised depth over the scene points both frames see (pan compensated)."""
    d = depth[..., 0]  # (T, H, W)
    return float((d[1:, :, :-2] - d[:-1, :, 2:]).abs().mean())


@pytest.fixture(scope="module")
def dpt_folder(tmp_path_factory):
    torch.manual_seed(1)
    config = transformers.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                                    image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                                    neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                    reassemble_factors=[4, 2, 1, 0.5])
    folder = tmp_path_factory.mktemp("dpt")
    transformers.DPTForDepthEstimation(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 32, "width": 32}, "keep_aspect_ratio": False, "resample": 3,
         "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return folder


def test_clip_options_cut_the_flicker_of_video_depth_by_half(dpt_folder):
    clip = scene_clip()
    cache = ModelCache()
    per_frame = run("depth", clip, models_dir=dpt_folder, model_cache=cache)
    steady = run("depth", clip, models_dir=dpt_folder, model_cache=cache, temporal_normalize=True, align_frames=True)
    before, after = flicker(per_frame), flicker(steady)
    assert after <= 0.5 * before, f"flicker {before:.4f} -> {after:.4f}"
    assert float(steady.amin()) == 0.0 and float(steady.amax()) == 1.0  # one range for the clip, fully used


def test_alignment_undoes_a_per_frame_scale_and_shift_exactly():
    base = torch.rand(1, 1, 16, 16)
    frames = torch.cat([base * s + b for s, b in ((1.0, 0.0), (2.0, 0.5), (0.5, -1.0), (3.0, 2.0))])
    aligned = align_to_previous(frames)
    assert torch.allclose(aligned, base.expand_as(frames), atol=1e-5)
    cut = align_to_previous(torch.cat([base, 1 - base]))  # anti-correlated: a cut, kept as it is
    assert torch.equal(cut[1], 1 - base[0])
    assert np.isfinite(align_to_previous(torch.zeros(3, 1, 4, 4)).numpy()).all()

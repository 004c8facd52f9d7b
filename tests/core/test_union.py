"""ControlNet-Union / ProMax: numerical parity with diffusers' ControlNetUnionModel (the oracle), loading, types.

Random weights in the real key names (diffusers layout, as the xinsir files), zero convs and `spatial_ch_projs`
non-zero, fp32. Rel diff = max|ours - ref| / max|ref| per residual; bound 1e-5.
"""
from __future__ import annotations

import pytest
import torch

from controlnet_core.errors import CheckpointError, ControlNetError
from controlnet_core.union import (
    UNION_TYPES,
    UnionControlNet,
    is_union,
    load_union,
    union_type_id,
)
from tests.core.test_network import inputs, rel_diff, sdxl_y
from tests.fixtures import (
    SPECS,
    diffusers_controlnet_config,
    random_controlnet_state_dict,
    to_diffusers_layout,
)

REL_TOL = 1e-5
SPEC = "tiny-sdxl"


def union_extras(num_types: int, width: int, seed: int = 5) -> dict[str, torch.Tensor]:
    """The union keys with random non-zero values (diffusers / xinsir names)."""
    g = torch.Generator().manual_seed(seed)
    tdim = 4 * width

    def w(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else shape[-1] ** -0.5)

    p = "transformer_layes.0."
    return {
        "task_embedding": w(num_types, width, scale=1.0),
        "control_add_embedding.linear_1.weight": w(tdim, 256 * num_types), "control_add_embedding.linear_1.bias":
            w(tdim, scale=0.02), "control_add_embedding.linear_2.weight": w(tdim, tdim),
        "control_add_embedding.linear_2.bias": w(tdim, scale=0.02),
        p + "attn.in_proj_weight": w(3 * width, width), p + "attn.in_proj_bias": w(3 * width, scale=0.1),
        p + "attn.out_proj.weight": w(width, width), p + "attn.out_proj.bias": w(width, scale=0.1),
        p + "ln_1.weight": 1 + 0.1 * w(width, scale=1.0), p + "ln_1.bias": w(width, scale=0.1),
        p + "ln_2.weight": 1 + 0.1 * w(width, scale=1.0), p + "ln_2.bias": w(width, scale=0.1),
        p + "mlp.c_fc.weight": w(4 * width, width), p + "mlp.c_fc.bias": w(4 * width, scale=0.1),
        p + "mlp.c_proj.weight": w(width, 4 * width), p + "mlp.c_proj.bias": w(width, scale=0.1),
        "spatial_ch_projs.weight": w(width, width), "spatial_ch_projs.bias": w(width, scale=0.1),
    }


def union_file(num_types: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    """A union state dict in the xinsir (diffusers) layout."""
    width = SPECS[SPEC].model_channels
    return {**to_diffusers_layout(random_controlnet_state_dict(SPEC, seed)), **union_extras(num_types, width)}


def build_pair(num_types: int = 8):
    from diffusers import ControlNetUnionModel
    from diffusers.models.attention_processor import AttnProcessor

    sd = union_file(num_types)
    width = SPECS[SPEC].model_channels
    ref = ControlNetUnionModel(**diffusers_controlnet_config(SPEC), num_control_type=num_types,
                               num_trans_channel=width, num_trans_head=8, num_trans_layer=1, num_proj_channel=width)
    ref.load_state_dict(sd, strict=True)
    ref.set_attn_processor(AttnProcessor())
    return load_union(sd).eval(), ref.eval()


@pytest.fixture(scope="module")
def pair():
    return build_pair()


def reference(ref, x, t, ctx, added, hints, types, scales):
    vec = torch.zeros(x.shape[0], ref.config.num_control_type)
    vec[:, types] = 1.0
    with torch.no_grad():
        down, mid = ref(x, t, ctx, controlnet_cond=hints, control_type=vec, control_type_idx=types,
                        conditioning_scale=scales, added_cond_kwargs=added, return_dict=False)
    return [*down, mid]


def compare(pair, hints, types, scales, batch=2):
    ours, ref = pair
    x, _, t, ctx, added = inputs(ours.config, batch, size=8)
    want = reference(ref, x, t, ctx, added, hints, types, scales)
    with torch.no_grad():
        out = ours.union_forward(x, hints, types, t, ctx, sdxl_y(ref, added), scales=scales)
    got = [*out["output"], *out["middle"]]
    assert len(got) == len(want) == 10
    for a, b in zip(got, want):
        assert a.shape == b.shape and b.abs().max() > 0
    return max(rel_diff(a, b) for a, b in zip(got, want))


def hint(batch, seed):
    return torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_single_type_matches_diffusers(pair):
    h = hint(1, 11).expand(2, -1, -1, -1)  # one image for both rows (cond and uncond)
    assert compare(pair, [h], [3], [0.8]) <= REL_TOL


def test_two_types_in_one_pass_match_diffusers(pair):
    h1, h2 = hint(1, 11).expand(2, -1, -1, -1), hint(1, 12).expand(2, -1, -1, -1)
    assert compare(pair, [h1, h2], [1, 3], [0.7, 1.2]) <= REL_TOL


def test_rows_with_different_hints_match_diffusers(pair):
    """Attention runs across the batch rows (the reference's axis): rows with different hints interact."""
    h1, h2 = hint(3, 21), hint(3, 22)
    assert compare(pair, [h1, h2], [0, 7], [1.0, 0.5], batch=3) <= REL_TOL
    assert compare(pair, [h1], [6], [1.0], batch=3) <= REL_TOL


def test_rows_mix_through_the_batch_axis(pair):
    """The axis matters: a row's alpha changes when another row's hint changes (so the test above can fail)."""
    ours, _ = pair
    with torch.no_grad():
        g = ours.encode_hint(hint(2, 31))
        a = ours.fuse(g, 2)
        g2 = g.clone()
        g2[1] += torch.randn(g2.shape[1:], generator=torch.Generator().manual_seed(3))
        b = ours.fuse(g2, 2)
    assert (a[0] - b[0]).abs().max() > 1e-4


def test_batch_one_hint_equals_repeated_rows(pair):
    """One hint for all rows: its alpha computed once at batch 1 is the same as for repeated rows."""
    ours, _ = pair
    with torch.no_grad():
        g = ours.encode_hint(hint(1, 41))
        one = ours.fuse(g, 4)
        rep = ours.fuse(g.expand(3, -1, -1, -1), 4)
    torch.testing.assert_close(rep, one.expand(3, -1, -1, -1), rtol=1e-5, atol=1e-6)


def test_detection_types_and_errors():
    sd = union_file(6)
    assert is_union(sd)
    net = load_union(sd)
    assert isinstance(net, UnionControlNet) and net.num_types == 6 and net.config.family == "sdxl"
    assert union_type_id("canny/lineart/anime_lineart/mlsd", 6) == 3
    assert union_type_id("auto", 6) is None
    assert union_type_id("inpaint/outpaint", 8) == 7  # Advanced-ControlNet's spelling
    with pytest.raises(ControlNetError, match="ProMax"):
        union_type_id("tile", 6)
    with pytest.raises(ControlNetError, match="unknown"):
        union_type_id("sketch", 8)
    assert list(UNION_TYPES.values()) == list(range(8))


def test_host_in_proj_spelling_loads():
    """The host renames `.attn.in_proj_` -> `.attn.in_proj.`; both spellings load to the same net."""
    sd = union_file(6)
    renamed = {k.replace(".attn.in_proj_", ".attn.in_proj."): v for k, v in sd.items()}
    a, b = load_union(sd), load_union(renamed)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_strict_loading_names_the_key():
    sd = union_file(6)
    del sd["spatial_ch_projs.bias"]
    with pytest.raises(CheckpointError, match="spatial_ch_projs.bias"):
        load_union(sd)


def test_inpaint_black_masked_is_the_repaint_hint():
    """The repaint type's hint as xinsir trained it: masked pixels 0 (the v1.1 inpaint model's are -1)."""
    from controlnet_core.preprocess import run

    image = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    mask = torch.zeros(16, 16)
    mask[:8] = 1.0
    black = run("inpaint", image, mask=mask, black_masked=True)
    assert torch.all(black[:, :8] == 0.0) and torch.equal(black[:, 8:], image[:, 8:])
    assert torch.all(run("inpaint", image, mask=mask)[:, :8] == -1.0)


def test_formats_table_loads_and_inspects_union(tmp_path):
    """The one detection table routes a union file to this loader; inspect reports kind and types."""
    from safetensors.torch import save_file

    from controlnet_core.formats import inspect_checkpoint, load_controlnet

    path = tmp_path / "union_promax.safetensors"
    save_file(union_file(8), str(path))
    info = inspect_checkpoint(path).as_dict()
    assert (info["kind"], info["format"], info["family"]) == ("union", "diffusers", "sdxl")
    assert info["union_types"][-1] == "repaint" and info["residuals"] == 10
    net = load_controlnet(path)
    assert isinstance(net, UnionControlNet) and net.kind == "union" and net.num_types == 8

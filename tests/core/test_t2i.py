"""T2I-Adapter: features vs diffusers `T2IAdapter` (full, light, SDXL) from random weights, both layouts, the
host's residual positions, engine integration."""
from __future__ import annotations

import re

import pytest
import torch

from controlnet_core.engine import Control, ResidualEngine
from controlnet_core.formats import detect_format, detect_kind, inspect_checkpoint, load_controlnet
from controlnet_core.t2i_adapter import SOFT_LEVELS, block_scales
from controlnet_core.weights import ControlWeights

diffusers = pytest.importorskip("diffusers")

CASES = {  # name: diffusers T2IAdapter arguments (tiny widths, the published structure)
    "full": dict(in_channels=3, channels=[32, 64, 128, 128], num_res_blocks=2, downscale_factor=8,
                 adapter_type="full_adapter"),
    "full-1ch": dict(in_channels=1, channels=[32, 64, 128, 128], num_res_blocks=2, downscale_factor=8,
                     adapter_type="full_adapter"),
    "light": dict(in_channels=3, channels=[32, 64, 128], num_res_blocks=4, downscale_factor=8,
                  adapter_type="light_adapter"),
    "xl": dict(in_channels=3, channels=[32, 64, 128, 128], num_res_blocks=2, downscale_factor=16,
               adapter_type="full_adapter_xl"),
}


def reference(name: str, seed: int = 0):
    """diffusers T2IAdapter with every parameter random (no zero init in an adapter, but be explicit)."""
    torch.manual_seed(seed)
    ref = diffusers.T2IAdapter(**CASES[name]).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * (1.0 / max(1, p[0].numel()) ** 0.5))
    return ref


def tencentarc_from_diffusers(sd: dict, light: bool, per_level: int) -> dict:
    """Test-side key map (written from TencentARC adapter.py, independent of the library's)."""
    out = {}
    for key, value in sd.items():
        key = key[len("adapter."):]
        m = re.match(r"body\.(\d+)\.(resnets\.(\d+)\.|in_conv\.)(.*)", key)
        if m and light:
            key = f"body.{m.group(1)}.body.{m.group(3)}.{m.group(4)}" if m.group(3) else key
        elif m:
            i = int(m.group(1))
            j = int(m.group(3)) if m.group(3) else 0
            mid = "" if m.group(3) else "in_conv."
            key = f"body.{i * per_level + j}.{mid}{m.group(4)}"
        out[key] = value
    return out


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("layout", ["diffusers", "tencentarc"])
@pytest.mark.parametrize("name", list(CASES))
def test_features_match_diffusers(name, layout):
    ref = reference(name)
    sd = ref.state_dict()
    if layout == "tencentarc":
        sd = tencentarc_from_diffusers(sd, "light" in name, CASES[name]["num_res_blocks"])
    assert detect_kind(sd) == "t2i_adapter" and detect_format(sd) == layout
    net = load_controlnet(sd)
    assert net.kind == "t2i_adapter" and net.config.variant == ("light" if "light" in name else "full")
    assert net.config.xl == (name == "xl")
    torch.manual_seed(1)
    hint = torch.rand(2, 3, 128, 96)
    with torch.no_grad():
        want = ref(hint.mean(1, keepdim=True) if CASES[name]["in_channels"] == 1 else hint)
        got = net.encode_hint(hint)
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        assert g.shape == w.shape and max_rel(g, w) <= 1e-5


@pytest.mark.parametrize("name", ["full", "xl"])
def test_features_sit_where_the_host_pops_them(name):
    net = load_controlnet(reference(name).state_dict())
    with torch.no_grad():
        feats = net.encode_hint(torch.rand(1, 3, 128, 128))
        out = net(torch.zeros(2, 4, 16, 16), guided_hint=feats)
    if name == "full":  # SD1.x: 12 input entries, popped after input blocks 0..11; features after 2, 5, 8, 11
        assert set(out) == {"input"} and len(out["input"]) == 12
        popped = out["input"][::-1]
        assert [i for i, f in enumerate(popped) if f is not None] == [2, 5, 8, 11]
        assert all(popped[b].shape == (2, *feats[k].shape[1:]) for k, b in enumerate((2, 5, 8, 11)))
    else:  # SDXL: 9 input blocks (10 entries, the first never popped), features after 3, 5, 8 and the middle
        assert len(out["input"]) == 10 and len(out["middle"]) == 1
        popped = out["input"][::-1]
        assert [i for i, f in enumerate(popped) if f is not None] == [3, 5, 8]
        assert out["middle"][0].shape[1:] == feats[3].shape[1:]


def test_soft_weights_are_the_four_level_convention():
    net = load_controlnet(reference("full").state_dict())
    assert block_scales(net.config, ControlWeights()) == (1.0, 1.0, 1.0, 1.0)
    soft = block_scales(net.config, ControlWeights(mode="prompt"))
    assert soft == pytest.approx(SOFT_LEVELS, rel=1e-12)
    assert block_scales(net.config, ControlWeights(block_multipliers=(1, 2, 3, 4))) == (1, 2, 3, 4)


def test_engine_runs_the_adapter_once_per_hint_and_sums_scaled_features():
    net = load_controlnet(reference("full").state_dict())
    calls = []
    net.register_forward_pre_hook(lambda *a: None)
    original = net.encode_hint
    net.encode_hint = lambda pixels: calls.append(1) or original(pixels)
    hint = torch.rand(1, 3, 128, 128)
    control = Control(net=net, hint=hint, strength=0.5)
    engine = ResidualEngine()
    x = torch.randn(2, 4, 16, 16)
    ctx = torch.randn(2, 7, 768)
    outs = [engine([control], x, torch.tensor([999.0, 999.0]), ctx, uncond_rows=[False, True], percent=p)
            for p in (0.0, 0.5)]
    assert len(calls) == 1  # step-independent features: one adapter pass for the whole run
    with torch.no_grad():
        feats = original(hint)
    for out in outs:
        popped = out["input"][::-1]
        for k, b in enumerate((2, 5, 8, 11)):
            torch.testing.assert_close(popped[b], 0.5 * feats[k].expand(2, -1, -1, -1))
    assert feats[0].abs().sum() > 0  # the cache was not scaled in place
    torch.testing.assert_close(original(hint)[0], feats[0])


def test_engine_masks_and_cond_only_rows():
    net = load_controlnet(reference("full").state_dict())
    hint = torch.rand(1, 3, 128, 128)
    mask = torch.zeros(128, 128)
    mask[:, :64] = 1.0
    control = Control(net=net, hint=hint, weights=ControlWeights(mode="controlnet"), mask=mask)
    out = ResidualEngine()([control], torch.randn(2, 4, 16, 16), torch.tensor([1.0, 1.0]), torch.randn(2, 7, 768),
                           uncond_rows=[False, True], percent=0.0)
    f0 = out["input"][9]  # after input block 2, latent size
    assert f0[1].abs().max() == 0  # uncond row untouched in "ControlNet is more important"
    assert f0[0, :, :, 8:].abs().max() == 0 and f0[0, :, :, :8].abs().max() > 0


def test_inspect_reports_kind_family_and_variant(tmp_path):
    from safetensors.torch import save_file

    for name, family, variant in (("full", "sd1", "full"), ("light", "sd1", "light"), ("xl", "sdxl", "full")):
        path = tmp_path / f"{name}.safetensors"
        save_file(reference(name).state_dict(), str(path))
        info = inspect_checkpoint(path).as_dict()
        assert (info["kind"], info["family"], info["variant"], info["format"]) == (
            "t2i_adapter", family, variant, "diffusers")
        assert info["residual_channels"] == [32, 64, 128, 128]


def test_strict_loading_names_the_key():
    sd = reference("full").state_dict()
    sd.pop("adapter.body.3.resnets.1.block2.bias")
    from controlnet_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"T2I-Adapter.*missing.*body\.7\.block2\.bias"):
        load_controlnet(sd)


@pytest.mark.parametrize("name", ["full", "light", "xl"])
def test_convert_between_the_two_layouts(tmp_path, name):
    """diffusers -> tencentarc -> diffusers through the CLI: same tensors, and diffusers loads the result."""
    from safetensors.torch import load_file, save_file

    from controlnet_core.__main__ import main

    ref = reference(name)
    src, mid, back = tmp_path / "d.safetensors", tmp_path / "t.safetensors", tmp_path / "d2.safetensors"
    save_file(ref.state_dict(), str(src))
    assert main(["convert", str(src), str(mid), "--to", "tencentarc"]) == 0
    assert detect_format(load_file(str(mid))) == "tencentarc"
    assert main(["convert", str(mid), str(back), "--to", "diffusers"]) == 0
    again = load_file(str(back))
    assert again.keys() == ref.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in ref.state_dict().items())
    diffusers.T2IAdapter(**CASES[name]).load_state_dict(again, strict=True)

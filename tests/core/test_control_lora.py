"""Control-LoRA and diff-ControlNet: merged once into the base U-Net; residuals equal to the dense ControlNet.

Fixture (formats_beyond.md §2, §5): a random tiny base U-Net U and LoRA factors of the real key names; the dense
ControlNet C = U + up @ down is built independently here (float64 products, the plain loader), 1-D and
ControlNet-only tensors in full. Rel diff of every residual ≤ 1e-5 (fp32).
"""
from __future__ import annotations

import pytest
import torch

from controlnet_core.control_lora import load_base_delta, merge_into_base
from controlnet_core.errors import CheckpointError, FamilyMismatchError
from controlnet_core.formats import load_controlnet
from tests.core.test_network import inputs, rel_diff
from tests.fixtures import random_controlnet_state_dict, random_unet_state_dict

RANK = 8
CONTROL_ONLY = ("input_hint_block.", "zero_convs.", "middle_block_out.")


def control_lora_file(spec="tiny-sd15", seed=0, rank=RANK):
    """(Control-LoRA state dict, the dense ControlNet it stands for, the base U-Net)."""
    base = random_unet_state_dict(spec, seed)
    dense = random_controlnet_state_dict(spec, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    lora = {"lora_controlnet": torch.tensor([])}
    for key, value in dense.items():
        stem = key[:-len(".weight")]
        if key in base and value.ndim >= 2 and key.endswith(".weight"):
            out_ch, in_ch = value.shape[0], value[0].numel()
            r = min(rank, value.shape[0], value.shape[1])
            up = torch.randn(out_ch, r, generator=g) * 0.05
            down = torch.randn(r, in_ch, generator=g) / in_ch ** 0.5
            if value.ndim == 4:  # conv: up is 1x1, down carries the kernel
                lora[stem + ".up"], lora[stem + ".down"] = up[:, :, None, None], down.reshape(r, *value.shape[1:])
            else:
                lora[stem + ".up"], lora[stem + ".down"] = up, down
            dense[key] = (base[key].double() + (up.double() @ down.double()).reshape(value.shape)).float()
        else:
            lora[key] = value  # 1-D (from C) and ControlNet-only tensors in full
    return lora, dense, base


def residuals(net, seed=0):
    x, hint, t, ctx, _ = inputs(net.config, batch=2, size=8, seed=seed)
    with torch.no_grad():
        out = net(x, hint, t, ctx)
    return [*out["output"], *out["middle"]]


def test_control_lora_equals_the_dense_controlnet():
    lora, dense, base = control_lora_file()
    delta = load_base_delta(lora)
    assert delta.kind == "control_lora" and delta.rank == RANK and delta.family == "SD1.x"
    merged = merge_into_base(delta, {"model.diffusion_model." + k: v for k, v in base.items()})
    want = load_controlnet(dense)
    got, ref = residuals(merged), residuals(want)
    assert all(r.abs().max() > 0 for r in ref)
    assert max(rel_diff(a, b) for a, b in zip(got, ref)) <= 1e-5


def test_resident_size_is_at_most_the_dense_controlnets():
    lora, dense, base = control_lora_file()
    merged = merge_into_base(load_base_delta(lora), base)
    size = sum(p.numel() * p.element_size() for p in merged.parameters())
    dense_size = sum(v.numel() * v.element_size() for v in dense.values())
    assert size <= dense_size
    # merged weights are the net's own: patching the base afterwards does not reach them
    base["input_blocks.1.0.in_layers.0.weight"].add_(1.0)
    assert not torch.equal(merged.input_blocks[1][0].in_layers[0].weight,
                           base["input_blocks.1.0.in_layers.0.weight"])


def test_base_changes_flow_into_the_control():
    """A fine-tuned (or LoRA-patched) base gives a different control: the encoder follows the user's base."""
    lora, _, base = control_lora_file()
    a = residuals(merge_into_base(load_base_delta(lora), base))
    tuned = {k: v * 1.05 if v.ndim >= 2 else v for k, v in base.items()}
    b = residuals(merge_into_base(load_base_delta(lora), tuned))
    assert max(rel_diff(x, y) for x, y in zip(a, b)) > 1e-3


def test_control_lora_for_another_family_names_both():
    lora, _, _ = control_lora_file("tiny-sd21")
    _, _, sd15_base = control_lora_file("tiny-sd15")
    with pytest.raises(FamilyMismatchError, match=r"for SD2\.x but the model .* is SD1\.x"):
        merge_into_base(load_base_delta(lora), sd15_base)


def test_diff_controlnet_equals_the_original_with_a_dropped_key_from_the_base():
    base = random_unet_state_dict("tiny-sd15", 3)
    dense = random_controlnet_state_dict("tiny-sd15", 4)
    dropped = "input_blocks.1.0.in_layers.2.bias"
    dense[dropped] = base[dropped].clone()  # |C - U| < 1e-6: the extractor drops it
    diff = {"difference": torch.tensor(1.0)}
    for key, value in dense.items():
        if key == dropped:
            continue
        diff["control_model." + key] = value - base[key] if key in base else value
    delta = load_base_delta(diff)
    assert delta.kind == "diff_controlnet"
    merged = merge_into_base(delta, base)
    torch.testing.assert_close(merged.state_dict()[dropped], dense[dropped], rtol=0, atol=0)
    got, ref = residuals(merged), residuals(load_controlnet(dense))
    assert max(rel_diff(a, b) for a, b in zip(got, ref)) <= 1e-5


def test_incomplete_file_names_the_keys():
    lora, _, base = control_lora_file()
    del lora["zero_convs.0.0.weight"]
    with pytest.raises(CheckpointError, match="zero_convs.0.0.weight"):
        merge_into_base(load_base_delta(lora), base)


def test_formats_table_inspects_control_lora_and_diff(tmp_path):
    from safetensors.torch import save_file

    from controlnet_core.formats import inspect_checkpoint, load_controlnet

    lora, _, _ = control_lora_file()
    path = tmp_path / "control_lora.safetensors"
    save_file(lora, str(path))
    info = inspect_checkpoint(path).as_dict()
    assert (info["kind"], info["family"], info["rank"], info["residuals"]) == ("control_lora", "sd1", RANK, 7)
    with pytest.raises(CheckpointError, match="base U-Net"):
        load_controlnet(path)

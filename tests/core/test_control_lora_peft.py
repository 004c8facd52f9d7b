"""Control-LoRA merged by us vs diffusers' own peft loader (an implementation we did not write).

Oracle: diffusers 0.42.1 `ControlNetModel.from_unet(unet)` + `load_lora_adapter(stability_file, prefix=None)`
(`loaders/peft.py`: a `lora_controlnet` file goes through `convert_sai_sd_control_lora_state_dict_to_peft`, then
peft wraps every factored layer as `base_layer + lora_B @ lora_A`, scale 1). The adapter stays UNFUSED, so the
low-rank branch is computed beside the base weight in every layer: an independent path from our one-time merge.

What diffusers does not do (found here, asserted below): peft wraps each factored layer and the file's bias of that
layer (stored in full by Stability's `control_lora_create.py`, and set by the host's ControlLora) has no key to land
on (`<layer>.bias` vs peft's `<layer>.base_layer.bias`), so it is silently dropped and the base U-Net's bias kept.
The parity tests therefore (a) use a file whose factored layers' biases equal the base's, where diffusers is a
complete oracle, and (b) with the file's own biases, copy them onto peft's base layers after loading.
Rel diff of every residual <= 1e-5 (fp32).
"""
from __future__ import annotations

import pytest
import torch

from controlnet_core.control_lora import load_base_delta, merge_into_base
from tests.core.test_control_lora import control_lora_file
from tests.core.test_network import inputs, rel_diff, sdxl_y
from tests.fixtures import diffusers_unet_config, ldm_to_diffusers_key, unet_to_diffusers_layout

REL_TOL = 1e-5
SPECS = ["tiny-sd15", "tiny-sdxl"]


def factored_biases(lora: dict) -> list[str]:
    """ldm names of the biases of the layers the file stores as up/down factors."""
    return [stem + ".bias" for stem in {k[:-len(".up")] for k in lora if k.endswith(".up")} if stem + ".bias" in lora]


def peft_controlnet(spec: str, lora: dict, base: dict):
    """diffusers ControlNetModel built from the base UNet2DConditionModel, the Control-LoRA loaded by peft."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    unet = UNet2DConditionModel(**diffusers_unet_config(spec))
    unet.load_state_dict(unet_to_diffusers_layout(base, spec), strict=True)
    net = ControlNetModel.from_unet(unet, conditioning_channels=lora["input_hint_block.0.weight"].shape[1])
    with pytest.warns(RuntimeWarning, match="additional target modules"):  # peft: a full tensor is no adapter
        net.load_lora_adapter(dict(lora), prefix=None)
    net.set_attn_processor(AttnProcessor())
    return net.eval()


def base_layer_bias(net, ldm_bias_key: str) -> torch.Tensor:
    """The bias peft's wrapper of a factored layer uses (`<layer>.base_layer.bias`)."""
    stem = ldm_to_diffusers_key(ldm_bias_key)[:-len(".bias")]
    return net.get_submodule(stem).base_layer.bias


def residual_pair(spec: str, ours, ref) -> list[float]:
    x, hint, t, ctx, added = inputs(ours.config, batch=2, size=8)
    with torch.no_grad():
        down, mid = ref(x, t, ctx, hint, added_cond_kwargs=added, return_dict=False)
        out = ours(x, hint, t, ctx, sdxl_y(ref, added) if added else None)
    got, want = [*out["output"], *out["middle"]], [*down, mid]
    assert len(got) == len(want) == len(ours.config.residual_channels)
    assert all(w.abs().max() > 0 for w in want)  # non-zero zero convs: not vacuous
    return [rel_diff(a, b) for a, b in zip(got, want)]


@pytest.mark.parametrize("spec", SPECS)
def test_merge_equals_diffusers_peft_where_the_file_keeps_the_base_biases(spec):
    lora, _, base = control_lora_file(spec)
    for key in factored_biases(lora):
        lora[key] = base[key].clone()  # a file whose factored layers kept the base's biases
    ours = merge_into_base(load_base_delta(lora), base)
    ref = peft_controlnet(spec, lora, base)
    assert any("lora_A" in name for name, _ in ref.named_parameters())  # the adapter is live, not fused
    assert max(residual_pair(spec, ours, ref)) <= REL_TOL


@pytest.mark.parametrize("spec", SPECS)
def test_diffusers_peft_drops_the_files_biases_of_factored_layers(spec):
    lora, _, base = control_lora_file(spec)
    keys = factored_biases(lora)
    assert keys and all(not torch.equal(lora[k], base[k]) for k in keys)
    ref = peft_controlnet(spec, lora, base)
    kept_base = [k for k in keys if torch.equal(base_layer_bias(ref, k), base[k])]
    assert kept_base == keys  # every one of them: diffusers' known gap, not ours
    for key in keys:  # put the file's biases where peft's wrapper reads them
        with torch.no_grad():
            base_layer_bias(ref, key).copy_(lora[key])
    ours = merge_into_base(load_base_delta(lora), base)
    assert max(residual_pair(spec, ours, ref)) <= REL_TOL

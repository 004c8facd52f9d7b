"""The one detection table: every kind from its real key names, refusals in one line naming the host node, and
none of the host's mis-detections (formats_beyond.md §1)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from controlnet_core.__main__ import main
from controlnet_core.errors import CheckpointError
from controlnet_core.formats import KIND_LOADERS, detect_kind, inspect_checkpoint, load_controlnet
from controlnet_core.formats.detect import KINDS, RUN_KINDS, detect
from tests.fixtures import random_controlnet_state_dict, to_diffusers_layout


def keys(*names: str) -> dict[str, torch.Tensor]:
    """A state dict with the given real key names (tiny tensors: detection reads names only)."""
    return {name: torch.zeros(1) for name in names}


# Files the core refuses, by the keys the published files carry (§1, §3, §6, §8, §9), with the kind we expect
# and a word of the host node that loads them.
REFUSED = {
    "hunyuan-tencent": (keys("before_proj.weight", "after_proj_list.18.bias", "after_proj_list.0.weight",
                             "blocks.0.attn1.q_proj.weight"), "hunyuan_dit_controlnet", "ControlNetLoader"),
    # the host has no row for the diffusers layout: "could not detect" (§1)
    "hunyuan-diffusers": (keys("controlnet_blocks.0.weight", "input_block.weight", "pos_embed.proj.weight",
                               "blocks.0.attn1.to_q.weight"), "hunyuan_dit_controlnet", "ControlNetLoader"),
    "flux-xlabs": (keys("controlnet_blocks.0.weight", "double_blocks.0.img_attn.norm.key_norm.scale",
                        "input_hint_block.0.weight", "pos_embed_input.weight"), "flux_controlnet", "ControlNetLoader"),
    "sd35-stability": (keys("controlnet_blocks.0.weight", "pos_embed_input.proj.weight",
                            "transformer_blocks.0.adaLN_modulation.1.bias"), "sd3_controlnet", "ControlNetLoader"),
    "sd3-diffusers": (keys("controlnet_blocks.0.weight", "pos_embed_input.proj.weight", "pos_embed.proj.weight",
                           "transformer_blocks.0.attn.add_q_proj.weight"), "sd3_controlnet", "ControlNetLoader"),
    # Qwen has controlnet_x_embedder like Flux InstantX: it must not take the Flux row (ComfyUI #5426 kind of bug)
    "qwen-instantx": (keys("controlnet_blocks.0.weight", "controlnet_x_embedder.weight", "txt_norm.weight",
                           "transformer_blocks.0.img_mlp.net.0.proj.weight"), "qwen_image_controlnet",
                      "ControlNetLoader"),
    "flux-instantx": (keys("controlnet_blocks.0.weight", "controlnet_x_embedder.weight", "x_embedder.weight",
                           "transformer_blocks.0.attn.to_q.weight", "controlnet_mode_embedder.weight"),
                      "flux_controlnet", "ControlNetLoader"),
    "flux-mistoline": (keys("controlnet_blocks.0.linear.weight", "input_cond_block.encoder.0.weight"),
                       "flux_controlnet", "ControlNetLoader"),
    # a model patch put in models/controlnet: the host says "could not detect" (ComfyUI #9311)
    "diffsynth": (keys("img_in.weight", "controlnet_blocks.0.x_rms.weight", "controlnet_blocks.0.y_rms.weight",
                       "controlnet_blocks.0.input_proj.weight", "controlnet_blocks.0.output_proj.weight"),
                  "diffsynth_model_patch", "ModelPatchLoader"),
    "lllite": (keys("lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.down.0.weight",
                    "lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.conditioning1.0.weight"),
               "controlnet_lllite", "Advanced-ControlNet"),
    "controlnet-xs": (keys("control_to_base_for_conv_in.weight", "down_blocks.0.base_to_ctrl.0.weight"),
                      "controlnet_xs", "ComfyUI #2279"),
    "stable-cascade": (keys("backbone.0.0.weight", "projections.0.0.weight"), "stable_cascade_controlnet",
                       "ControlNetLoader"),
    "t2i-style": (keys("style_embedding", "proj", "transformer_layes.0.attn.in_proj_weight"), "t2i_style_adapter",
                  "StyleModelLoader"),
    # task_embedding like a union, but no ControlNet in it
    "coadapter-fuser": (keys("task_embedding", "positional_embedding", "spatial_ch_projs.0.weight"),
                        "coadapter_fuser", "CoAdapters as T2I-Adapters"),
    "sd-checkpoint": (keys("model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight"),
                      "sd_checkpoint", "CheckpointLoaderSimple"),
    "diffusers-unet": (keys("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight", "up_blocks.0.resnets.0.conv1.weight"),
                       "diffusers_unet", "UNETLoader"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_kinds_are_recognised(name):
    sd, kind, _ = REFUSED[name]
    assert detect(sd).name == kind and detect(sd).refused


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_kinds_give_one_line_naming_kind_file_and_host_node(tmp_path, capsys, name):
    sd, kind, node = REFUSED[name]
    path = tmp_path / f"{name}.safetensors"
    save_file(sd, str(path))
    for argv in (["inspect", str(path), "--json"], ["convert", str(path), str(tmp_path / "o.safetensors"), "--to", "ldm"]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert out == "" and len(lines) == 1 and "Traceback" not in err, err
        assert path.name in lines[0] and f"kind {kind}" in lines[0] and node in lines[0]
    with pytest.raises(CheckpointError, match=f"kind {kind}.*{node}"):
        load_controlnet(path)


# ------------------------------------------------------------------------------------- kinds the core runs

@pytest.fixture(scope="module")
def tiny15():
    return random_controlnet_state_dict("tiny-sd15")


def union_extras(types: int = 8) -> dict[str, torch.Tensor]:
    """The modules a xinsir union adds to a diffusers ControlNet (§4), key names as published."""
    sd = keys("control_add_embedding.linear_1.bias", "control_add_embedding.linear_2.weight",
              "transformer_layes.0.attn.in_proj_weight", "spatial_ch_projs.weight")
    sd["task_embedding"] = torch.zeros(types, 32)
    sd["control_add_embedding.linear_1.weight"] = torch.zeros(64, 256 * types)
    return sd


def test_plain_controlnet_layouts_are_kind_controlnet(tiny15):
    assert detect_kind(tiny15) == "controlnet"
    assert detect_kind(to_diffusers_layout(tiny15)) == "controlnet"
    assert detect_kind({f"control_model.{k}": v for k, v in tiny15.items()}) == "controlnet"


def test_v10_full_controlldm_is_a_controlnet_not_an_sd_checkpoint(tiny15):
    sd = {f"control_model.{k}": v for k, v in tiny15.items()}
    sd.update(keys("model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight"))
    assert detect_kind(sd) == "controlnet"


def test_union_is_detected_in_diffusers_and_ldm_layouts(tiny15):
    assert detect_kind({**to_diffusers_layout(tiny15), **union_extras()}) == "union"
    assert detect_kind({**tiny15, **union_extras()}) == "union"  # the host misses an ldm-layout union (§1)


def test_control_lora_is_not_a_plain_controlnet(tiny15):
    sd = {k: v for k, v in tiny15.items() if not k.startswith("input_blocks.1.0.in_layers.2.")}
    sd.update({"lora_controlnet": torch.zeros(0), "input_blocks.1.0.in_layers.2.up": torch.zeros(32, 4, 1, 1),
               "input_blocks.1.0.in_layers.2.down": torch.zeros(4, 32, 3, 3)})
    assert detect_kind(sd) == "control_lora"


def test_diff_controlnet_is_not_a_plain_controlnet(tiny15):
    sd = {f"control_model.{k}": v for k, v in tiny15.items()}
    sd["difference"] = torch.tensor(1.0)
    assert detect_kind(sd) == "diff_controlnet"


@pytest.mark.parametrize("sd", [
    keys("conv_in.weight", "body.0.block1.weight", "body.0.block2.weight"),  # TencentARC full
    keys("body.0.in_conv.weight", "body.0.body.0.block1.weight", "body.0.out_conv.weight"),  # TencentARC light
    {"adapter": keys("conv_in.weight", "body.0.block1.weight")},  # the host's `adapter` wrapper
    keys("adapter.conv_in.weight", "adapter.body.0.resnets.0.block1.weight"),  # diffusers full / full XL
    keys("adapter.body.0.in_conv.weight", "adapter.body.0.resnets.0.block1.weight",  # diffusers light
         "adapter.body.0.out_conv.weight"),
], ids=["tencentarc-full", "tencentarc-light", "wrapped", "diffusers-full", "diffusers-light"])
def test_t2i_adapter_layouts_are_detected(sd):
    assert detect_kind(sd) == "t2i_adapter"


def test_every_kind_the_core_runs_has_a_row():
    assert {k.name for k in KINDS if not k.refused} == set(RUN_KINDS)


def test_unknown_file_lists_what_we_read_and_refuse():
    with pytest.raises(CheckpointError) as info:
        detect_kind(keys("encoder.weight"))
    for word in ("unknown", "ldm-prefixed", "diffusers", "T2I-Adapter", "Control-LoRA", "Flux", "LLLite"):
        assert word in str(info.value)


def test_pending_kinds_are_inspected_and_refused_at_load_with_a_clear_error(tmp_path, tiny15):
    from tests.core.test_union import union_extras as real_union_extras  # real shapes: the union loader checks them

    path = tmp_path / "union.safetensors"
    save_file({**to_diffusers_layout(tiny15), **real_union_extras(8, 32)}, str(path))
    info = inspect_checkpoint(path).as_dict()
    assert (info["kind"], info["format"]) == ("union", "diffusers")
    assert json.loads(json.dumps(info))["kind"] == "union"
    if "union" not in KIND_LOADERS:  # until the union loader lands (issue 9, union helper)
        assert info["family"] == "sd1" and info["residuals"] == 7
        with pytest.raises(CheckpointError, match="union.*not implemented.*Load ControlNet Model"):
            load_controlnet(path)

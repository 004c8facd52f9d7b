"""Union, Control-LoRA and diff-ControlNet files through our nodes vs the host's native nodes (final latent).

Random SD1.5-architecture files (tests/host/union_lora_files.py), 64x64 images, euler, cfg 4, 2 steps. Yardstick as
in test_parity: ||ours - native|| / ||native - uncontrolled|| <= 1 %.
"""
from __future__ import annotations

import logging

import pytest

from tests.host import graphs as G
from tests.host.graphs import TOLERANCE, effect_ratio
from tests.host.server import HostError

log = logging.getLogger(__name__)

UNION = "controlnet_union_sd15_random.safetensors"
CONTROL_LORA = "control_lora_rank16_sd15_random.safetensors"
DIFF = "diff_control_sd15_random_fp16.safetensors"


@pytest.fixture(scope="module")
def latents(server):
    b = G.base()
    G.sample(b, b.positive, b.negative, "none")
    # union, one type: the host's SetUnionControlNetType vs our union_type
    native = b.graph.add("SetUnionControlNetType", control_net=G.native_loader(b, UNION), type="depth")
    G.sample(b, *G.apply(b, "ControlNetApplyAdvanced", b.graph.out(native), b.positive, b.negative), "union_native")
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b, UNION), b.positive, b.negative,
                         union_type="depth"), "union_ours")
    # Control-LoRA: the host's ControlNetLoader takes it; ours merges it into the sampled model once
    G.sample(b, *G.apply(b, "ControlNetApplyAdvanced", G.native_loader(b, CONTROL_LORA), b.positive, b.negative),
             "lora_native")
    ours_lora = G.core_loader(b, CONTROL_LORA)
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", ours_lora, b.positive, b.negative), "lora_ours")
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", ours_lora, b.positive, b.negative, strength=0.5),
             "lora_ours_again")
    # diff-ControlNet: the host's DiffControlNetLoader (needs the MODEL) vs our plain loader
    native_diff = b.graph.out(b.graph.add("DiffControlNetLoader", model=b.model, control_net_name=DIFF))
    G.sample(b, *G.apply(b, "ControlNetApplyAdvanced", native_diff, b.positive, b.negative), "diff_native")
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b, DIFF), b.positive, b.negative), "diff_ours")
    return server.run_latents(b.graph.prompt())


@pytest.mark.parametrize("kind", ["union", "lora", "diff"])
def test_ours_matches_native(latents, kind):
    ratio = effect_ratio(latents[f"{kind}_ours"], latents[f"{kind}_native"], latents["none"])
    log.info("%s parity: |ours-native| / |native-none| = %.3g", kind, ratio)
    assert ratio <= TOLERANCE


def test_control_lora_is_merged_once_and_held_by_model_management(server, latents):
    text = server.log_tail(10**7)
    merges = text.count(f"{CONTROL_LORA} (control_lora) into the base U-Net once")
    assert merges == 1, f"merged {merges} times for two samplings of one model"
    assert f"{CONTROL_LORA}: merged ControlNet on" in text
    assert "listed by the host's model management: True" in text


def test_union_type_on_a_plain_controlnet_fails_at_the_apply_node(server):
    """union_type on a file that is no union: one clear error from the apply node, before any sampling."""
    b = G.base()
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b, G.CANNY), b.positive, b.negative,
                         union_type="tile"), "not_union")
    with pytest.raises(HostError) as info:
        server.run(b.graph.prompt())
    assert "CNCore_ApplyControlNet" in str(info.value) and "not a ControlNet-Union" in str(info.value)

"""Shuffle / global average pooling (ControlNet v1.1 shuffle, the shuffle Control-LoRA) vs the host's native nodes.

The host turns GAP on from the file name only (`_shuffle` / `_shuffle_fp16` stem, comfy/controlnet.py
`load_controlnet`; formats_beyond.md §7). The same weights are served under a shuffle name and a plain name
(tests/host/assets.py ALIASES, symlinks), so the only difference between the runs is the GAP decision.
Yardstick as in test_parity: ||ours - native|| / ||native - uncontrolled|| <= 1 %.
"""
from __future__ import annotations

import logging

import pytest

from tests.host import graphs as G
from tests.host.graphs import TOLERANCE, effect_ratio

log = logging.getLogger(__name__)

SHUFFLE = "control_v11e_sd15_shuffle_fp16.safetensors"  # -> the canny file's weights
PLAIN = G.CANNY
LORA_SHUFFLE = "control_lora_rank16_sd15_random_shuffle.safetensors"  # -> the Control-LoRA's weights
LORA = "control_lora_rank16_sd15_random.safetensors"


def ours_loader(b: G.Base, name: str, gap: str = "auto") -> list:
    return b.graph.out(b.graph.add("CNCore_LoadControlNet", control_net_name=name, global_average_pooling=gap))


@pytest.fixture(scope="module")
def latents(server):
    b = G.base()
    G.sample(b, b.positive, b.negative, "none")
    for prefix, loader in [
        ("native_shuffle", G.native_loader(b, SHUFFLE)),
        ("native_plain", G.native_loader(b, PLAIN)),
        ("ours_auto", ours_loader(b, SHUFFLE)),  # the host's file-name rule
        ("ours_on", ours_loader(b, PLAIN, "on")),  # a renamed shuffle file: the explicit option
        ("ours_off", ours_loader(b, SHUFFLE, "off")),
        ("native_lora_shuffle", G.native_loader(b, LORA_SHUFFLE)),
        ("native_lora", G.native_loader(b, LORA)),
        ("ours_lora_auto", ours_loader(b, LORA_SHUFFLE)),
    ]:
        node = "ControlNetApplyAdvanced" if prefix.startswith("native") else "CNCore_ApplyControlNet"
        G.sample(b, *G.apply(b, node, loader, b.positive, b.negative), prefix)
    return server.run_latents(b.graph.prompt())


@pytest.mark.parametrize("ours, native", [("ours_auto", "native_shuffle"), ("ours_on", "native_shuffle"),
                                          ("ours_off", "native_plain"), ("ours_lora_auto", "native_lora_shuffle")])
def test_gap_matches_the_host(latents, ours, native):
    ratio = effect_ratio(latents[ours], latents[native], latents["none"])
    log.info("%s vs %s: |ours-native| / |native-none| = %.3g", ours, native, ratio)
    assert ratio <= TOLERANCE


@pytest.mark.parametrize("shuffle, plain", [("native_shuffle", "native_plain"), ("native_lora_shuffle", "native_lora")])
def test_gap_changes_the_result(latents, shuffle, plain):
    """Not vacuous: pooling moves the latent by much more than the parity bound."""
    assert effect_ratio(latents[plain], latents[shuffle], latents["none"]) > 10 * TOLERANCE

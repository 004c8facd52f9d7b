"""Shuffle / global average pooling (ControlNet v1.1 shuffle, the shuffle Control-LoRA) vs the host's native nodes.

The host's rule (comfy/controlnet.py `load_controlnet`, v0.3.64): GAP is on when the path without its extension
ends in `_shuffle` or `_shuffle_fp16`; ControlNetLoader passes the full path, so only the file name's stem counts.
Two host facts shape the assertions below (formats_beyond.md §2, §7), both asserted here rather than assumed:
- the host pools in `control_merge`, on every row the control sits on; ControlNetApplyAdvanced puts it on cond AND
  uncond, while the shuffle net is meant for the cond side only (v1.1 README, A1111, diffusers guess mode), which
  is what ours does. The native oracle for ours is therefore the host's shuffle net on the positive prompt only
  (ControlNetApplyAdvanced's positive output with the untouched negative);
- the host builds a Control-LoRA without its `model_options`, so the file-name flag is dropped: a shuffle-named
  Control-LoRA never pools natively. Ours pools it (auto); with `off` ours is the host's result.
The same weights are served under shuffle and other names (tests/host/assets.py ALIASES, symlinks), so the only
difference between runs is the GAP decision. Yardstick as in test_parity: ||ours - native|| / ||native - none||.
"""
from __future__ import annotations

import logging

import pytest

from tests.host import graphs as G
from tests.host.graphs import TOLERANCE, effect_ratio

log = logging.getLogger(__name__)

SHUFFLE = "control_v11e_sd15_shuffle_fp16.safetensors"  # -> the canny file's weights (the host pools: _shuffle_fp16)
PLAIN = G.CANNY
LORA_SHUFFLE = "control_lora_rank16_sd15_random_shuffle.safetensors"  # -> the Control-LoRA's weights (_shuffle)
LORA_RENAMED = "control_lora_rank16_sd15_random_renamed.safetensors"  # the same weights, a name the rule misses
LORA = "control_lora_rank16_sd15_random.safetensors"


def ours_loader(b: G.Base, name: str, gap: str = "auto") -> list:
    return b.graph.out(b.graph.add("CNCore_LoadControlNet", control_net_name=name, global_average_pooling=gap))


def native_cond_only(b: G.Base, name: str) -> tuple[list, list]:
    """The host's control on the positive prompt only: ControlNetApplyAdvanced's positive, the plain negative."""
    positive, _ = G.apply(b, "ControlNetApplyAdvanced", G.native_loader(b, name), b.positive, b.negative)
    return positive, b.negative


# One prompt per group of runs that share their nets: the host keeps a prompt's nets until the next prompt, and
# every variant holds a full SD1.5 ControlNet (1.4 GB in fp32), so one prompt of all of them would need ~15 GB.
NATIVE, OURS = "native", "ours"
GROUPS = [
    [("none", None, None, None), ("native_shuffle_cond", NATIVE, SHUFFLE, "cond"),
     ("native_shuffle_both", NATIVE, SHUFFLE, "both"), ("ours_auto", OURS, SHUFFLE, "auto")],
    [("native_plain", NATIVE, PLAIN, "both"), ("ours_on", OURS, PLAIN, "on"), ("ours_off", OURS, SHUFFLE, "off")],
    [("native_lora_shuffle", NATIVE, LORA_SHUFFLE, "both"), ("native_lora", NATIVE, LORA, "both"),
     ("ours_lora_off", OURS, LORA_SHUFFLE, "off")],
    [("ours_lora_auto", OURS, LORA_SHUFFLE, "auto"), ("ours_lora_on", OURS, LORA_RENAMED, "on")],
]


def group_prompt(group) -> dict:
    """A prompt sampling each (prefix, side, file, option) of the group once; same seed, hint and prompts."""
    b = G.base()
    for prefix, side, name, option in group:
        if side is None:
            G.sample(b, b.positive, b.negative, prefix)
        elif side == NATIVE and option == "cond":
            G.sample(b, *native_cond_only(b, name), prefix)
        elif side == NATIVE:
            G.sample(b, *G.apply(b, "ControlNetApplyAdvanced", G.native_loader(b, name), b.positive, b.negative),
                     prefix)
        else:
            G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", ours_loader(b, name, option), b.positive,
                                 b.negative), prefix)
    return b.graph.prompt()


@pytest.fixture(scope="module")
def latents(server):
    out = {}
    for group in GROUPS:
        out.update(server.run_latents(group_prompt(group)))
    return out


def test_the_hosts_rule_pools_the_shuffle_named_controlnet(latents):
    """Not vacuous: the host pools the shuffle-named file (same weights as PLAIN), far beyond the parity bound."""
    ratio = effect_ratio(latents["native_plain"], latents["native_shuffle_both"], latents["none"])
    log.info("host: shuffle name vs plain name: %.3g of the effect", ratio)
    assert ratio > 10 * TOLERANCE


@pytest.mark.parametrize("ours, native", [("ours_auto", "native_shuffle_cond"), ("ours_on", "native_shuffle_cond"),
                                          ("ours_off", "native_plain")])
def test_controlnet_gap_matches_the_host(latents, ours, native):
    """auto on the shuffle name and on with a renamed file = the host's pooled net on the cond side; off = the
    host's plain net on both sides."""
    ratio = effect_ratio(latents[ours], latents[native], latents["none"])
    log.info("%s vs %s: |ours-native| / |native-none| = %.3g", ours, native, ratio)
    assert ratio <= TOLERANCE


def test_renamed_shuffle_file_with_on_equals_the_shuffle_name(latents):
    assert effect_ratio(latents["ours_on"], latents["ours_auto"], latents["none"]) <= TOLERANCE
    assert effect_ratio(latents["ours_lora_on"], latents["ours_lora_auto"], latents["none"]) <= TOLERANCE


def test_host_pools_on_both_sides_ours_on_the_cond_side(latents):
    """The documented difference (docs/formats.md): the host's advanced apply pools on cond and uncond."""
    ratio = effect_ratio(latents["ours_auto"], latents["native_shuffle_both"], latents["none"])
    log.info("ours (cond side) vs host (both sides): %.3g of the effect", ratio)
    assert ratio > 10 * TOLERANCE


def test_host_drops_the_flag_for_a_control_lora(latents):
    """The host's ControlLora ignores model_options: the shuffle-named Control-LoRA gives the plain result."""
    ratio = effect_ratio(latents["native_lora_shuffle"], latents["native_lora"], latents["none"])
    log.info("host Control-LoRA: shuffle name vs plain name: %.3g of the effect", ratio)
    assert ratio <= TOLERANCE


def test_control_lora_gap(latents):
    """Ours: off = the host's (unpooled) result; auto on the shuffle name pools, far beyond the parity bound."""
    off = effect_ratio(latents["ours_lora_off"], latents["native_lora_shuffle"], latents["none"])
    pooled = effect_ratio(latents["ours_lora_auto"], latents["ours_lora_off"], latents["none"])
    log.info("Control-LoRA: ours off vs host %.3g; ours auto vs off %.3g", off, pooled)
    assert off <= TOLERANCE
    assert pooled > 10 * TOLERANCE

"""Hostile or malformed API input through POST /prompt: each is a node error at queue time (no crash, no
traceback in the answer), and the server serves the next prompt. Every case is refused before sampling."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from tests.host import graphs as G
from tests.host.assets import ONE_PIXEL_IMAGE
from tests.host.server import HostError

log = logging.getLogger(__name__)


def _apply_prompt(name: str = G.CANNY, **apply_inputs) -> tuple[dict, str]:
    b = G.base()
    loader = b.graph.add("CNCore_LoadControlNet", control_net_name=name)
    values = dict(strength=1.0, start=0.0, end=1.0) | apply_inputs
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", b.graph.out(loader), b.positive, b.negative, **values), "bad")
    return b.graph.prompt(), loader


def _strength_prompt(**options) -> dict:
    b = G.base()
    weights = G.control_strength(b, "Balanced", **options)
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b), b.positive, b.negative,
                         control_strength=weights), "bad")
    return b.graph.prompt()


def _preprocessor_prompt(**inputs) -> dict:
    b = G.base()
    node = b.graph.add("CNCore_Preprocessor", image=b.hint, preprocessor="canny", **inputs)
    b.graph.add("PreviewImage", images=b.graph.out(node))
    return b.graph.prompt()


CASES = {  # name -> (prompt builder, what the refusal must mention)
    "name with ..": (lambda: _apply_prompt("../../../etc/passwd")[0], "is not a file of the host's models/controlnet"),
    "absolute name": (lambda: _apply_prompt("/etc/passwd")[0], "is not a file of the host's models/controlnet"),
    "strength NaN": (lambda: _apply_prompt(strength=float("nan"))[0], "strength nan"),
    "strength inf": (lambda: _apply_prompt(strength=float("inf"))[0], "strength inf"),
    "strength negative": (lambda: _apply_prompt(strength=-1.0)[0], "strength -1.0"),
    "strength 1e30": (lambda: _apply_prompt(strength=1e30)[0], "strength 1e+30"),
    "strength wrong type": (lambda: _apply_prompt(strength="strong")[0], "strength"),
    "start after end": (lambda: _apply_prompt(start=0.8, end=0.2)[0], "start_percent 0.8 is after end_percent 0.2"),
    "malformed schedule": (lambda: _strength_prompt(schedule="linear:1,abc"), "schedule"),
    "malformed block list": (lambda: _strength_prompt(block_multipliers="1, one, 1"), "block_multipliers"),
    "10 MB schedule": (lambda: _strength_prompt(schedule="x" * 10_000_000), "schedule"),
    "resolution 100000": (lambda: _preprocessor_prompt(resolution=100000), "resolution"),
    "option of the wrong type (text for an INT)": (lambda: _preprocessor_prompt(**{"canny.low_threshold": "low"}),
                                                   "canny.low_threshold"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_node_error_and_the_server_serves_on(server, reference, case):
    build, mention = CASES[case]
    with pytest.raises(HostError) as info:
        server.queue(build())
    payload = info.value.payload
    text = json.dumps(payload)
    log.info("bad input %r -> %s", case, text[:300])
    assert payload.get("node_errors"), text[:2000]  # refused at queue time, by node
    assert "Traceback" not in text and mention.lower() in text.lower(), text[:2000]
    assert server.run(G.reference_prompt())["status"]["status_str"] == "success"  # still serving


# ------------------------------------------------------------------ inputs that reach execution (mask, image sizes)

def _masked_prompt(mask_of, batch: int = 1) -> dict:
    """Ours applied with the mask `mask_of(b)` builds; 64x64 latent of `batch` frames."""
    b = G.base(batch=batch)
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b), b.positive, b.negative, mask=mask_of(b)),
             "bad_mask")
    return b.graph.prompt()


def _solid_mask(b: G.Base, size: int = 64, frames: int = 1) -> list:
    mask = b.graph.out(b.graph.add("SolidMask", value=1.0, width=size, height=size))
    if frames == 1:
        return mask
    image = b.graph.out(b.graph.add("MaskToImage", mask=mask))
    frames_image = b.graph.out(b.graph.add("RepeatImageBatch", image=image, amount=frames))
    return b.graph.out(b.graph.add("ImageToMask", image=frames_image, channel="red"))


def _cropped(b: G.Base, x: int, y: int) -> list:
    """A 64x64 mask cropped from (x, y): past the edge the host's CropMask returns 0 columns / rows."""
    return b.graph.out(b.graph.add("CropMask", mask=_solid_mask(b), x=x, y=y, width=64, height=64))


def _preprocess_image(image_of) -> dict:
    b = G.base()
    node = b.graph.add("CNCore_Preprocessor", image=image_of(b), preprocessor="canny")
    b.graph.add("PreviewImage", images=b.graph.out(node))
    return b.graph.prompt()


def _one_pixel(b: G.Base) -> list:
    return b.graph.out(b.graph.add("LoadImage", image=ONE_PIXEL_IMAGE))


RUN_CASES = {  # name -> (prompt builder, failing node or None for success, what the message must mention)
    "mask batch 3 for latent batch 2": (lambda: _masked_prompt(lambda b: _solid_mask(b, frames=3), batch=2),
                                        "KSampler", "mask batch 3 neither matches nor divides the image batch 2"),
    "mask with 0 columns": (lambda: _masked_prompt(lambda b: _cropped(b, 1000, 0)), "CNCore_ApplyControlNet",
                            "ControlNet mask has shape (1, 64, 0)"),
    "1x1 image to the Preprocessor": (lambda: _preprocess_image(_one_pixel), "CNCore_Preprocessor", "1x1 pixels"),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_bad_input_at_execution_is_a_node_error_and_the_server_serves_on(server, reference, case):
    build, node, mention = RUN_CASES[case]
    with pytest.raises(HostError) as info:
        server.run(build())
    error = info.value.payload
    log.info("bad input %r -> %s: %s: %s", case, error.get("node_type"), error.get("exception_type"),
             error.get("exception_message"))
    assert error.get("node_type") == node, error
    assert mention in error["exception_message"] and "Traceback" not in error["exception_message"], error
    assert server.run(G.reference_prompt())["status"]["status_str"] == "success"  # still serving


def test_mask_of_another_size_is_resized(server, reference):
    """A 32x32 mask of ones for a 64x64 image: resized to the latent, the same as no mask at all."""
    out = server.run_latents(_masked_prompt(lambda b: _solid_mask(b, size=32)))["bad_mask"]
    log.info("mask 32x32 for a 64x64 image -> success, max |diff| to unmasked %.3g",
             float((out - reference["ref_ours"]).abs().max()))
    assert torch.equal(out, reference["ref_ours"])

"""Bad inputs give one clear node error, and the server keeps serving the next prompt."""
from __future__ import annotations

import pytest

from tests.host import graphs as G
from tests.host.assets import NAN_LATENT, NOT_A_CONTROLNET, ONE_PIXEL_IMAGE
from tests.host.server import HostError


def _fails(server, prompt: dict) -> dict:
    """Run a prompt that must fail; returns the host's error payload (execution_error or node_errors)."""
    with pytest.raises(HostError) as info:
        server.run(prompt)
    return info.value.payload


def _still_serving(server) -> None:
    """The next (cached) prompt still completes: one bad prompt never takes the server down."""
    assert server.run(G.reference_prompt())["status"]["status_str"] == "success"


def _apply_and_sample(b: G.Base, loader: list, hint: list | None = None, prefix: str = "err") -> dict:
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", loader, b.positive, b.negative, hint=hint), prefix)
    return b.graph.prompt()


def test_wrong_family_fails_before_the_first_step_with_both_families(server, reference):
    b = G.base()
    error = _fails(server, _apply_and_sample(b, G.core_loader(b, G.SDXL_TINY)))
    message = error["exception_message"]
    assert error["exception_type"].endswith("FamilyMismatchError")
    assert "SDXL" in message and "SD1" in message and "load a controlnet" in message.lower()
    assert "mat1" not in message and "shape" not in message
    _still_serving(server)


def test_file_that_is_not_a_controlnet_names_the_file(server, reference):
    b = G.base()
    error = _fails(server, _apply_and_sample(b, G.core_loader(b, NOT_A_CONTROLNET)))
    assert error["node_type"] == "CNCore_LoadControlNet"
    assert NOT_A_CONTROLNET in error["exception_message"]
    _still_serving(server)


def test_missing_file_is_refused_at_validation(server, reference):
    b = G.base()
    error = _fails(server, _apply_and_sample(b, G.core_loader(b, "no_such_controlnet.safetensors")))
    assert "no_such_controlnet.safetensors" in str(error)
    _still_serving(server)


def test_missing_image_is_refused_at_validation(server, reference):
    b = G.base()
    prompt = _apply_and_sample(b, G.core_loader(b))
    apply_id = next(k for k, v in prompt.items() if v["class_type"] == "CNCore_ApplyControlNet")
    del prompt[apply_id]["inputs"]["image"]
    error = _fails(server, prompt)
    assert apply_id in error["node_errors"] and "image" in str(error["node_errors"][apply_id])
    _still_serving(server)


def test_one_pixel_image(server, reference):
    b = G.base()
    tiny = b.graph.out(b.graph.add("LoadImage", image=ONE_PIXEL_IMAGE))
    error = _fails(server, _apply_and_sample(b, G.core_loader(b), hint=tiny))
    assert error["node_type"] == "CNCore_ApplyControlNet" and "1x1 pixels" in error["exception_message"]
    _still_serving(server)


def test_nan_in_the_hint(server, reference):
    b = G.base()
    latent = b.graph.add("LoadLatent", latent=NAN_LATENT)
    vae = b.graph.out(next(k for k, v in b.graph.nodes.items() if v["class_type"] == "CheckpointLoaderSimple"), 2)
    nan_image = b.graph.out(b.graph.add("VAEDecode", samples=b.graph.out(latent), vae=vae))
    error = _fails(server, _apply_and_sample(b, G.core_loader(b), hint=nan_image))
    assert error["node_type"] == "CNCore_ApplyControlNet" and "NaN" in error["exception_message"]
    _still_serving(server)


def test_image_batch_that_does_not_fit_the_latent_batch(server, reference):
    b = G.base(batch=2)
    three = b.graph.out(b.graph.add("RepeatImageBatch", image=b.hint, amount=3))
    error = _fails(server, _apply_and_sample(b, G.core_loader(b), hint=three))
    message = error["exception_message"]
    assert "image batch is 3" in message and "latent batch is 2" in message
    _still_serving(server)

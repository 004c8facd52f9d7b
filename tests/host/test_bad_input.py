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
    "10 MB block list": (lambda: _strength_prompt(block_multipliers="1," * 5_000_000),
                         "block_multipliers is 10,000,000 characters long"),
    "10 MB keyframe schedule": (lambda: _strength_prompt(schedule="0:1, " * 2_000_000),
                                "schedule is 10,000,000 characters long"),
    "14 block values": (lambda: _strength_prompt(block_multipliers=", ".join(["1"] * 14)), "has 14 values"),
    "10 MB control_net_name": (lambda: _apply_prompt("a" * 10_000_000)[0], "is not a file of the host's models"),
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
    log.info("bad input %r -> %s (%d bytes answered)", case, text[:300], len(text))
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


def _zero_by_zero(b: G.Base) -> list:
    """A 0x0 IMAGE (1, 0, 0, 3): the host's ImageScaleBy with "area" scales a 1x1 image by 0.01 to 0x0 pixels
    (the other methods refuse, LoadImage, EmptyImage and ImageCrop give at least 1 pixel)."""
    return b.graph.out(b.graph.add("ImageScaleBy", image=_one_pixel(b), upscale_method="area", scale_by=0.01))


def _zero_hint_prompt() -> dict:
    b = G.base()
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b), b.positive, b.negative,
                         hint=_zero_by_zero(b)), "bad_hint")
    return b.graph.prompt()


RUN_CASES = {  # name -> (prompt builder, failing node or None for success, what the message must mention)
    "mask batch 3 for latent batch 2": (lambda: _masked_prompt(lambda b: _solid_mask(b, frames=3), batch=2),
                                        "KSampler", "mask batch 3 neither matches nor divides the image batch 2"),
    "mask with 0 columns": (lambda: _masked_prompt(lambda b: _cropped(b, 1000, 0)), "CNCore_ApplyControlNet",
                            "ControlNet mask has shape (1, 64, 0)"),
    "1x1 image to the Preprocessor": (lambda: _preprocess_image(_one_pixel), "CNCore_Preprocessor", "1x1 pixels"),
    "0x0 image to the Preprocessor": (lambda: _preprocess_image(_zero_by_zero), "CNCore_Preprocessor", "0x0 pixels"),
    "0x0 image as the hint": (_zero_hint_prompt, "CNCore_ApplyControlNet", "0x0 pixels"),
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


# ------------------------------------------------------------------- a symlink leading out of the model folders

def test_symlink_leaving_the_model_folders_is_refused_one_inside_loads(server, model_files, reference):
    """models/controlnet/<link> to a file outside every controlnet folder (here: the cache file itself, which only
    its hard link in a registered folder makes reachable): a node error at queue time naming where it leads; a
    link to a file inside a registered folder loads (test_names has one inside models/controlnet too)."""
    folder = server.base / "models" / "controlnet"
    outside, inside = folder / "escaping_link.safetensors", folder / "inside_link.safetensors"
    outside.symlink_to(model_files[G.CANNY].resolve())
    inside.symlink_to((folder / G.CANNY).resolve())  # the registered cache folder's hard link
    try:
        with pytest.raises(HostError) as info:
            server.queue(_apply_prompt(outside.name)[0])
        text = json.dumps(info.value.payload)
        log.info("symlink leaving the model folders -> %s", text[:400])
        assert info.value.payload.get("node_errors") and "Traceback" not in text
        assert "outside the host's controlnet folders" in text and str(model_files[G.CANNY].resolve()) in text
        out = server.run_latents(_apply_prompt(inside.name)[0])["bad"]
        assert torch.equal(out, reference["ref_ours"])  # the same file through a link that stays inside
    finally:
        outside.unlink()
        inside.unlink()
    assert server.run(G.reference_prompt())["status"]["status_str"] == "success"  # still serving


# ------------------------------------------------------------------------- a 16384x16384 image to the Preprocessor
BIG = 16384


def _peak_rss_while(server, run) -> tuple[object, int, int]:
    """(run()'s result, host RSS before, highest host RSS sampled every 50 ms while it ran) in bytes."""
    import threading

    import psutil

    proc = psutil.Process(server.proc.pid)
    before, peak, done = proc.memory_info().rss, [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = run()
    finally:
        done.set()
        thread.join()
    return result, before, peak[0]


def test_16384_square_image_to_the_preprocessor_is_a_bounded_result(server, reference):
    """The hint picture scaled x8, x8, x4 by the host's ImageScaleBy (a 3 GiB IMAGE: LoadImage refuses such a file,
    PIL's decompression-bomb guard), canny at resolution 512: a 512x512 hint, the host's memory bounded, the
    server serving on. (At resolution 0 the preprocessor works at 16384x16384: about 1.5x the image more.)"""
    from tests.host.test_preprocessor import _saved_images

    g = G.Graph()
    image = g.out(g.add("LoadImage", image=G.HINT_IMAGE))
    for factor in (8, 8, 4):
        image = g.out(g.add("ImageScaleBy", image=image, upscale_method="nearest-exact", scale_by=factor))
    hint = g.add("CNCore_Preprocessor", image=image, preprocessor="canny", resolution=512)
    g.add("SaveImage", images=g.out(hint), filename_prefix="big_canny")
    entry, before, peak = _peak_rss_while(server, lambda: server.run(g.prompt()))
    image_bytes = BIG * BIG * 3 * 4
    log.info("%dx%d image -> canny at 512: host RSS %.0f MiB before, peak %.0f MiB (+%.2f GiB; the IMAGE is %.2f "
             "GiB)", BIG, BIG, before / 2**20, peak / 2**20, (peak - before) / 2**30, image_bytes / 2**30)
    (saved,) = _saved_images(server, entry)
    assert saved.shape == (512, 512, 3) and saved.std() > 0
    assert peak - before < 3 * image_bytes  # the host's own scaling holds ~2 copies; the preprocessor adds little
    assert server.run(G.reference_prompt())["status"]["status_str"] == "success"  # still serving

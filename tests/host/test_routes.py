"""The pack's HTTP routes on the real host (issue 12): /controlnet_core/... and /api/controlnet_core/...."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from tests.host.assets import hint_image
from tests.host.graphs import Graph, apply, base, core_loader, sample
from tests.nodes.schemas import pack_module

PICTURE = "routes_512.png"


def _post(server, path: str, data: bytes, timeout: float = 120) -> tuple[int, dict]:
    req = urllib.request.Request(server.url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _detect_body(array: np.ndarray, **extra) -> bytes:
    return json.dumps({"controlnet_module": "canny", "controlnet_input_images": [_b64(array)],
                       "controlnet_processor_res": -1, "controlnet_threshold_a": 60,
                       "controlnet_threshold_b": 160, **extra}).encode()


@pytest.fixture(scope="module")
def picture(server) -> np.ndarray:
    array = hint_image(size=512, seed=3)
    Image.fromarray(array).save(server.base / "input" / PICTURE)
    return array


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_version_model_list_and_module_list(server, prefix):
    assert server.get(f"{prefix}/controlnet_core/version")["api"] == 1
    assert "control_v11p_sd15_canny_fp16.safetensors" in server.get(f"{prefix}/controlnet_core/model_list")["model_list"]
    modules = server.get(f"{prefix}/controlnet_core/module_list")
    registry = pack_module("controlnet_core.preprocess").PREPROCESSORS
    assert modules["module_list"] == list(registry)
    for name, spec in registry.items():
        detail = modules["module_detail"][name]
        assert [o["name"] for o in detail["options"]] == [o.name for o in spec.options]
        for got, option in zip(detail["options"], spec.options):
            assert (got["kind"], got["default"], got["min"], got["max"], got["tooltip"]) == (
                option.kind, option.default, option.min, option.max, option.tooltip)
    assert "resolution" in {o["name"] for o in modules["common_options"]}


def test_detect_equals_the_preprocessor_node(server, picture):
    status, reply = _post(server, "/controlnet_core/detect", _detect_body(picture))
    assert status == 200 and reply["info"] == "Success" and len(reply["images"]) == 1
    detected = np.asarray(Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))))
    g = Graph()
    image = g.add("LoadImage", image=PICTURE)
    pre = g.add("CNCore_Preprocessor", image=g.out(image), preprocessor="canny",
                **{"canny.low_threshold": 60, "canny.high_threshold": 160})
    g.add("SaveImage", images=g.out(pre), filename_prefix="routes_canny")
    entry = server.run(g.prompt())
    saved = next(i for out in entry["outputs"].values() for i in out["images"] if i["type"] == "output")
    node = np.asarray(Image.open(server.base / "output" / saved["subfolder"] / saved["filename"]).convert("RGB"))
    assert detected.shape == node.shape == (512, 512, 3)
    assert detected.any() and np.array_equal(detected, node)


@pytest.mark.parametrize("body, field", [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (json.dumps({"controlnet_module": "nope", "controlnet_input_images": []}).encode(), "controlnet_module"),
    (json.dumps({"controlnet_module": "canny"}).encode(), "controlnet_input_images"),
    (json.dumps({"controlnet_module": "canny", "controlnet_input_images": ["%%%"]}).encode(),
     "controlnet_input_images[0]"),
    (json.dumps({"controlnet_module": "canny", "controlnet_input_images": [], "controlnet_threshold_a": "x"}).encode(),
     "controlnet_threshold_a"),
])
def test_bad_requests_are_400_naming_the_field(server, body, field):
    status, reply = _post(server, "/api/controlnet_core/detect", body)
    assert status == 400 and reply["field"] == field and field.split("[")[0] in reply["error"]


def test_a_body_over_the_upload_limit_is_refused_unread(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/controlnet_core/detect")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(200 * 1024 * 1024))  # the host's default limit is 100 MB
        conn.endheaders()
        reply = conn.getresponse()
        payload = json.loads(reply.read())
    finally:
        conn.close()
    assert reply.status == 400 and payload["field"] == "body" and "upload limit" in payload["error"]


def _sampling_prompt(no_op: bool) -> dict:
    """A controlled 10-step sampling; `no_op` routes the latent through RepeatLatentBatch(1) (same values, a new
    cache key, so the host samples again instead of reusing the first result)."""
    b = base()
    if no_op:
        b.latent = b.graph.out(b.graph.add("RepeatLatentBatch", samples=b.latent, amount=1))
    sample(b, *apply(b, "CNCore_ApplyControlNet", core_loader(b), b.positive, b.negative),
           "busy" if no_op else "quiet", steps=10)
    return b.graph.prompt()


def test_twenty_concurrent_detects_while_a_prompt_samples(server, picture):
    quiet = server.latents(server.run(_sampling_prompt(no_op=False)))["quiet"]
    prompt_id = server.queue(_sampling_prompt(no_op=True))
    body = _detect_body(picture)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: _post(server, "/controlnet_core/detect", body, timeout=600), range(20)))
    busy = server.latents(server.wait(prompt_id))["busy"]
    assert [status for status, _ in replies] == [200] * 20
    assert len({reply["images"][0] for _, reply in replies}) == 1
    assert torch.equal(busy, quiet)

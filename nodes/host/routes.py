"""The pack's HTTP routes, under /controlnet_core/ (the host serves every route also under /api/...).

    GET  /controlnet_core/version      {"version": "<pack version>", "api": 1}
    GET  /controlnet_core/model_list   {"model_list": [files of the controlnet folders]}
    GET  /controlnet_core/module_list  {"module_list": [...], "module_detail": {name: {description, model_free,
                                        options: [{name, kind, default, min, max, step, choices, tooltip}]}},
                                        "common_options": [...]}: the schema the web extension hides options by
    POST /controlnet_core/detect       A1111's /controlnet/detect body -> {"info": "Success", "images": [b64 PNG]}

`detect` takes controlnet_module, controlnet_input_images (base64 PNG/JPEG, data URLs allowed),
controlnet_processor_res (short side; -1 = the input size), controlnet_threshold_a / _b (the module's first and
second numeric option, as A1111's sliders; -1 = default) and, beyond A1111, `controlnet_options` {option: value}.
It runs in a worker thread (the event loop only awaits it), one call at a time, with network weights through the
same host model management as the Preprocessor node (`PreprocessorModels`), so a detect call and the prompt queue
never hold two copies. Bad JSON, a bad field or a body over the host's --max-upload-size is a 400 naming the field.
There is no authentication: anyone who can reach the host's port can call these, as with the host's own routes.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io as bytes_io
import json
import logging
import threading
from pathlib import Path

import numpy as np
import tomllib
import torch
from aiohttp import web
from PIL import Image, ImageOps

from ...controlnet_core import preprocess
from ...controlnet_core.errors import ControlNetError
from . import models

log = logging.getLogger(__name__)
PREFIX = "/controlnet_core"
API_VERSION = 1
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
NUMERIC = ("int", "float")


class BadRequest(ValueError):
    """A request the client must fix: answered 400 with the field it names."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# ------------------------------------------------------------------------------------------------ pure helpers

def option_schema(option: preprocess.Option) -> dict:
    return {"name": option.name, "kind": option.kind, "default": option.default, "min": option.min,
            "max": option.max, "step": option.step, "choices": list(option.choices), "tooltip": option.tooltip}


def module_list() -> dict:
    """Every preprocessor with its options (kind, default, range, tooltip), A1111's module_list plus detail."""
    detail = {name: {"description": spec.description,
                     "model_free": spec.model_folder is None and spec.net_folder is None,
                     "options": [option_schema(o) for o in spec.options]}
              for name, spec in preprocess.PREPROCESSORS.items()}
    return {"module_list": list(detail), "module_detail": detail,
            "common_options": [option_schema(o) for o in preprocess.COMMON_OPTIONS]}


def pack_version() -> str:
    return tomllib.loads(PYPROJECT.read_text())["project"]["version"]


def decode_image(text: str, index: int) -> torch.Tensor:
    """base64 PNG/JPEG (optionally a data URL) -> (H, W, 3) float32 in [0, 1], as the host's Load Image reads it."""
    field = f"controlnet_input_images[{index}]"
    if not isinstance(text, str) or not text:
        raise BadRequest(field, f"{field} must be a base64-encoded image string")
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        picture = Image.open(bytes_io.BytesIO(base64.b64decode(text, validate=True)))
        picture = ImageOps.exif_transpose(picture).convert("RGB")
    except (binascii.Error, ValueError, OSError) as exc:
        raise BadRequest(field, f"{field} is not a base64-encoded PNG or JPEG ({exc})") from None
    return torch.from_numpy(np.asarray(picture).astype(np.float32) / 255.0)


def encode_image(frame: torch.Tensor) -> str:
    """(H, W, 3) in [0, 1] -> base64 PNG, quantised as the host's image savers do (255 * x, clipped, truncated)."""
    pixels = np.clip(255.0 * frame.float().cpu().numpy(), 0, 255).astype(np.uint8)
    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def detect_options(body: dict) -> tuple[str, dict]:
    """(preprocessor, keyword options) from an A1111 detect body; BadRequest naming the field otherwise."""
    module = body.get("controlnet_module")
    if module not in preprocess.PREPROCESSORS:
        raise BadRequest("controlnet_module", f"controlnet_module {module!r} is not one of "
                                              f"{list(preprocess.PREPROCESSORS)} (GET {PREFIX}/module_list)")
    spec = preprocess.get_spec(module)
    options: dict = {}
    res = body.get("controlnet_processor_res", -1)
    if not isinstance(res, (int, float)) or isinstance(res, bool):
        raise BadRequest("controlnet_processor_res", "controlnet_processor_res must be a number (-1: input size)")
    if res > 0:
        options["resolution"] = int(res)
    numeric = [o for o in spec.options if o.kind in NUMERIC]
    for field, slot in (("controlnet_threshold_a", 0), ("controlnet_threshold_b", 1)):
        value = body.get(field, -1)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadRequest(field, f"{field} must be a number (-1: the default)")
        if value != -1 and slot < len(numeric):
            options[numeric[slot].name] = value
    extra = body.get("controlnet_options", {})
    if not isinstance(extra, dict):
        raise BadRequest("controlnet_options", "controlnet_options must be an object {option: value}")
    options.update(extra)
    known = {o.name for o in (*spec.options, *preprocess.COMMON_OPTIONS)}
    for name, value in options.items():
        if name not in known:
            raise BadRequest("controlnet_options", f"{module} has no option {name!r}; it has {sorted(known)}")
        option = next(o for o in (*spec.options, *preprocess.COMMON_OPTIONS) if o.name == name)
        try:
            option.coerce(value, module)
        except ControlNetError as exc:
            raise BadRequest(name, str(exc)) from None
    return module, options


# ----------------------------------------------------------------------------------------------- the handlers

class Detector:
    """Runs detect calls one at a time in worker threads, network weights held by the host's model management."""

    def __init__(self, held: models.PreprocessorModels):
        self.models = held
        self.lock = threading.Lock()

    def run(self, body: dict) -> dict:
        module, options = detect_options(body)
        images = body.get("controlnet_input_images")
        if not isinstance(images, list) or not images:
            raise BadRequest("controlnet_input_images", "controlnet_input_images must be a non-empty list of "
                                                        "base64 images")
        frames = [decode_image(text, i) for i, text in enumerate(images)]
        spec = preprocess.get_spec(module)
        with self.lock, torch.inference_mode():
            extra = models.preprocessor_resources(spec, self.models)
            out, poses = [], []
            for frame in frames:  # each picture alone: sizes may differ
                result = preprocess.run_detailed(module, frame[None].to(models.compute_device()), **extra,
                                                 **options)
                out.extend(encode_image(h) for h in result.image)
                poses.extend(result.keypoints or [])
        reply = {"info": "Success", "images": out}
        if spec.keypoints:  # A1111's API: pose modules also return the keypoints (OpenPose JSON, one per image)
            reply["poses"] = poses
        return reply


def _error(field: str, message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


async def read_json(request: web.Request) -> dict:
    """The request's JSON object; BadRequest naming `body` when too large, not JSON, or not an object."""
    limit = request.app._client_max_size  # the host's --max-upload-size (server.py builds the app with it)
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest("body", f"body is {request.content_length} bytes, over the host's upload limit of {limit} "
                                 "bytes (--max-upload-size, in MB)")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest("body", f"body is over the host's upload limit of {limit} bytes (--max-upload-size)") from None
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest("body", f"body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadRequest("body", "body must be a JSON object")
    return body


def register(held: models.PreprocessorModels) -> bool:
    """Add the routes to the host's route table (before the host serves it); False when already there."""
    from server import PromptServer

    routes = PromptServer.instance.routes
    if any(getattr(r, "path", None) == f"{PREFIX}/version" for r in routes):
        return False
    detector = Detector(held)

    @routes.get(f"{PREFIX}/version")
    async def version(request):
        return web.json_response({"version": pack_version(), "api": API_VERSION})

    @routes.get(f"{PREFIX}/model_list")
    async def model_list(request):
        files = await asyncio.to_thread(models.controlnet_files)
        return web.json_response({"model_list": files})

    @routes.get(f"{PREFIX}/module_list")
    async def modules(request):
        return web.json_response(module_list())

    @routes.post(f"{PREFIX}/detect")
    async def detect(request):
        try:
            body = await read_json(request)
            return web.json_response(await asyncio.to_thread(detector.run, body))
        except BadRequest as exc:
            return _error(exc.field, str(exc))
        except ControlNetError as exc:  # e.g. a network preprocessor's weight file is missing
            return _error("controlnet_module", str(exc), status=422)

    log.debug("routes registered under %s and /api%s", PREFIX, PREFIX)
    return True

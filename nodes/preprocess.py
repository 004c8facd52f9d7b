"""`Preprocessor` node: runs any preprocessor of controlnet_core.preprocess on an IMAGE batch.

It is an output node (so "Queue Selected Output Nodes" runs it alone) and shows its hint in the node (at most
`host.ui.PREVIEW_FRAMES` frames of a video). Frame-independent preprocessors run in chunks of CHUNK_FRAMES so the
host's progress bar carries a live preview of the latest hint frame; network ones also write a status line
("depth_anything on cpu, frame 16/64"). An optional LATENT sets target_width x target_height to the latent's
pixel size, which is what pixel-perfect needs.
"""
from __future__ import annotations

import json

from comfy_api.latest import io

from ..controlnet_core import preprocess
from . import host
from .inputs import options_for, preprocessor_widgets
from .pose import PoseKeypoint

DEFAULT_PREPROCESSOR = "canny"
CHUNK_FRAMES = preprocess.CHUNK_FRAMES  # frames per call when frames are independent: one progress step each


def _widget(input_name: str, owner: str | None, option: preprocess.Option) -> io.Input:
    """One optional host widget for a registry Option (kinds int, float, bool, choice, mask)."""
    label = f"{owner}: " if owner else ""
    tooltip = f"{label}{option.tooltip}" if option.tooltip else None
    if option.kind == "int":
        return io.Int.Input(input_name, default=option.default, min=int(option.min), max=int(option.max),
                            step=int(option.step or 1), optional=True, tooltip=tooltip)
    if option.kind == "float":
        return io.Float.Input(input_name, default=option.default, min=option.min, max=option.max,
                              step=option.step or 0.01, optional=True, tooltip=tooltip)
    if option.kind == "bool":
        return io.Boolean.Input(input_name, default=option.default, optional=True, tooltip=tooltip)
    if option.kind == "choice":
        return io.Combo.Input(input_name, options=list(option.choices), default=option.default, optional=True,
                              tooltip=tooltip)
    return io.Mask.Input(input_name, optional=True, tooltip=tooltip)


class Preprocessor(io.ComfyNode):
    """Thin node: pick the preprocessor's options from the widgets, call `controlnet_core.preprocess.run`."""

    models = host.PreprocessorModels()  # network preprocessors' weights: loaded once per server process

    @classmethod
    def define_schema(cls) -> io.Schema:
        described = "; ".join(f"{n}: {spec.description}" for n, spec in preprocess.PREPROCESSORS.items())
        return io.Schema(
            node_id="CNCore_Preprocessor",
            display_name="ControlNet Preprocessor (Core)",
            category="image/preprocessors",
            description="Makes a ControlNet hint from an image batch (video frames too). Only the selected "
                        "preprocessor's options apply; names are '<preprocessor>.<option>'.",
            inputs=[
                io.Image.Input("image", tooltip="Image batch (B, H, W, C) in [0, 1]."),
                io.Combo.Input("preprocessor", options=list(preprocess.PREPROCESSORS), default=DEFAULT_PREPROCESSOR,
                               tooltip=described),
                *(_widget(*w) for w in preprocessor_widgets()),
                io.Latent.Input("latent", optional=True,
                                tooltip="The latent you will sample: its pixel size (latent x 8) becomes "
                                        "target_width x target_height, so pixel_perfect and resize_mode fit the "
                                        "hint 1:1 onto the generated image."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The hint, (B, H, W, 3) in [0, 1]."),
                     PoseKeypoint.Output(display_name="POSE_KEYPOINT",
                                         tooltip="Pose preprocessors: the keypoints, one OpenPose JSON dict per "
                                                 "frame (also in the node's ui as openpose_json); others: [].")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,  # runnable alone ("Queue Selected Output Nodes") to look at the hint
        )

    @classmethod
    def fingerprint_inputs(cls, preprocessor: str | None = None, **_) -> str:
        """The selected network preprocessor's weight files (name, size, mtime): a file changed on disk between two
        identical prompts is read again, not answered from the host's cache."""
        spec = preprocess.PREPROCESSORS.get(preprocessor)
        return "" if spec is None else host.preprocessor_fingerprint(spec)

    @classmethod
    def execute(cls, image, preprocessor: str, latent=None, **inputs) -> io.NodeOutput:
        spec = preprocess.get_spec(preprocessor)
        extra = host.preprocessor_resources(spec, cls.models)
        options = options_for(preprocessor, inputs)
        if latent is not None:
            options["target_width"], options["target_height"] = host.latent_pixel_size(latent)
        frames = image.to(host.compute_device())  # (B, H, W, C)
        label = None if extra == {} else f"{preprocessor} on {frames.device.type}"
        progress = host.Progress(frames.shape[0], cls.hidden.unique_id, label)
        result = _run(preprocessor, spec, frames, progress, {**extra, **options})
        hint = result.image.to(host.intermediate_device())
        shown = host.preview(hint, cls=cls).as_dict()
        if result.keypoints is None:
            return io.NodeOutput(hint, [], ui=shown)
        return io.NodeOutput(hint, result.keypoints, ui={**shown, "openpose_json": [json.dumps(result.keypoints)]})


def _run(name: str, spec: preprocess.PreprocessorSpec, frames, progress, options: dict) -> preprocess.PreprocessResult:
    """The hint of (B, H, W, C) `frames`; independent frames go CHUNK_FRAMES at a time, each chunk's last hint
    frame sent as the live preview. Others run in one call that reports counts only."""
    import torch

    total = frames.shape[0]
    if not spec.frame_independent or total <= CHUNK_FRAMES:
        return preprocess.run_detailed(name, frames, progress=progress.callback(), **options)
    parts = []
    for start in range(0, total, CHUNK_FRAMES):
        parts.append(preprocess.run_detailed(name, frames[start: start + CHUNK_FRAMES], **options))
        progress.update(min(start + CHUNK_FRAMES, total), total, parts[-1].image[-1])
    keypoints = None if parts[0].keypoints is None else [k for part in parts for k in part.keypoints]
    return preprocess.PreprocessResult(torch.cat([part.image for part in parts]), keypoints)

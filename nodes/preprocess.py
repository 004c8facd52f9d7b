"""`Preprocessor` node: runs any preprocessor of controlnet_core.preprocess on an IMAGE batch."""
from __future__ import annotations

import json

from comfy_api.latest import io

from ..controlnet_core import preprocess
from . import host
from .inputs import options_for, preprocessor_widgets
from .pose import PoseKeypoint

DEFAULT_PREPROCESSOR = "canny"


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
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The hint, (B, H, W, 3) in [0, 1]."),
                     PoseKeypoint.Output(display_name="POSE_KEYPOINT",
                                         tooltip="Pose preprocessors: the keypoints, one OpenPose JSON dict per "
                                                 "frame (also in the node's ui as openpose_json); others: [].")],
        )

    @classmethod
    def execute(cls, image, preprocessor: str, **inputs) -> io.NodeOutput:
        spec = preprocess.get_spec(preprocessor)
        extra = {}
        if spec.model_folder is not None:
            folder = host.preprocessor_models_dir(spec.model_folder)
            extra = {"models_dir": folder, "model_cache": cls.models.prepare(folder, spec.model_folder)}
        elif spec.net_folder is not None:
            extra = {"models_dir": host.preprocessor_search_dirs(spec.net_folder), "model_cache": cls.models.nets}
        frames = image.to(host.compute_device())  # (B, H, W, C)
        result = preprocess.run_detailed(preprocessor, frames, progress=host.progress_callback(image.shape[0]),
                                         **extra, **options_for(preprocessor, inputs))
        hint = result.image.to(host.intermediate_device())
        if result.keypoints is None:
            return io.NodeOutput(hint, [])
        return io.NodeOutput(hint, result.keypoints, ui={"openpose_json": [json.dumps(result.keypoints)]})

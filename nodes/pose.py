"""`RenderPose` node: POSE_KEYPOINT (OpenPose JSON frames from a pose editor, a saved file or the Preprocessor) to
the openpose hint image, drawn as the openpose ControlNets were trained."""
from __future__ import annotations

from comfy_api.latest import io

from ..controlnet_core.errors import PreprocessError
from ..controlnet_core.preprocess.pose import render_pose_keypoint

PoseKeypoint = io.Custom("POSE_KEYPOINT")


class RenderPose(io.ComfyNode):
    """Thin node: parse the frames, draw them at the requested size."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CNCore_RenderPose",
            display_name="Render Pose Keypoints (Core)",
            category="image/preprocessors",
            description="Draws OpenPose keypoints (POSE_KEYPOINT: one OpenPose JSON dict per frame, pixel or "
                        "normalised coordinates) as the openpose ControlNet hint.",
            inputs=[
                PoseKeypoint.Input("pose_keypoint", tooltip="One OpenPose JSON dict per frame (canvas_width, "
                                                            "canvas_height, people)."),
                io.Int.Input("width", default=0, min=0, max=16384, step=8, optional=True,
                             tooltip="Hint width (0: the keypoints' canvas width)."),
                io.Int.Input("height", default=0, min=0, max=16384, step=8, optional=True,
                             tooltip="Hint height (0: the keypoints' canvas height)."),
                io.Boolean.Input("body", default=True, optional=True, tooltip="Draw the body skeleton."),
                io.Boolean.Input("hands", default=True, optional=True, tooltip="Draw the hands."),
                io.Boolean.Input("face", default=True, optional=True, tooltip="Draw the face landmarks."),
                io.Boolean.Input("xinsir_sticks", default=False, optional=True,
                                 tooltip="Thicker limbs on large canvases, as xinsir's SDXL openpose model expects."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The pose hint, (B, H, W, 3) in [0, 1].")],
        )

    @classmethod
    def execute(cls, pose_keypoint, width: int = 0, height: int = 0, body: bool = True, hands: bool = True,
                face: bool = True, xinsir_sticks: bool = False) -> io.NodeOutput:
        if bool(width) != bool(height):
            raise PreprocessError(f"give both width and height (got {width} x {height}), or 0 for both")
        hint = render_pose_keypoint(pose_keypoint, width, height, body, hands, face, xinsir_sticks)
        return io.NodeOutput(hint)

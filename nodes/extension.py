"""The ComfyExtension the host gets from the root package's `comfy_entrypoint()`; node modules load here."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io


class ControlNetCoreExtension(ComfyExtension):
    """Lists the pack's nodes; importing them is what pulls in the host modules (nodes/host/)."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .apply import ApplyControlNet
        from .host.examples import install_example_inputs
        from .host.routes import register
        from .load import LoadControlNet
        from .pose import RenderPose
        from .preprocess import Preprocessor
        from .strength import ControlStrength
        from .train import TrainControlNet

        install_example_inputs()  # idempotent: v0.3.64 never calls on_load, so set-up lives here
        register(Preprocessor.models)  # /controlnet_core/...: same weights and model management as the node

        return [LoadControlNet, ApplyControlNet, ControlStrength, Preprocessor, RenderPose, TrainControlNet]

"""The ComfyExtension the host gets from the root package's `comfy_entrypoint()`; node modules load here."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io


class ControlNetCoreExtension(ComfyExtension):
    """Lists the pack's nodes; importing them is what pulls in the host modules (nodes/host/)."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .apply import ApplyControlNet
        from .load import LoadControlNet
        from .pose import RenderPose
        from .preprocess import Preprocessor
        from .strength import ControlStrength

        return [LoadControlNet, ApplyControlNet, ControlStrength, Preprocessor, RenderPose]

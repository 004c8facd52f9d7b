"""`LoadControlNet` node: a file from the host's `controlnet` folder -> the host's CONTROL_NET type."""
from __future__ import annotations

from comfy_api.latest import io

from . import host


class LoadControlNet(io.ComfyNode):
    """Thin node: strict core loader, weights handed to the host's model management (nodes/host/)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CNCore_LoadControlNet",
            display_name="Load ControlNet (Core)",
            category="loaders",
            description="Loads an SD1.x / SD2.x / SDXL ControlNet (lllyasviel .pth, prefixed or bare ldm, diffusers; "
                        ".safetensors/.pth/.ckpt/.bin) strictly. The output works with Apply ControlNet (Core) "
                        "and with the host's own Apply ControlNet nodes.",
            inputs=[
                io.Combo.Input("control_net_name", options=host.controlnet_files(),
                               tooltip="A file in the host's models/controlnet folder. Its family (SD1.x, SD2.x, "
                                       "SDXL) is read from the weights, never from the name."),
            ],
            outputs=[io.ControlNet.Output(display_name="CONTROL_NET",
                                          tooltip="A ControlNet for Apply ControlNet (Core) or the host's Apply "
                                                  "ControlNet.")],
        )

    @classmethod
    def validate_inputs(cls, control_net_name: str | None = None) -> bool | str:
        """At queue time: only a file the folder lists (no `..`, absolute paths or other folders)."""
        if control_net_name is None or control_net_name in host.controlnet_files():
            return True
        return (f"control_net_name {control_net_name[:200]!r} is not a file of the host's models/controlnet "
                "folder: pick one from the list (paths outside the model folders are refused).")

    @classmethod
    def fingerprint_inputs(cls, control_net_name: str) -> str:
        """The file's size and mtime: a file changed on disk is loaded again, not served from the host's cache."""
        return host.models.controlnet_fingerprint(control_net_name)

    @classmethod
    def execute(cls, control_net_name: str) -> io.NodeOutput:
        return io.NodeOutput(host.load_controlnet(control_net_name))

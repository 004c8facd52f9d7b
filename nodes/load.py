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
                        ".safetensors/.pth/.ckpt/.bin) or T2I-Adapter strictly. The output works with Apply ControlNet (Core) "
                        "and with the host's own Apply ControlNet nodes.",
            inputs=[
                io.Combo.Input("control_net_name", options=host.controlnet_files(),
                               tooltip="A file in the host's models/controlnet folder. Its family (SD1.x, SD2.x, "
                                       "SDXL) is read from the weights, never from the name."),
                io.Combo.Input("global_average_pooling", options=["auto", "on", "off"], default="auto",
                               optional=True,
                               tooltip="Shuffle ControlNets (v1.1 shuffle) pool their residuals and apply to the "
                                       "positive prompt only. auto: on when the file name ends in _shuffle or "
                                       "_shuffle_fp16 (the host's rule); on / off for a renamed file."),
            ],
            outputs=[io.ControlNet.Output(display_name="CONTROL_NET",
                                          tooltip="A ControlNet for Apply ControlNet (Core) or the host's Apply "
                                                  "ControlNet.")],
        )

    @classmethod
    def execute(cls, control_net_name: str, global_average_pooling: str = "auto") -> io.NodeOutput:
        return io.NodeOutput(host.load_controlnet(control_net_name, global_average_pooling))

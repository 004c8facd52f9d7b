"""ComfyUI entry point of comfyui-controlnet-core (host V3 API: `comfy_entrypoint()` -> ComfyExtension).

Importing this package imports nothing from the host: the node modules (and with them `comfy_api`) load only
when the host calls `comfy_entrypoint()`. The library itself lives in `controlnet_core/` and never imports the host.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """Called once by the host's custom-node loader (nodes.py `load_custom_node`)."""
    from .nodes.extension import ControlNetCoreExtension

    return ControlNetCoreExtension()

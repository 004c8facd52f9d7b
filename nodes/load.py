"""`LoadControlNet` node: a file from the host's `controlnet` folder -> the host's CONTROL_NET type."""
from __future__ import annotations

import os
import posixpath

from comfy_api.latest import io

from ..controlnet_core.errors import ControlNetError
from . import host


def resolve_name(name: str, files: list[str]) -> str | None:
    """The entry of `files` that `name` means: itself, the same path with `\\` or `/` separators (a workflow
    saved on another OS), or the one file with that basename; None when absent or ambiguous."""
    if name in files:
        return name
    wanted = name.replace("\\", "/")
    by_path = {f.replace("\\", "/"): f for f in files}
    if wanted in by_path:
        return by_path[wanted]
    same_base = [f for key, f in by_path.items() if posixpath.basename(key) == posixpath.basename(wanted)]
    return same_base[0] if len(same_base) == 1 else None


def missing_message(name: str, files: list[str], folders: list[str]) -> str:
    """Why `name` cannot be loaded, naming where the host looked and how to add a folder."""
    base = posixpath.basename(name.replace("\\", "/"))
    twins = [f for f in files if posixpath.basename(f.replace("\\", "/")) == base]
    if len(twins) > 1:
        return (f"control_net_name {name[:200]!r} is not in the controlnet folders, and {len(twins)} files there "
                f"are called {base!r}: {twins}. Pick one in Load ControlNet (Core).")
    return (f"control_net_name {name[:200]!r} is not a file of the host's models/controlnet folders "
            f"({', '.join(folders) or 'none'}). "
            "Put the file in one of them (models/controlnet), or add its folder under `controlnet:` in ComfyUI's "
            "extra_model_paths.yaml, then press R (refresh) in the editor.")


def inside_folders(path: str, folders: list[str]) -> bool:
    """True when `path`, every symlink resolved, lies in one of `folders` (each resolved too: a models folder
    that is itself a link to another disk is fine; a file linked from outside all of them is not)."""
    real = os.path.realpath(path)
    for folder in folders:
        root = os.path.realpath(folder)
        try:
            if os.path.commonpath([real, root]) == root:
                return True
        except ValueError:  # another drive (Windows): not inside
            continue
    return False


def outside_message(name: str, path: str, folders: list[str]) -> str:
    """Why a listed name that leads outside the controlnet folders is refused, and the fix."""
    return (f"control_net_name {name[:200]!r} is a link to {os.path.realpath(path)!r}, outside the host's "
            f"controlnet folders ({', '.join(folders) or 'none'}): a symlink may not lead out of the model folders. "
            "Add the folder it points into under `controlnet:` in ComfyUI's extra_model_paths.yaml, or move the "
            "file into models/controlnet.")


def checked_name(name: str) -> tuple[str | None, str | None]:
    """(listed name, None) when `name` is loadable, else (None, why not): not listed, or a link leaving the
    folders."""
    files, folders = host.controlnet_files(), host.controlnet_folders()
    resolved = resolve_name(name, files)
    if resolved is None:
        return None, missing_message(name, files, folders)
    try:
        path = host.controlnet_path(resolved)
    except FileNotFoundError:  # listed a moment ago, gone (or a dangling link) now
        return None, missing_message(name, [], folders)
    if not inside_folders(path, folders):
        return None, outside_message(name, path, folders)
    return resolved, None


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
    def validate_inputs(cls, control_net_name: str | None = None) -> bool | str:
        """At queue time (the host, v0.3.64, does not check V3 combo values): only a file the folders list, under
        either separator or a unique basename; `..`, absolute paths, other folders and symlinks leading out of the
        controlnet folders are refused."""
        if control_net_name is None:  # linked from another node: checked when it runs
            return True
        return checked_name(control_net_name)[1] or True

    @classmethod
    def fingerprint_inputs(cls, control_net_name: str, global_average_pooling: str = "auto") -> str:
        """The file's size and mtime: a file changed on disk is loaded again, not served from the host's cache."""
        name = resolve_name(control_net_name, host.controlnet_files()) or control_net_name
        return f"{host.models.controlnet_fingerprint(name)}:{global_average_pooling}"

    @classmethod
    def execute(cls, control_net_name: str, global_average_pooling: str = "auto") -> io.NodeOutput:
        name, refused = checked_name(control_net_name)
        if name is None:
            raise ControlNetError(refused)
        return io.NodeOutput(host.load_controlnet(name, global_average_pooling))

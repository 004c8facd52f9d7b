"""Host model management for the pack: the host's model folders, devices, dtypes, ModelPatcher-held weights.

Part of the adapter layer (`nodes/host/`, the only package that imports the host). ControlNet files become a
`CoreControlNet` (adapter.py) whose weights a host `ModelPatcher` loads and offloads; preprocessor networks are
held the same way (`PreprocessorModels`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils
import folder_paths

from ...controlnet_core.engine import prepare_for_device
from ...controlnet_core.formats import load_controlnet as core_load_controlnet
from ...controlnet_core.formats import storage_dtype
from .adapter import BaseMergedControlNet, CoreControlNet

log = logging.getLogger(__name__)

CONTROLNET_FOLDER = "controlnet"
PREPROCESSOR_FOLDER = "controlnet_preprocessors"
INFERENCE_DTYPES = {"sdxl": (torch.bfloat16, torch.float16, torch.float32)}  # host supported_models.py
DEFAULT_INFERENCE_DTYPES = (torch.float16, torch.float32)  # SD1.x / SD2.x (host: SD15, SD20)


# --------------------------------------------------------------------------------------------- files & devices

def controlnet_files() -> list[str]:
    """Files in the host's `controlnet` model folder(s), as the host's own loader lists them."""
    return folder_paths.get_filename_list(CONTROLNET_FOLDER)


def controlnet_folders() -> list[str]:
    """Every folder the host searches for `controlnet` files (models/controlnet, models/t2i_adapter and those of
    extra_model_paths.yaml)."""
    return list(folder_paths.get_folder_paths(CONTROLNET_FOLDER))


def controlnet_path(name: str) -> str:
    """Absolute path of a `controlnet` folder file; the host raises FileNotFoundError naming it when absent."""
    return folder_paths.get_full_path_or_raise(CONTROLNET_FOLDER, name)


def controlnet_fingerprint(name: str) -> str:
    """Size and modification time of a `controlnet` folder file ("missing" when gone): a file replaced, truncated
    or deleted on disk makes the host run the loader again (and report the file) instead of reusing its cache."""
    try:
        return _size_and_mtime(controlnet_path(name))
    except FileNotFoundError:  # the host's lookup: no such file in the folders
        return "missing"


def _size_and_mtime(path: str) -> str:
    """The file's size and mtime_ns as "size:mtime"; "missing" when it cannot be read (gone, or removed since a
    folder listing)."""
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def preprocessor_folders() -> list[str]:
    """Every `controlnet_preprocessors` folder: `models/controlnet_preprocessors` and those added under that name
    in extra_model_paths.yaml (registered on first use, no import side effects)."""
    if PREPROCESSOR_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(PREPROCESSOR_FOLDER,
                                           os.path.join(folder_paths.models_dir, PREPROCESSOR_FOLDER), is_default=True)
    return list(folder_paths.get_folder_paths(PREPROCESSOR_FOLDER))


def preprocessor_models_dir(name: str) -> str:
    """`models/controlnet_preprocessors/<name>`: the folder of a transformers model (depth, segmentation)."""
    return os.path.join(preprocessor_folders()[0], name)


def preprocessor_search_dirs(name: str) -> list[str]:
    """Where a network preprocessor looks for its published weight file, in order: `<folder>/<name>/` then
    `<folder>/` itself, for every `controlnet_preprocessors` folder."""
    return [d for base in preprocessor_folders() for d in (os.path.join(base, name), base)]


def compute_device() -> torch.device:
    """Where nodes should run tensor work (the host's torch device)."""
    return comfy.model_management.get_torch_device()


def intermediate_device() -> torch.device:
    """Where node outputs live between nodes (the host's intermediate device, CPU by default)."""
    return comfy.model_management.intermediate_device()


def progress_callback(total: int) -> Callable[[int, int], None]:
    """A `(done, total)` callback driving the host's progress bar for the running node."""
    bar = comfy.utils.ProgressBar(total)
    return lambda done, total: bar.update_absolute(done, total)


def choose_dtypes(stored: torch.dtype, family: str, load_device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(weight dtype, compute dtype) the host would pick for this file (comfy/controlnet.py loader rules)."""
    supported = list(INFERENCE_DTYPES.get(family, DEFAULT_INFERENCE_DTYPES))
    weight = comfy.model_management.unet_dtype(model_params=-1, supported_dtypes=supported, weight_dtype=stored)
    compute = comfy.model_management.unet_manual_cast(weight, load_device, supported) or weight
    return weight, compute


def host_layer_classes() -> dict[type, type]:
    """torch.nn layer -> the host's cast-on-read subclass (comfy/ops.py): same parameters and forward, plus the
    `comfy_cast_weights` switch the host's ModelPatcher.load turns on for layers it leaves offloaded (low VRAM)."""
    ops = comfy.ops.disable_weight_init
    return {torch.nn.Linear: ops.Linear, torch.nn.Conv2d: ops.Conv2d, torch.nn.GroupNorm: ops.GroupNorm,
            torch.nn.LayerNorm: ops.LayerNorm}


def store_narrow(net: torch.nn.Module, weight: torch.dtype, compute: torch.dtype) -> torch.nn.Module:
    """The kernels and matrices of the Linear/Conv2d layers stay in `weight` (e.g. fp8) and the host's layers cast
    them on read, layer by layer (`comfy_cast_weights`, as its manual-cast ops); every other parameter (biases,
    norms, the union's embeddings and attention matrices) becomes `compute`, and the net reports `compute`. No
    parametrization: torch's parametrize gives each module a class of its own that refers back to it, a reference
    cycle that kept a freed net alive until the collector ran (the host then warned of a potential leak)."""
    net.eval().requires_grad_(False)
    use_host_layers(net)
    for module in net.modules():
        narrow = isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and hasattr(module, "comfy_cast_weights")
        if narrow:
            module.comfy_cast_weights = True
        for name, param in list(module.named_parameters(recurse=False)):
            dtype = weight if narrow and name == "weight" else compute
            module._parameters[name] = torch.nn.Parameter(param.detach().to(dtype), requires_grad=False)
    net.compute_dtype = compute
    return net


def use_host_layers(net: torch.nn.Module) -> int:
    """Re-class our plain Linear/Conv2d/GroupNorm/LayerNorm layers (exact types only) as the host's, in place, so
    a partial load offloads them layer by layer and casts each on read; returns how many were converted."""
    classes = host_layer_classes()
    converted = 0
    for module in net.modules():
        host_class = classes.get(type(module))
        if host_class is not None:
            module.__class__ = host_class  # a subclass adding no state: parameters and forward unchanged
            converted += 1
    return converted


def hold(net: torch.nn.Module, stored: torch.dtype, family: str) -> comfy.model_patcher.ModelPatcher:
    """Any control network of the core (ControlNet, union, T2I-Adapter, merged Control-LoRA...) under the host's
    model management: weights in the dtype the host picks (narrow ones cast on read), in a ModelPatcher that
    loads and offloads them (layer by layer under a low-VRAM budget). The one place every kind goes through."""
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    weight, compute = choose_dtypes(stored, family, load_device)
    if weight == compute:
        net = prepare_for_device(net, offload_device, compute)  # one cast at load, none per step
        use_host_layers(net)
    else:  # fp8 / fp16 kept narrow in the host's layers, cast on read
        net = store_narrow(net, weight, compute)
    log.debug("holding a %s network: weights stored as %s, computing in %s", family, weight, compute)
    return comfy.model_patcher.ModelPatcher(net, load_device=load_device, offload_device=offload_device)


class BaseMerge:
    """A Control-LoRA / diff-ControlNet file and its ControlNet merged with the last base-model state it was sampled
    with: merged once per (diffusion model, applied weight patches), held in a ModelPatcher, never re-merged per
    forward. A new base state replaces (frees) the previous merge."""

    def __init__(self, delta):
        self.delta = delta  # controlnet_core.control_lora.BaseDelta (the file's tensors, on the CPU)
        self.key = None
        self.patcher: comfy.model_patcher.ModelPatcher | None = None

    @staticmethod
    def base_key(model) -> tuple:
        """Identity of the base weights: the diffusion model object and the weight patches applied to it (a LoRA or
        another fine-tune gives another key)."""
        return id(model.diffusion_model), getattr(model, "current_weight_patches_uuid", None)

    def patcher_for(self, model) -> comfy.model_patcher.ModelPatcher:
        """The merged ControlNet for the model about to be sampled, loaded by the host's model management."""
        from ...controlnet_core.control_lora import merge_into_base

        key = self.base_key(model)
        if self.patcher is None or key != self.key:
            self.patcher, self.key = None, None  # free the previous merge before building the next
            family = "sdxl" if self.delta.adm_in_channels else "sd1"
            stored = storage_dtype(self.delta.tensors, self.delta.source)
            weight, _ = choose_dtypes(stored, family, comfy.model_management.get_torch_device())
            net = merge_into_base(self.delta, model.diffusion_model.state_dict(), dtype=weight)  # sums in fp32
            self.patcher, self.key = hold(net, weight, net.config.family), key
            log.info("merged %s (%s) into the base U-Net once for this model state; held by the host's model "
                     "management", self.delta.source, self.delta.kind)
        comfy.model_management.load_models_gpu([self.patcher])  # pre_run comes after the sampler's own load
        listed = any(m.model is self.patcher for m in comfy.model_management.current_loaded_models)
        log.info("%s: merged ControlNet on %s, listed by the host's model management: %s", self.delta.source,
                 next(self.patcher.model.parameters()).device, listed)
        return self.patcher


def _key_names(path: str) -> set[str] | None:
    """The tensor names of a safetensors file without reading its tensors; None for other files."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return set(f.keys())
    except Exception:  # noqa: BLE001 - not a safetensors file: the core reader decides (and names the problem)
        return None


def load_control_file(path: str):
    """(kind, network or BaseDelta) of a control file, its kind from the core's one detection table (key names
    only; safetensors headers are read without the tensors): Control-LoRA and diff-ControlNet stay unmerged until
    sampling, every other kind is loaded by the core's loader (which names refused kinds and broken files)."""
    from ...controlnet_core.control_lora import read_base_delta
    from ...controlnet_core.errors import CheckpointError
    from ...controlnet_core.formats import read_state_dict
    from ...controlnet_core.formats.detect import detect

    keys = _key_names(path)
    sd = read_state_dict(path) if keys is None else None
    try:
        kind = detect(dict.fromkeys(keys if keys is not None else sd), path).name
    except CheckpointError:
        kind = None  # the loader below raises the error, with the file named
    if kind in ("control_lora", "diff_controlnet"):
        return kind, read_base_delta(sd if sd is not None else read_state_dict(path), path)
    net = core_load_controlnet(path, device=comfy.model_management.unet_offload_device())  # .pth: read twice
    return getattr(net, "kind", "controlnet"), net


def load_controlnet(name: str, global_average_pooling: str = "auto") -> "CoreControlNet":
    """A file of the `controlnet` folder -> adapter whose weights the host's ModelPatcher loads and offloads.
    `global_average_pooling`: "auto" (the host's file-name rule), "on" or "off" (v1.1 shuffle)."""
    from ...controlnet_core.formats import global_average_pooling as gap_for

    gap = gap_for(global_average_pooling, name)
    path = controlnet_path(name)
    kind, net = load_control_file(path)
    if kind in ("control_lora", "diff_controlnet"):
        log.info("loaded %s: %s %s, rank %s; built from the sampled model's U-Net at pre_run", name, net.family,
                 net.kind, net.rank)
        return BaseMergedControlNet(BaseMerge(net), global_average_pooling=gap)
    patcher = hold(net, net.storage_dtype, net.config.family)
    what = {"t2i_adapter": "T2I-Adapter"}.get(getattr(net, "kind", "controlnet"), "ControlNet")
    log.info("loaded %s: %s %s %s (%s layout, stored %s)", name, net.config.family, net.config.variant, what,
             net.source_format, net.storage_dtype)
    if gap:
        log.info("%s: global average pooling on (conditional rows only)", name)
    return CoreControlNet(patcher, global_average_pooling=gap)


class PreprocessorModels:
    """The Preprocessor node's network weights: one core ModelCache per model folder, read from disk once per
    server process and handed to the host's model management (a ModelPatcher), which loads and offloads them."""

    def __init__(self):
        from ...controlnet_core.preprocess.nets import NetCache

        self._caches: dict = {}
        self._patchers: dict = {}
        self.nets = NetCache(manage=self._manage)  # pure-torch networks (softedge, pose, ...)

    def _manage(self, module: torch.nn.Module) -> torch.device:
        """Hand a network to the host's model management before it runs; returns the device to run it on."""
        patcher = self._patchers.get(id(module))
        if patcher is None or patcher.model is not module:
            patcher = comfy.model_patcher.ModelPatcher(module, load_device=comfy.model_management.get_torch_device(),
                                                       offload_device=comfy.model_management.unet_offload_device())
            self._patchers[id(module)] = patcher
        comfy.model_management.load_models_gpu([patcher])
        return patcher.load_device

    def prepare(self, folder: str, task: str):
        """The loaded ModelCache of `folder`, its weights on the host's torch device (the host may evict others)."""
        from ...controlnet_core.preprocess import ModelCache

        load_device = comfy.model_management.get_torch_device()
        cache = self._caches.setdefault(folder, ModelCache(load_device=load_device))
        model = cache.load(folder, task)
        patcher = self._patchers.get(folder)
        if patcher is None or patcher.model.held is not model:
            holder = torch.nn.Module()  # the patcher writes `.device` on its model; transformers' is read-only
            holder.held = model
            patcher = comfy.model_patcher.ModelPatcher(holder, load_device=load_device,
                                                       offload_device=comfy.model_management.unet_offload_device())
            self._patchers[folder] = patcher
        comfy.model_management.load_models_gpu([patcher])
        return cache


def preprocessor_fingerprint(spec) -> str:
    """Name, size and modification time of every file a network preprocessor may read ("" for pixel-only ones): a
    weight file replaced, truncated or deleted between two identical prompts makes the host run the node again
    instead of handing back its cached hint. Only the files directly in the searched folders are listed."""
    if spec.model_folder is not None:
        folders = [preprocessor_models_dir(spec.model_folder)]
    elif spec.net_folder is not None:
        folders = preprocessor_search_dirs(spec.net_folder)
    else:
        return ""
    seen = []
    for folder in folders:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # a folder that does not exist (yet)
            seen.append(f"{folder}:-")
            continue
        seen += [f"{e.path}:{_size_and_mtime(e.path)}" for e in entries if e.is_file()]
    return "|".join(seen)


def preprocessor_resources(spec, held: PreprocessorModels) -> dict:
    """The keyword arguments a network preprocessor needs (models_dir, model_cache) from the host's folders and
    `held`'s caches; {} for pixel-only preprocessors. Shared by the Preprocessor node and the detect route."""
    if spec.model_folder is not None:
        folder = preprocessor_models_dir(spec.model_folder)
        return {"models_dir": folder, "model_cache": held.prepare(folder, spec.model_folder)}
    if spec.net_folder is not None:
        return {"models_dir": preprocessor_search_dirs(spec.net_folder), "model_cache": held.nets}
    return {}

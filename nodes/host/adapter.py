"""The one module that imports the host (comfy, folder_paths): ControlBase adapter, model management, family check.

The adapter follows the host's own `comfy.controlnet.ControlNet` contract (shared/research/comfyui_native.md §1):
`copy()` for the Apply nodes, `pre_run` / `get_control` / `cleanup` / `get_models` for the sampler, residuals
{"input", "middle", "output"} summed with `previous_controlnet`'s. The residual math is controlnet_core's engine.
"""
from __future__ import annotations

import bisect
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

import comfy.controlnet
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths

from ..controlnet_core.engine import Control, ResidualEngine, check_family, prepare_for_device
from ..controlnet_core.errors import ControlNetError, FamilyMismatchError
from ..controlnet_core.formats import load_controlnet as core_load_controlnet
from ..controlnet_core.weights import ControlWeights

log = logging.getLogger(__name__)

CONTROLNET_FOLDER = "controlnet"
PREPROCESSOR_FOLDER = "controlnet_preprocessors"
FULL_WINDOW = (0.0, 1.0)
PERCENT_TABLE_SIZE = 1001  # sigma -> percent lookup for strength schedules, built once per sampling run
INFERENCE_DTYPES = {"sdxl": (torch.bfloat16, torch.float16, torch.float32)}  # host supported_models.py
DEFAULT_INFERENCE_DTYPES = (torch.float16, torch.float32)  # SD1.x / SD2.x (host: SD15, SD20)


# --------------------------------------------------------------------------------------------- files & devices

def controlnet_files() -> list[str]:
    """Files in the host's `controlnet` model folder(s), as the host's own loader lists them."""
    return folder_paths.get_filename_list(CONTROLNET_FOLDER)


def controlnet_path(name: str) -> str:
    """Absolute path of a `controlnet` folder file; the host raises FileNotFoundError naming it when absent."""
    return folder_paths.get_full_path_or_raise(CONTROLNET_FOLDER, name)


def preprocessor_models_dir(name: str) -> str:
    """`models/controlnet_preprocessors/<name>` (the folder is registered on first use, no import side effects)."""
    if PREPROCESSOR_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(PREPROCESSOR_FOLDER,
                                           os.path.join(folder_paths.models_dir, PREPROCESSOR_FOLDER), is_default=True)
    return os.path.join(folder_paths.get_folder_paths(PREPROCESSOR_FOLDER)[0], name)


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


class CastOnRead(torch.nn.Module):
    """Parametrization: a weight stored in a narrow dtype (fp8) is read in the compute dtype, layer by layer, as
    the host's manual-cast operations do (comfy/ops.py), so the stored copy stays narrow."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(self.dtype)


def store_narrow(net: torch.nn.Module, weight: torch.dtype, compute: torch.dtype) -> torch.nn.Module:
    """Matrices and kernels stay in `weight` (e.g. fp8) and are cast when read; biases and norms (tiny) become
    `compute`. The net then reports and computes in `compute`."""
    from torch.nn.utils import parametrize

    net.eval().requires_grad_(False)
    for module in list(net.modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            narrow = param.ndim >= 2
            module._parameters[name] = torch.nn.Parameter(param.detach().to(weight if narrow else compute),
                                                          requires_grad=False)
            if narrow:
                parametrize.register_parametrization(module, name, CastOnRead(compute), unsafe=True)
    return net


def load_controlnet(name: str) -> "CoreControlNet":
    """A file of the `controlnet` folder -> adapter whose weights the host's ModelPatcher loads and offloads."""
    path = controlnet_path(name)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    net = core_load_controlnet(path, device=offload_device)
    weight, compute = choose_dtypes(net.storage_dtype, net.config.family, load_device)
    if weight == compute:
        net = prepare_for_device(net, offload_device, compute)  # one cast at load, none per step
    else:
        net = store_narrow(net, weight, compute)
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=load_device, offload_device=offload_device)
    log.info("loaded %s: %s %s ControlNet, weights stored as %s, computing in %s", name, net.config.family,
             net.config.variant, weight, compute)
    return CoreControlNet(patcher)


class PreprocessorModels:
    """The Preprocessor node's network weights: one core ModelCache per model folder, read from disk once per
    server process and handed to the host's model management (a ModelPatcher), which loads and offloads them."""

    def __init__(self):
        self._caches: dict = {}
        self._patchers: dict = {}

    def prepare(self, folder: str, task: str):
        """The loaded ModelCache of `folder`, its weights on the host's torch device (the host may evict others)."""
        from ..controlnet_core.preprocess import ModelCache

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


# ------------------------------------------------------------------------------------------------- the adapter

def uncond_rows(cond_or_uncond: list[int], batch: int) -> list[bool]:
    """Per latent row: True when the row is unconditional (host chunks: 0 = cond, 1 = uncond, equal sizes)."""
    per_chunk = batch // max(1, len(cond_or_uncond))
    return [c == 1 for c in cond_or_uncond for _ in range(per_chunk)]


@functools.lru_cache(maxsize=64)
def rounded_window(window_sigmas: tuple[float, float], dtype: torch.dtype) -> tuple[float, float]:
    """The window's (start, end) sigmas rounded to the step tensor's dtype, as the host's tensor comparison rounds
    them; computed once per window and dtype, not per step."""
    start, end = torch.tensor(window_sigmas, dtype=dtype).tolist()
    return start, end


def in_window(sigma: float, window_sigmas: tuple[float, float], dtype: torch.dtype) -> bool:
    """The host's window test (`t > start or t < end` -> off), on a CPU float."""
    start, end = rounded_window(tuple(window_sigmas), dtype)
    return not (sigma > start or sigma < end)


@dataclass(frozen=True)
class PercentTable:
    """Sigma -> sampling percent on a uniform percent grid, built once per sampling run (sigma falls as percent
    rises, host model_sampling); `falling` holds -sigma, ascending, for bisection."""

    sigmas: tuple[float, ...]
    percents: tuple[float, ...]
    falling: tuple[float, ...]

    @classmethod
    def build(cls, percent_to_sigma: Callable[[float], float]) -> "PercentTable":
        percents = tuple(i / (PERCENT_TABLE_SIZE - 1) for i in range(PERCENT_TABLE_SIZE))
        sigmas = tuple(float(percent_to_sigma(p)) for p in percents)
        return cls(sigmas, percents, tuple(-s for s in sigmas))

    def percent(self, sigma: float) -> float:
        """Sampling progress of `sigma`, linear between grid points (pure Python, O(log n))."""
        i = bisect.bisect_left(self.falling, -sigma)  # first grid point with sigma_i <= sigma
        if i == 0:
            return 0.0
        if i == len(self.sigmas):
            return 1.0
        s0, s1 = self.sigmas[i - 1], self.sigmas[i]
        p0, p1 = self.percents[i - 1], self.percents[i]
        return p0 + (p1 - p0) * (s0 - sigma) / max(s0 - s1, 1e-30)


def check_model_family(net_config, model) -> None:
    """Compare the ControlNet with the model about to be sampled; FamilyMismatchError names both and the fix."""
    unet = getattr(model.model_config, "unet_config", {}) or {}
    if unet.get("context_dim") is None or unet.get("model_channels") is None:
        raise FamilyMismatchError(f"This ControlNet is {net_config.family.upper()} (context {net_config.context_dim}) "
                                  f"but the model is {type(model.model_config).__name__}, not an SD1.x / SD2.x / SDXL "
                                  f"U-Net: use this ControlNet with an SD {net_config.family} checkpoint, or use a "
                                  "ControlNet made for this model with the host's Apply ControlNet.")
    check_family(net_config, context_dim=unet["context_dim"], adm_in_channels=unet.get("adm_in_channels"),
                 model_channels=unet["model_channels"])


class CoreControlNet(comfy.controlnet.ControlBase):
    """A controlnet_core ControlNet behind the host's ControlBase hook; chains with native controls both ways."""

    def __init__(self, patcher: comfy.model_patcher.ModelPatcher, *, weights: ControlWeights | None = None,
                 mask: torch.Tensor | None = None, resize_mode: str = "crop"):
        super().__init__()
        self.patcher = patcher
        self.weights = weights or ControlWeights()
        self.mask = mask
        self.resize_mode = resize_mode
        self.engine = ResidualEngine()
        self.model_sampling = None
        self.percent_table = None
        self._control: Control | None = None  # owns the hint-feature cache; lives as long as this copy
        self._control_source: torch.Tensor | None = None  # the hint the Control was built from

    @property
    def net(self) -> torch.nn.Module:
        return self.patcher.model

    # -- host lifecycle -------------------------------------------------------------------------------------------
    def copy(self) -> "CoreControlNet":
        c = CoreControlNet(self.patcher, weights=self.weights, mask=self.mask, resize_mode=self.resize_mode)
        self.copy_to(c)
        return c

    def with_options(self, weights: ControlWeights | None, mask: torch.Tensor | None,
                     resize_mode: str) -> "CoreControlNet":
        """A copy carrying this apply's control weights, effect mask and hint resize mode."""
        c = self.copy()
        c.weights, c.mask, c.resize_mode = weights or ControlWeights(), mask, resize_mode
        return c

    def get_models(self) -> list:
        return super().get_models() + [self.patcher]

    def pre_run(self, model, percent_to_timestep_function) -> None:
        """Before the first step: family check (one clear error), window in sigmas, schedule lookup table."""
        check_model_family(self.net.config, model)
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling = model.model_sampling
        constant = self.weights.schedule.kind == "constant"
        self.percent_table = None if constant else PercentTable.build(percent_to_timestep_function)

    def cleanup(self) -> None:
        self.model_sampling = None
        self.percent_table = None
        super().cleanup()  # the hint-feature cache stays: it belongs to this copy and is freed with it

    # -- every step -----------------------------------------------------------------------------------------------
    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        prev = None
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.strength == 0.0:
            return prev
        sigma = self._sigma(t)
        if sigma is not None and not in_window(sigma, self.timestep_range, t.dtype):
            return prev
        percent = 0.0 if self.percent_table is None or sigma is None else self.percent_table.percent(sigma)
        control = self._core_control(x_noisy.shape[0], batched_number)
        dtype = control.net.dtype
        x = self.model_sampling.calculate_input(t, x_noisy)  # (B, 4, h, w) as the U-Net sees it
        timesteps = self.model_sampling.timestep(t)  # (B,)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])  # (B, T, ctx)
        y = cond.get("y")
        if y is not None:
            y = comfy.model_base.convert_tensor(y, dtype, x.device)  # (B, adm)
        rows = uncond_rows(transformer_options.get("cond_or_uncond", [0] * batched_number), x.shape[0])
        out = self.engine([control], x, timesteps, context, y, uncond_rows=rows, percent=percent, out=prev,
                          batched_number=batched_number)
        if out is None:
            return prev
        out.setdefault("input", [])  # native controls chained after this one merge all three keys
        return out

    def _sigma(self, t: torch.Tensor) -> float | None:
        """The step's sigma as a float, read only when a window or a schedule needs it (free on CPU; on a GPU one
        read per model call, shared in effect by the chain since nothing is queued in between)."""
        windowed = tuple(self.timestep_percent_range) != FULL_WINDOW
        if not windowed and self.percent_table is None:
            return None
        return float(t[0])

    def _core_control(self, batch: int, batched_number: int) -> Control:
        """The engine's Control for this copy's hint (built once; rebuilt only if the host re-set the hint)."""
        hint = self.cond_hint_original  # (B, 3, H, W), from our Apply node or the host's
        per_chunk = batch // max(1, batched_number)
        if hint.shape[0] not in (1, per_chunk) and per_chunk % hint.shape[0] != 0:
            raise ControlNetError(f"The ControlNet image batch is {hint.shape[0]} but the latent batch is "
                                  f"{per_chunk}: give 1 image, {per_chunk} images, or a divisor of {per_chunk}.")
        if self._control is None or self._control_source is not hint or self._control.strength != self.strength:
            self._control_source = hint
            self._control = Control(net=self.net, hint=normal_tensor(hint), strength=float(self.strength),
                                    weights=self.weights, mask=self.mask, resize_mode=self.resize_mode)
        return self._control


def normal_tensor(t: torch.Tensor) -> torch.Tensor:
    """A copy outside inference mode when `t` was made inside it (the host runs nodes in inference mode; the
    engine's caches key on a tensor's version counter, which inference tensors lack); `t` itself otherwise."""
    if not t.is_inference():
        return t
    with torch.inference_mode(False):
        return t.clone()


# --------------------------------------------------------------------------------------------- conditioning

def is_core(control_net) -> bool:
    """True for this pack's adapter; False for the host's native CONTROL_NET objects."""
    return isinstance(control_net, CoreControlNet)


def apply_to_conditioning(positive: list, negative: list, template: comfy.controlnet.ControlBase,
                          hint: torch.Tensor, strength: float, window: tuple[float, float], vae=None
                          ) -> tuple[list, list]:
    """Attach one copy of `template` per distinct previous control to both conditionings, chaining it (the host's
    ControlNetApplyAdvanced rules, nodes.py): the same object on positive and negative keeps cond and uncond in
    one batch. Conditioning dicts are copied, never modified."""
    copies: dict = {}
    out = []
    for conditioning in (positive, negative):
        result = []
        for embedding, options in conditioning:
            d = options.copy()
            prev = d.get("control")
            if prev not in copies:
                c = template.copy().set_cond_hint(hint, strength, window, vae=vae)
                c.set_previous_controlnet(prev)
                copies[prev] = c
            d["control"] = copies[prev]
            d["control_apply_to_uncond"] = False
            result.append([embedding, d])
        out.append(result)
    return out[0], out[1]


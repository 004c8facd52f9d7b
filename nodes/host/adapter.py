"""The ControlBase adapter: a controlnet_core control behind the host's `comfy.controlnet.ControlBase` hook.

Follows the host's own `comfy.controlnet.ControlNet` contract (shared/research/comfyui_native.md §1): `copy()` for
the Apply nodes, `pre_run` / `get_control` / `cleanup` / `get_models` for the sampler, residuals
{"input", "middle", "output"} summed with `previous_controlnet`'s. The residual math is controlnet_core's engine.
"""
from __future__ import annotations

import bisect
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

import comfy.controlnet
import comfy.model_base
import comfy.model_patcher

from ...controlnet_core.engine import Control, ResidualEngine, check_family, is_union_net
from ...controlnet_core.errors import ControlNetError, FamilyMismatchError
from ...controlnet_core.t2i_adapter import T2IAdapterConfig
from ...controlnet_core.t2i_adapter import check_family as check_t2i_family
from ...controlnet_core.weights import ControlWeights

log = logging.getLogger(__name__)

FULL_WINDOW = (0.0, 1.0)
PERCENT_TABLE_SIZE = 1001  # sigma -> percent lookup for strength schedules, built once per sampling run


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
        raise FamilyMismatchError(f"This ControlNet is {net_config.family.upper()} (context "
                                  f"{getattr(net_config, 'context_dim', None)}) "
                                  f"but the model is {type(model.model_config).__name__}, not an SD1.x / SD2.x / SDXL "
                                  f"U-Net: use this ControlNet with an SD {net_config.family} checkpoint, or use a "
                                  "ControlNet made for this model with the host's Apply ControlNet.")
    if isinstance(net_config, T2IAdapterConfig):
        check_t2i_family(net_config, adm_in_channels=unet.get("adm_in_channels"),
                         model_channels=unet["model_channels"])
        return
    check_family(net_config, context_dim=unet["context_dim"], adm_in_channels=unet.get("adm_in_channels"),
                 model_channels=unet["model_channels"])


class CoreControlNet(comfy.controlnet.ControlBase):
    """A controlnet_core ControlNet behind the host's ControlBase hook; chains with native controls both ways."""

    def __init__(self, patcher: comfy.model_patcher.ModelPatcher, *, weights: ControlWeights | None = None,
                 mask: torch.Tensor | None = None, resize_mode: str = "crop", global_average_pooling: bool = False,
                 union_type: int | None = None):
        super().__init__()
        self.patcher = patcher
        self.global_average_pooling = global_average_pooling
        self.union_type = union_type  # union files: type id, None = auto (or the host's SetUnionControlNetType)
        self._led = False  # True while a later apply of the same union file runs this one's condition
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
        c = CoreControlNet(self.patcher, weights=self.weights, mask=self.mask, resize_mode=self.resize_mode,
                           global_average_pooling=self.global_average_pooling, union_type=self.union_type)
        self.copy_to(c)
        return c

    def with_options(self, weights: ControlWeights | None, mask: torch.Tensor | None, resize_mode: str,
                     union_type: str | int | None = None) -> "CoreControlNet":
        """A copy carrying this apply's control weights, effect mask, hint resize mode and union type (checked
        against the file now, before sampling)."""
        c = self.copy()
        c.weights, c.mask, c.resize_mode = weights or ControlWeights(), mask, resize_mode
        if union_type is not None and union_type != "auto":
            c.union_type = self.check_union_type(union_type)
        return c

    def check_union_type(self, union_type: str | int) -> int:
        """The type id of a host / ACN type name for this file; a clear error when the file is not a union or
        lacks the type (tile / repaint on a 6-type file)."""
        from ...controlnet_core.union import union_type_id

        if not is_union_net(self.net):
            raise ControlNetError(f"union_type {union_type!r} is set but this ControlNet is not a ControlNet-Union "
                                  "(no task_embedding): set union_type to auto.")
        return union_type_id(union_type, self.net.num_types, source=f"this {self.net.num_types}-type union file")

    def effective_union_type(self) -> int | None:
        """Our union_type, else the one the host's SetUnionControlNetType put in extra_args (one type)."""
        if self.union_type is not None or not is_union_net(self.net):
            return self.union_type
        types = self.extra_args.get("control_type") or []
        return self.check_union_type(int(types[0])) if len(types) == 1 else None

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
    def union_members(self) -> list["CoreControlNet"]:
        """Earlier applies in this chain of the same union file, typed, with this one's window, weights and mask:
        their conditions join this one's forward (one pass, as the reference runs several types)."""
        if self.strength == 0.0 or self.effective_union_type() is None:
            return []
        members, c = [], self.previous_controlnet
        while c is not None:
            if (isinstance(c, CoreControlNet) and c.patcher is self.patcher and c.strength != 0.0
                    and c.effective_union_type() is not None and c.weights == self.weights and c.mask is self.mask
                    and tuple(c.timestep_percent_range) == tuple(self.timestep_percent_range)):
                members.append(c)
            c = c.previous_controlnet
        return members

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        prev = None
        members = [] if self._led else self.union_members()
        for m in members:
            m._led = True
        try:
            if self.previous_controlnet is not None:
                prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        finally:
            for m in members:
                m._led = False
        if self.strength == 0.0 or self._led:
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
        controls = [control] + [m._core_control(x_noisy.shape[0], batched_number) for m in members]
        out = self.engine(controls, x, timesteps, context, y, uncond_rows=rows, percent=percent, out=prev,
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
        union_type = self.effective_union_type()
        if (self._control is None or self._control_source is not hint or self._control.strength != self.strength
                or self._control.union_type != union_type):
            self._control_source = hint
            self._control = Control(net=self.net, hint=normal_tensor(hint), strength=float(self.strength),
                                    weights=self.weights, mask=self.mask, resize_mode=self.resize_mode,
                                    global_average_pooling=self.global_average_pooling, union_type=union_type)
        return self._control


class BaseMergedControlNet(CoreControlNet):
    """A Control-LoRA or diff-ControlNet: its ControlNet is built from the base U-Net of the MODEL it is sampled
    with, at pre_run, ONCE per base-model state (`merge`, shared by every copy, keeps the last one), and held by the
    host's model management like any ControlNet. A file for another family fails there, before the first step."""

    def __init__(self, merge, **options):
        super().__init__(None, **options)
        self.merge = merge  # nodes/host/models.py BaseMerge: the file's tensors and the current merged patcher

    @property
    def net(self):
        return None if self.patcher is None else self.patcher.model

    def copy(self) -> "BaseMergedControlNet":
        c = BaseMergedControlNet(self.merge, weights=self.weights, mask=self.mask, resize_mode=self.resize_mode,
                                 global_average_pooling=self.global_average_pooling)
        c.patcher = self.patcher
        self.copy_to(c)
        return c

    def get_models(self) -> list:
        return comfy.controlnet.ControlBase.get_models(self) + ([self.patcher] if self.patcher is not None else [])

    def pre_run(self, model, percent_to_timestep_function) -> None:
        patcher = self.merge.patcher_for(model)  # merged now only if the base changed; loaded by the host
        if patcher is not self.patcher:
            self._control, self._control_source = None, None
        self.patcher = patcher
        super().pre_run(model, percent_to_timestep_function)


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


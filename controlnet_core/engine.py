"""Residual engine: several controls summed in place into one residual set, paying only for the FLOPs needed.

What each step costs and why (docs/weights.md, shared/research/comfyui_native.md §2.3):
- the hint encoder runs once per (hint, size, dtype, device) and is cached on the Control (bounded LRU);
- whether a control is active is decided in Python from the sampling percent (no GPU->CPU sync);
- the per-block scale (strength x schedule x block weight) is folded into one in-place accumulation;
- when the unconditional weight is 0 the net runs on the conditional rows only;
- opt-in and approximate: `reuse_steps = k` recomputes the residuals every k-th call and reuses them between.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ControlNetError, FamilyMismatchError
from .weights import ControlWeights

log = logging.getLogger(__name__)

HINT_SCALE = 8  # hint pixels per latent pixel (three stride-2 convs in the hint encoder)
RESIZE_MODES = ("just_resize", "crop", "fill")
UPSCALE_METHOD = "nearest-exact"  # the host's ControlNet default (comfy/controlnet.py `upscale_algorithm`)
CACHE_SIZE = 4  # entries per Control and per cache kind (hint sizes, row maps, weight tensors, reuse sets)

Residuals = dict  # {"output": [Tensor, ...], "middle": [Tensor]} (host order: output shallow->deep, then middle)


# ---------------------------------------------------------------------------------------------------------------
# Hint resize (pure functions)
# ---------------------------------------------------------------------------------------------------------------

def center_crop_box(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the centred crop with the target's aspect; rounding as comfy.utils.common_upscale."""
    old_aspect, new_aspect = width / height, target_w / target_h
    left = top = 0
    if old_aspect > new_aspect:
        left = round((width - width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        top = round((height - height * (old_aspect / new_aspect)) / 2)
    return top, left, height - 2 * top, width - 2 * left


def fit_inside(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Largest (h, w) with the image's aspect that fits in the target (A1111 "Resize and Fill")."""
    scale = min(target_h / height, target_w / width)
    return min(target_h, max(1, round(height * scale))), min(target_w, max(1, round(width * scale)))


def resize_hint(hint: Tensor, height: int, width: int, mode: str = "crop") -> Tensor:
    """Hint (B, C, H, W) -> (B, C, height, width): "just_resize" stretches, "crop" centre-crops to the aspect
    then resizes (the host's `common_upscale(..., "center")`), "fill" fits inside and fills the borders with the
    per-frame median colour of the hint's border pixels (A1111's "Resize and Fill", the same meaning as the
    Preprocessor's resize_mode; black for edge and line hints, whose borders are black)."""
    if mode not in RESIZE_MODES:
        raise ControlNetError(f"resize_mode {mode!r} is unknown: use one of {RESIZE_MODES}.")
    _, _, h, w = hint.shape
    if mode == "crop":
        top, left, ch, cw = center_crop_box(h, w, height, width)
        hint = hint[:, :, top:top + ch, left:left + cw]  # (B, C, ch, cw)
    if mode != "fill":
        return F.interpolate(hint, size=(height, width), mode=UPSCALE_METHOD)  # (B, C, height, width)
    fh, fw = fit_inside(h, w, height, width)
    inner = F.interpolate(hint, size=(fh, fw), mode=UPSCALE_METHOD)  # (B, C, fh, fw)
    top, left = (height - fh) // 2, (width - fw) // 2
    border = torch.cat([hint[..., 0, :], hint[..., -1, :], hint[..., :, 0], hint[..., :, -1]], dim=-1)  # (B, C, n)
    out = border.median(dim=-1).values[:, :, None, None].expand(-1, -1, height, width).clone()  # (B, C, height, width)
    out[..., top:top + fh, left:left + fw] = inner
    return out


def resize_mask(mask: Tensor, height: int, width: int) -> Tensor:
    """Mask (M, H, W) -> (M, 1, height, width): area average when shrinking (keeps coverage), bilinear otherwise."""
    m = mask.unsqueeze(1)  # (M, 1, H, W)
    if (height, width) == tuple(m.shape[-2:]):
        return m
    if height <= m.shape[-2] and width <= m.shape[-1]:
        return F.interpolate(m, size=(height, width), mode="area")
    return F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)


def image_rows(rows: Sequence[int], batch: int, batched_number: int, source_batch: int) -> list[int]:
    """Source item for each latent row: row r is image r % (batch / batched_number), tiled (host broadcast rule)."""
    per_chunk = batch // batched_number
    return [(r % per_chunk) % source_batch for r in rows]


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------

def _lru_get(cache: OrderedDict, key):
    """Value for key (marked most recent) or None."""
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: OrderedDict, key, value, size: int = CACHE_SIZE):
    """Store value, evicting the least recently used entries beyond `size`; returns value."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def _contiguous(rows: Sequence[int]) -> slice | None:
    """rows as a slice when they are consecutive, else None."""
    if rows and list(rows) == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return None


def _take(t: Tensor | None, rows: Sequence[int], batch: int, index: Tensor | None) -> Tensor | None:
    """Rows of a batch tensor: a view when consecutive (no copy), index_select otherwise; None passes through."""
    if t is None or len(rows) == batch or t.shape[0] == 1:
        return t
    s = _contiguous(rows)
    return t[s] if s is not None else t.index_select(0, index)


def prepare_for_device(net: torch.nn.Module, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Cast the weights once to the compute dtype/device (e.g. fp16 files -> fp32 on CPU): no per-step casts."""
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    log.info("weights prepared on %s as %s", device or "current device", dtype or "file dtype")
    return net


def is_union_net(net: torch.nn.Module) -> bool:
    """True for a ControlNet-Union (it has the type embedding and the fuser)."""
    return hasattr(net, "fuse") and hasattr(net, "type_embedding")


def union_groups(controls: Sequence[Control]) -> list[tuple[Control, ...]]:
    """Controls in order, with typed controls of the same union net, window, weights, mask and resize mode (no
    residual reuse) gathered into one group that runs as ONE forward (the reference's multi-condition pass); every
    other control is a group of one. A group keeps the position of its first member."""
    groups: list[list[Control]] = []
    index: dict = {}
    for c in controls:
        if c.union_type is None or c.reuse_steps != 1 or not is_union_net(c.net):
            groups.append([c])
            continue
        key = (id(c.net), c.start_percent, c.end_percent, c.weights, id(c.mask))
        if key in index:
            groups[index[key]].append(c)
        else:
            index[key] = len(groups)
            groups.append([c])
    return [tuple(g) for g in groups]


def _net_dtype(net: torch.nn.Module) -> torch.dtype:
    """The dtype the net computes in (its first parameter's)."""
    return getattr(net, "dtype", None) or next(net.parameters()).dtype


# ---------------------------------------------------------------------------------------------------------------
# Control
# ---------------------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Control:
    """One ControlNet applied with one hint; owns its caches (hint features, row maps, reuse), freed with it."""

    net: torch.nn.Module
    hint: Tensor  # (B, 3, H, W) in [0, 1], any size
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    weights: ControlWeights = field(default_factory=ControlWeights)
    mask: Tensor | None = None  # (B, H, W) or (H, W) in [0, 1]
    resize_mode: str = "crop"
    reuse_steps: int = 1
    global_average_pooling: bool = False  # v1.1 shuffle: residuals pooled to (B, C, 1, 1), cond rows only (§7)
    union_type: int | None = None  # union nets: the type id (None = "auto": the host's zero type vector)
    _hints: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _tensors: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _reuse: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.hint.ndim != 4:
            raise ControlNetError(f"Control hint has shape {tuple(self.hint.shape)}; expected (B, 3, H, W) in [0, 1] "
                                  "(convert a host IMAGE (B, H, W, C) with image.movedim(-1, 1)).")
        if self.resize_mode not in RESIZE_MODES:
            raise ControlNetError(f"resize_mode {self.resize_mode!r} is unknown: use one of {RESIZE_MODES}.")
        if not (isinstance(self.reuse_steps, int) and self.reuse_steps >= 1):
            raise ControlNetError(f"reuse_steps {self.reuse_steps!r} must be an integer >= 1 (1 = exact: compute "
                                  "every step).")
        if not math.isfinite(self.strength):
            raise ControlNetError(f"strength {self.strength!r} is not a finite number.")
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise ControlNetError(f"start_percent {self.start_percent} / end_percent {self.end_percent} must satisfy "
                                  "0 <= start <= end <= 1.")
        if self.union_type is not None and not is_union_net(self.net):
            raise ControlNetError(f"union_type {self.union_type} was given for a {type(self.net).__name__}, which is "
                                  "not a ControlNet-Union: leave union_type on auto for this file.")
        if self.union_type is not None and not 0 <= self.union_type < self.net.num_types:
            raise ControlNetError(f"union_type {self.union_type} is not in this union ControlNet: it has "
                                  f"{self.net.num_types} types (tile = 6 and repaint = 7 need the ProMax file).")
        if self.mask is not None and self.mask.ndim not in (2, 3):
            raise ControlNetError(f"mask has shape {tuple(self.mask.shape)}; expected (H, W) or (B, H, W) in [0, 1].")

    def active(self, percent: float) -> bool:
        """True when the control adds anything at this sampling percent (window inclusive, scale non-zero)."""
        return (self.start_percent <= percent <= self.end_percent
                and self.strength * self.weights.schedule(percent) != 0.0)

    def clear_cache(self) -> None:
        """Drop every cached tensor (hint features, row maps, reused residuals)."""
        self._hints.clear()
        self._tensors.clear()
        self._reuse.clear()

    # -- hint features -------------------------------------------------------------------------------------------
    def guided_hint(self, h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Hint features (B_hint, mc, h, w) for latent size (h, w), from the LRU cache or one encoder pass."""
        key = (self.resize_mode, h, w, dtype, device)
        entry = _lru_get(self._hints, key)
        if entry is not None and entry[0] is self.hint and entry[1] == self.hint._version:
            return entry[2]
        pixels = resize_hint(self.hint, h * HINT_SCALE, w * HINT_SCALE, self.resize_mode)  # (B, 3, 8h, 8w)
        guided = self.net.encode_hint(pixels.to(device=device, dtype=dtype))  # (B, mc, h, w)
        log.info("hint encoded: %d frame(s) for a %dx%d latent (cached on this control)", pixels.shape[0], h, w)
        _lru_put(self._hints, key, (self.hint, self.hint._version, guided))
        return guided

    def _cached(self, key, make, source=None):
        """Per-control tensors (index maps, row weights, hint rows) built once per key and per `source` object."""
        entry = _lru_get(self._tensors, key)
        if entry is None or entry[0] is not source:
            entry = _lru_put(self._tensors, key, (source, make()), size=8 * CACHE_SIZE)
        return entry[1]

    def guided_rows(self, rows: Sequence[int], batch: int, batched_number: int, h: int, w: int,
                    dtype: torch.dtype, device: torch.device) -> Tensor:
        """Hint features for the given latent rows: batch 1 stays 1 (the net broadcasts), else one row per row."""
        g = self.guided_hint(h, w, dtype, device)  # (B_hint, mc, h, w), or a tuple of feature maps (T2I-Adapter)
        if isinstance(g, tuple):
            return tuple(self._rows_of(f, ("hint-rows", i), rows, batch, batched_number, device)
                         for i, f in enumerate(g))
        return self._rows_of(g, ("hint-rows", h, w, dtype), rows, batch, batched_number, device)

    def _rows_of(self, g: Tensor, tag: tuple, rows: Sequence[int], batch: int, batched_number: int,
                 device: torch.device) -> Tensor:
        """Rows of one cached hint tensor for the latent rows: batch 1 stays 1, else one row per latent row."""
        if g.shape[0] == 1:
            return g
        src = image_rows(rows, batch, batched_number, g.shape[0])
        if src == list(range(g.shape[0])):
            return g
        key = (*tag, tuple(src), device)
        return self._cached(key, lambda: g.index_select(0, torch.tensor(src, device=device)), g)  # (R, mc, h, w)

    def union_rows(self, rows: Sequence[int], batch: int, batched_number: int, h: int, w: int, dtype: torch.dtype,
                   device: torch.device, scale: float | None) -> Tensor:
        """This condition's share of a union net's fused hint for the rows, (R|1, mc, h, w): depends on the hint
        rows only (never on x or t), so it is computed once per rows / size / scale and cached."""
        g = self.guided_rows(rows, batch, batched_number, h, w, dtype, device)  # (R|1, mc, h, w)
        key = ("union", tuple(rows) if g.shape[0] > 1 else None, batch, batched_number, h, w, dtype, device, scale,
               self.union_type)
        return self._cached(key, lambda: self.net.fuse(g, self.union_type, scale), g)

    def row_weights(self, rows: Sequence[int], uncond: Sequence[bool], uncond_scale: float, batch: int,
                    batched_number: int, size: tuple[int, int], dtype: torch.dtype,
                    device: torch.device) -> Tensor | None:
        """Per-row (and per-pixel with a mask) weight (R, 1, h|1, w|1), or None when every weight is 1."""
        scaled = uncond_scale != 1.0 and any(uncond[r] for r in rows)
        if self.mask is None and not scaled:
            return None
        key = ("weights", tuple(rows), tuple(uncond[r] for r in rows), uncond_scale, batch, batched_number,
               size if self.mask is not None else None, dtype, device)
        return self._cached(key, lambda: self._make_row_weights(rows, uncond, uncond_scale, batch, batched_number,
                                                                size, dtype, device), self.mask)

    def _make_row_weights(self, rows, uncond, uncond_scale, batch, batched_number, size, dtype, device) -> Tensor:
        """Build the (R, 1, h|1, w|1) weight: uncond rows x uncond_scale, times the mask resized to `size`."""
        per_row = torch.tensor([uncond_scale if uncond[r] else 1.0 for r in rows], dtype=torch.float32)
        weight = per_row.view(-1, 1, 1, 1)  # (R, 1, 1, 1)
        if self.mask is not None:  # built on the CPU once per shape, then moved
            mask = self.mask.detach().to("cpu", torch.float32)
            mask = mask if mask.ndim == 3 else mask.unsqueeze(0)  # (M, H, W)
            per_chunk = batch // batched_number
            if mask.shape[0] != 1 and per_chunk % mask.shape[0] != 0:
                raise ControlNetError(f"mask batch {mask.shape[0]} neither matches nor divides the image batch "
                                      f"{per_chunk}: give 1 mask, {per_chunk} masks, or a divisor of {per_chunk}.")
            resized = resize_mask(mask, *size)  # (M, 1, h, w)
            src = image_rows(rows, batch, batched_number, mask.shape[0])
            weight = weight * resized.index_select(0, torch.tensor(src))  # (R, 1, h, w)
        return weight.to(device=device, dtype=dtype)

    # -- residual reuse (approximate, opt-in) --------------------------------------------------------------------
    def reusable(self, key, percent: float) -> dict | None:
        """Stored residuals (scale 1) when this call may reuse them, else None (and the call counter advances)."""
        state = _lru_get(self._reuse, key)
        fresh_run = state is None or percent < state["percent"]
        count = 0 if fresh_run else state["count"]
        if state is None or fresh_run:
            state = _lru_put(self._reuse, key, {"count": 0, "percent": percent, "residuals": None})
        state["count"], state["percent"] = count + 1, percent
        if count % self.reuse_steps == 0 or state["residuals"] is None:
            return None
        return state["residuals"]

    def remember(self, key, residuals: dict) -> None:
        """Keep this call's unscaled residuals for the next reuse_steps - 1 calls."""
        self._reuse[key]["residuals"] = residuals


# ---------------------------------------------------------------------------------------------------------------
# Accumulation
# ---------------------------------------------------------------------------------------------------------------

def _accumulate(target: Tensor | None, r: Tensor, scale: float, weight: Tensor | None, rows: Sequence[int],
                batch: int, index: Tensor | None, owned: bool) -> Tensor:
    """target[rows] += scale * weight * r in place (one pass); builds the target when there is none.

    `owned`: r is a fresh tensor this call may overwrite (it becomes the target when it covers every row).
    """
    full = len(rows) == batch
    if target is None:
        if full and owned:
            return r if scale == 1.0 and weight is None else r.mul_(weight * scale if weight is not None else scale)
        if full:
            return r * (weight * scale) if weight is not None else r * scale
        target = torch.zeros((batch, *r.shape[1:]), dtype=r.dtype, device=r.device)  # uncond rows get nothing
    s = _contiguous(rows)
    if full or s is not None:
        view = target if full else target[s]  # (R, C, H, W) view: writes land in target
        if weight is None:
            view.add_(r, alpha=scale)
        elif view.dtype == r.dtype == weight.dtype:
            view.addcmul_(r, weight, value=scale)
        else:
            view.add_(r * weight, alpha=scale)
        return target
    src = r if weight is None else (r.mul_(weight) if owned else r * weight)
    return target.index_add_(0, index, src.to(target.dtype), alpha=scale)


def _add_residuals(out: dict | None, fresh: dict, scales: Sequence[float], control: Control, rows: Sequence[int],
                   uncond: Sequence[bool], uncond_scale: float, batch: int, batched_number: int,
                   index: Tensor | None, owned: bool) -> dict:
    """Fold one control's residuals into `out` ({"output", "middle"}), creating it (or its entries) as needed."""
    out = out if out is not None else {}
    levels = residual_levels(control.net, fresh)
    for key in fresh:
        dst = out.setdefault(key, [])
        while len(dst) < len(fresh[key]):  # the host pops `input` from the end: keep every position
            dst.append(None)
        for i, r in enumerate(fresh[key]):
            if r is None:
                continue
            if dst[i] is not None and dst[i].shape[1:] != r.shape[1:]:
                raise ControlNetError(f"residual {key}[{i}] has shape {tuple(r.shape)} but the control it is summed "
                                      f"with has {tuple(dst[i].shape)}: chain only ControlNets of the same family.")
            weight = control.row_weights(rows, uncond, uncond_scale, batch, batched_number, tuple(r.shape[-2:]),
                                         r.dtype, r.device)
            dst[i] = _accumulate(dst[i], r, scales[levels[key, i]], weight, rows, batch, index, owned)
    return out


def pooled(fresh: dict) -> dict:
    """Global average pooling of every residual (ControlNet v1.1 shuffle, README "global_average_pooling"): the
    spatial mean, broadcast back as a view (B, C, H, W) of (B, C, 1, 1), no repeat."""
    return {key: [None if r is None else r.mean(dim=(2, 3), keepdim=True).expand_as(r) for r in rs]
            for key, rs in fresh.items()}


def residual_levels(net: torch.nn.Module, fresh: dict) -> dict[tuple[str, int], int]:
    """(key, position) -> index into the block scales: the net's own map (T2I-Adapter), else `output` shallow ->
    deep, then `middle` (ControlNets)."""
    levels = getattr(net, "residual_levels", None)
    if levels is not None:
        return levels
    n_out = len(fresh.get("output", ()))
    return {**{("output", i): i for i in range(n_out)},
            **{("middle", i): n_out + i for i in range(len(fresh.get("middle", ())))}}


def block_scales(net: torch.nn.Module, weights: ControlWeights) -> tuple[float, ...]:
    """Per-level weights: the net's own convention when it has one (T2I-Adapter's 4 levels), else per residual."""
    own = getattr(net, "block_scales", None)
    return own(weights) if own is not None else weights.block_scales(len(net.config.residual_channels))


# ---------------------------------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------------------------------

class ResidualEngine:
    """Sums the residuals of several controls into one set, in place (docs/weights.md "Engine")."""

    def __call__(self, controls: Sequence[Control], x: Tensor, timesteps: Tensor, context: Tensor,
                 y: Tensor | None = None, *, uncond_rows: Sequence[bool] | None, percent: float,
                 out: dict | None = None, batched_number: int = 1) -> dict | None:
        """{"output", "middle"} summed over the controls active at `percent`; `out` (when given) is updated in place
        and returned even when nothing is active; otherwise None when nothing is active.

        x (B, 4, h, w) as the net sees it; timesteps (B,); context (B, T, ctx); y (B, adm) for SDXL; uncond_rows: B
        bools (None = all conditional); batched_number: equal chunks the batch is made of (the host's cond/uncond
        chunks), each holding the image batch, so hints and masks map to rows as the host broadcasts them.
        """
        if not isinstance(percent, (int, float)):
            raise ControlNetError(f"percent is a {type(percent).__name__}; pass a Python float computed from CPU data "
                                  "(a device tensor would force a GPU->CPU sync every step).")
        batch = x.shape[0]
        uncond = [False] * batch if uncond_rows is None else [bool(u) for u in uncond_rows]
        if len(uncond) != batch:
            raise ControlNetError(f"uncond_rows has {len(uncond)} entries but the latent batch is {batch}: give one "
                                  "bool per row.")
        if batched_number < 1 or batch % batched_number:
            raise ControlNetError(f"batched_number {batched_number} does not divide the latent batch {batch}.")
        with torch.no_grad():
            for group in union_groups([c for c in controls if c.active(percent)]):
                out = self._run(group, out, x, timesteps, context, y, uncond, percent, batched_number)
        return out

    def _run(self, group: tuple[Control, ...], out: dict | None, x: Tensor, timesteps: Tensor, context: Tensor,
             y: Tensor | None, uncond: list[bool], percent: float, batched_number: int) -> dict | None:
        """One control (or one union group): pick its rows, get (cached or fresh) residuals, fold its scales into
        `out`. A union group's strengths scale its conditions, not its residuals (diffusers' multi rule)."""
        control = group[0]
        batch = x.shape[0]
        u = control.weights.uncond_scale()
        cond_only = u == 0.0 or control.global_average_pooling  # GAP nets are trained for the cond side only
        rows = [r for r in range(batch) if not (cond_only and uncond[r])]
        if not rows:
            return out
        strength = control.strength if len(group) == 1 else 1.0  # a union group scales its conditions instead
        gain = strength * control.weights.schedule(percent)
        scales = [gain * b for b in block_scales(control.net, control.weights)]
        if not any(scales):
            return out
        device = x.device
        index = None if _contiguous(rows) is not None or len(rows) == batch else control._cached(
            ("rows", tuple(rows), device), lambda: torch.tensor(rows, device=device))
        fresh, owned = self._residuals(group, x, timesteps, context, y, rows, batch, batched_number, index,
                                       percent)
        return _add_residuals(out, fresh, scales, control, rows, uncond, u, batch, batched_number, index, owned)

    def _residuals(self, group: tuple[Control, ...], x: Tensor, timesteps: Tensor, context: Tensor,
                   y: Tensor | None, rows: list[int], batch: int, batched_number: int, index: Tensor | None,
                   percent: float) -> tuple[dict, bool]:
        """The net's residuals for `rows` (scale 1) and whether they may be overwritten (not kept for reuse)."""
        control = group[0]
        reuse_key = (tuple(rows), batch, batched_number, tuple(x.shape[1:]), x.device)
        if control.reuse_steps > 1:
            kept = control.reusable(reuse_key, percent)
            if kept is not None:
                return kept, False
        net = control.net
        dtype = _net_dtype(net)
        xs = _take(x, rows, batch, index).to(dtype)  # (R, 4, h, w)
        ts = _take(timesteps, rows, batch, index).to(dtype)  # (R,)
        cs = _take(context, rows, batch, index).to(device=x.device, dtype=dtype)  # (R, T, ctx)
        ys = None if y is None else _take(y, rows, batch, index).to(dtype)  # (R, adm)
        h, w = x.shape[-2], x.shape[-1]
        if is_union_net(net):
            g, extra = self._union_inputs(group, rows, batch, batched_number, h, w, dtype, x.device)
            fresh = net(xs, None, ts, cs, ys, guided_hint=g, extra_emb=extra)
        else:
            g = control.guided_rows(rows, batch, batched_number, h, w, dtype, x.device)
            fresh = net(xs, None, ts, cs, ys, guided_hint=g)  # {"output": [(R, C_i, H_i, W_i)], "middle": [...]}
        if control.global_average_pooling:
            fresh = pooled(fresh)
            if control.reuse_steps > 1:
                control.remember(reuse_key, fresh)
            return fresh, False  # expanded views: never written in place
        if control.reuse_steps > 1:
            control.remember(reuse_key, fresh)
            return fresh, False
        return fresh, not getattr(net, "returns_cached", False)  # T2I features are the cache itself


    @staticmethod
    def _union_inputs(group: tuple[Control, ...], rows: list[int], batch: int, batched_number: int, h: int, w: int,
                      dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """(fused hint (R|1, mc, h, w), type embedding (1, 4mc)) of a union group: one condition per member; auto
        (no type) takes the plain hint with the zero type vector, as the host does."""
        control, net = group[0], group[0].net
        if control.union_type is None:
            g = control.guided_rows(rows, batch, batched_number, h, w, dtype, device)
            types: tuple[int, ...] = ()
        else:
            multi = len(group) > 1
            g = None
            for c in group:
                part = c.union_rows(rows, batch, batched_number, h, w, dtype, device, c.strength if multi else None)
                g = part if g is None else g + part  # (R|1, mc, h, w)
            types = tuple(sorted({c.union_type for c in group}))
        extra = control._cached(("type-emb", types, dtype, device),
                                lambda: net.type_embedding(types, device).to(dtype), net)
        return g, extra


def _family_name(context_dim: int, adm_in_channels: int | None) -> str:
    """Readable family from conditioning widths: SD1.x (768), SD2.x (1024), SDXL (2048 + adm 2816)."""
    if adm_in_channels is None and context_dim == 768:
        return "SD1.x (context 768)"
    if adm_in_channels is None and context_dim == 1024:
        return "SD2.x (context 1024)"
    if context_dim == 2048 and adm_in_channels == 2816:
        return "SDXL (context 2048, adm 2816)"
    return f"a custom model (context {context_dim}, adm {adm_in_channels})"


def check_family(net_config, *, context_dim: int, adm_in_channels: int | None, model_channels: int) -> None:
    """Raise FamilyMismatchError when a ControlNet cannot drive the model (text width, adm, channel widths)."""
    ours = _family_name(net_config.context_dim, net_config.adm_in_channels)
    theirs = _family_name(context_dim, adm_in_channels)
    if (net_config.context_dim, net_config.adm_in_channels) != (context_dim, adm_in_channels):
        raise FamilyMismatchError(f"This ControlNet is {ours} but the model is {theirs}: load a ControlNet made "
                                  f"for {theirs.split(' (')[0]} (or switch the checkpoint to "
                                  f"{ours.split(' (')[0]}).")
    if net_config.model_channels != model_channels:
        raise FamilyMismatchError(f"This ControlNet has model_channels {net_config.model_channels} but the model has "
                                  f"{model_channels} (both {theirs}): its residuals cannot be added to this U-Net's "
                                  "skips; load a ControlNet trained for this model's architecture.")

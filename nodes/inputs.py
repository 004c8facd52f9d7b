"""Parsing and checking node inputs: pure functions, no host import (tests and tools use them without a host).

Preprocessor widgets come from the core registry. Shared resolution options keep their plain names
(`resolution`, `resize_mode`, ...); a preprocessor's own options are named `<preprocessor>.<option>` (e.g.
`canny.low_threshold`), so two preprocessors never fight over one widget and an API prompt says exactly which
option it sets. Order = registry order, common options first: options appended at the end keep the positional
widget values of saved UI workflows valid (regenerate workflows/ with tests/host/make_workflows.py otherwise).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..controlnet_core.errors import ControlNetError
from ..controlnet_core.preprocess import COMMON_OPTIONS, PREPROCESSORS, Option

RESIZE_MODES = {"Crop and Resize": "crop", "Just Resize": "just_resize", "Resize and Fill": "fill"}
MIN_HINT_SIDE = 8  # one latent pixel; anything smaller carries no spatial information


def widget_name(preprocessor: str, option: str) -> str:
    """Input name of a preprocessor's own option."""
    return f"{preprocessor}.{option}"


def preprocessor_widgets() -> list[tuple[str, str | None, Option]]:
    """(input name, owning preprocessor or None for a shared option, Option) for every option widget."""
    widgets = [(o.name, None, o) for o in COMMON_OPTIONS]
    for name, spec in PREPROCESSORS.items():
        widgets += [(widget_name(name, o.name), name, o) for o in spec.options]
    return widgets


def options_for(preprocessor: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword options of `preprocessor` from the node's inputs (unset ones fall back to the core defaults)."""
    chosen = {}
    for input_name, owner, option in preprocessor_widgets():
        if owner in (None, preprocessor) and inputs.get(input_name) is not None:
            chosen[option.name] = inputs[input_name]
    return chosen


MAX_BLOCK_VALUES = 13  # the most residuals any control has (SD1.x/SD2.x: 12 skips + middle; SDXL 10, T2I 4)
TEXT_LIMITS = {"block_multipliers": 1_024, "schedule": 65_536, "dataset": 4_096, "filename": 255}


def text_length_problem(name: str, text: str | None) -> str | None:
    """A string input longer than its limit (TEXT_LIMITS) as one sentence naming the input and both lengths, so a
    10 MB paste is refused at queue time without echoing it; None when it fits or is not text."""
    limit = TEXT_LIMITS[name]
    if isinstance(text, str) and len(text) > limit:
        return (f"{name} is {len(text):,} characters long; at most {limit:,} are accepted: check what was pasted or "
                f"sent into {name}.")
    return None


def parse_block_multipliers(text: str) -> tuple[float, ...] | None:
    """'1, 1, 0.5' -> (1.0, 1.0, 0.5); blank -> None (every block 1). Order: skips shallow->deep, then middle."""
    if problem := text_length_problem("block_multipliers", text):
        raise ControlNetError(problem)
    parts = [p.strip() for p in (text or "").replace(";", ",").split(",") if p.strip()]
    if not parts:
        return None
    if len(parts) > MAX_BLOCK_VALUES:
        raise ControlNetError(f"block_multipliers has {len(parts)} values; a control has at most {MAX_BLOCK_VALUES} "
                              "residuals (SD1.x/SD2.x: 13, SDXL: 10, T2I-Adapter: 4): give one value per residual "
                              "or leave it empty.")
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise ControlNetError(f"block_multipliers {text!r} is not a comma-separated list of numbers; write e.g. "
                              "'1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1' (SD1.x: 12 skips then the middle block; "
                              "SDXL: 9 then the middle) or leave it empty.") from None


def parse_strength_schedule(text: str):
    """The schedule syntax of docs/weights.md (controlnet_core.weights.parse_schedule), within its length limit."""
    from ..controlnet_core.weights import parse_schedule

    if problem := text_length_problem("schedule", text):
        raise ControlNetError(problem)
    return parse_schedule(text)


def hint_from_image(image: torch.Tensor) -> torch.Tensor:
    """Host IMAGE (B, H, W, C) in [0, 1] -> hint (B, 3, H, W); refuses empty, tiny, non-RGB and non-finite images."""
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ControlNetError(f"ControlNet image has shape {tuple(image.shape)}; expected an IMAGE (batch, height, "
                              "width, 3): connect an image output (Load Image, a preprocessor).")
    b, h, w, _ = image.shape
    if b == 0:
        raise ControlNetError("ControlNet image batch is empty: connect an image with at least one frame.")
    if min(h, w) < MIN_HINT_SIDE:
        raise ControlNetError(f"ControlNet image is {w}x{h} pixels; a hint needs at least "
                              f"{MIN_HINT_SIDE}x{MIN_HINT_SIDE} (normally the size of the generated image).")
    if not bool(torch.isfinite(image).all()):
        raise ControlNetError("ControlNet image contains NaN or infinite values: check the node that made it "
                              "(a preprocessor or an image operation) before applying the ControlNet.")
    rgb = image[..., :3] if image.shape[-1] == 4 else image.expand(-1, -1, -1, 3)  # alpha dropped, gray -> RGB
    return rgb.movedim(-1, 1)  # (B, 3, H, W), the host's convention (nodes.py ControlNetApplyAdvanced)


def effect_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Host MASK (B, H, W) or (H, W) in [0, 1] -> the same, checked (its batch is matched to the latent's when
    sampling: 1 mask, one per latent, or a divisor); None passes through."""
    if mask is None:
        return None
    if mask.ndim not in (2, 3) or min(mask.shape[-2:]) < 1 or (mask.ndim == 3 and mask.shape[0] == 0):
        raise ControlNetError(f"ControlNet mask has shape {tuple(mask.shape)}; expected a MASK (batch, height, "
                              "width) or (height, width).")
    if not bool(torch.isfinite(mask).all()):
        raise ControlNetError("ControlNet mask contains NaN or infinite values.")
    return mask.clamp(0.0, 1.0)


MAX_STRENGTH = 10.0  # the strength widget's max


def check_apply_values(strength: float | None, start: float | None, end: float | None) -> str | None:
    """Queue-time check of Apply's numbers (the host skips its own min/max checks for inputs a node validates):
    None when fine, else one sentence naming the value and the fix. Linked inputs arrive as None."""
    if strength is not None and not (math.isfinite(strength) and 0.0 <= strength <= MAX_STRENGTH):
        return (f"strength {strength} is not a number in [0, {MAX_STRENGTH:g}]: use e.g. 1.0 (0 = no control).")
    for name, value in (("start_percent", start), ("end_percent", end)):
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            return f"{name} {value} is outside [0, 1]: percents are sampling progress (0 = first step, 1 = last)."
    if start is not None and end is not None and start > end:
        return (f"start_percent {start} is after end_percent {end}: the control would never run; make start <= "
                "end (e.g. 0.0 and 1.0).")
    return None


def check_strength_texts(block_multipliers: str | None, schedule: str | None) -> str | None:
    """Queue-time parse of ControlStrength's text inputs: None when both parse, else the parser's message."""
    try:
        if block_multipliers is not None:
            parse_block_multipliers(block_multipliers)
        if schedule is not None:
            parse_strength_schedule(schedule)
    except ControlNetError as exc:
        return str(exc)[:500]
    return None

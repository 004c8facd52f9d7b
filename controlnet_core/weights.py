"""Control weights: control modes, soft block weights, uncond multiplier and strength schedules (docs/weights.md).

Semantics follow A1111 sd-webui-controlnet's control modes (hook.py soft injection, ``0.825 ** (12 - i)``) and
ComfyUI-Advanced-ControlNet's scaled soft weights (``base_multiplier``, ``uncond_multiplier``). Everything here is
pure Python: deciding a weight never touches a tensor, so it never synchronises a device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import ControlNetError

MODES = {"Balanced": "balanced", "My prompt is more important": "prompt", "ControlNet is more important": "controlnet"}
SCHEDULE_KINDS = ("constant", "linear", "ease", "keyframes")
SCHEDULE_SYNTAX = ('"constant", "constant:0.8", "linear:1.0,0.2", "ease:1.0,0.0" or keyframes '
                   '"0.0:1.0, 0.5:0.6" (percent:strength pairs)')


def _clamp01(percent: float) -> float:
    """Sampling progress clamped to [0, 1]."""
    return min(1.0, max(0.0, float(percent)))


def _smoothstep(p: float) -> float:
    """Ease-in-out curve 3p^2 - 2p^3: flat at both ends, 0.5 at the midpoint."""
    return p * p * (3.0 - 2.0 * p)


def _interpolate_keyframes(points: tuple[tuple[float, float], ...], p: float) -> float:
    """Piecewise-linear through (percent, value) points, held flat outside; right-continuous at repeated percents."""
    if p < points[0][0]:
        return points[0][1]
    for (p0, v0), (p1, v1) in zip(points, points[1:]):
        if p0 <= p < p1:
            return v0 + (v1 - v0) * (p - p0) / (p1 - p0)
    return points[-1][1]


def _check_finite(values: tuple[float, ...], what: str) -> None:
    """Raise when a schedule parameter is NaN or infinite."""
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ControlNetError(f"Schedule {what} {bad} is not a finite number: use values like {SCHEDULE_SYNTAX}.")


@dataclass(frozen=True)
class Schedule:
    """Strength multiplier over sampling progress (0 = first step, 1 = last); one signature: (percent) -> float.

    kind "constant": params (value,); "linear"/"ease": params (start, end), ease = smoothstep;
    "keyframes": params ((percent, value), ...) sorted by percent, linear between keyframes, flat outside.
    """

    kind: str = "constant"
    params: tuple = (1.0,)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ControlNetError(f"Schedule kind {self.kind!r} is unknown: use one of {SCHEDULE_KINDS}.")
        expected = {"constant": 1, "linear": 2, "ease": 2}.get(self.kind)
        if expected is not None:
            if len(self.params) != expected:
                raise ControlNetError(f"Schedule {self.kind!r} takes {expected} value(s), got {self.params!r}: "
                                      f"write it as {SCHEDULE_SYNTAX}.")
            _check_finite(tuple(float(v) for v in self.params), "value")
            object.__setattr__(self, "params", tuple(float(v) for v in self.params))
            return
        points = tuple((float(p), float(v)) for p, v in self.params)
        if not points:
            raise ControlNetError(f"Keyframe schedule has no keyframes: write it as {SCHEDULE_SYNTAX}.")
        _check_finite(tuple(x for pv in points for x in pv), "keyframe")
        outside = [p for p, _ in points if not 0.0 <= p <= 1.0]
        if outside:
            raise ControlNetError(f"Keyframe percent {outside} is outside [0, 1]: percents are sampling progress "
                                  f"(0.0 = first step, 1.0 = last).")
        object.__setattr__(self, "params", tuple(sorted(points, key=lambda pv: pv[0])))

    def __call__(self, percent: float) -> float:
        """Multiplier at sampling progress `percent` (clamped to [0, 1])."""
        p = _clamp01(percent)
        if self.kind == "constant":
            return self.params[0]
        if self.kind in ("linear", "ease"):
            w = p if self.kind == "linear" else _smoothstep(p)
            return self.params[0] * (1.0 - w) + self.params[1] * w  # exact at both ends
        return _interpolate_keyframes(self.params, p)


def _parse_numbers(text: str, body: str, count: int) -> tuple[float, ...]:
    """`count` comma-separated floats from `body`, or a ControlNetError quoting the whole schedule text."""
    parts = [s.strip() for s in body.split(",")]
    try:
        values = tuple(float(s) for s in parts)
    except ValueError:
        raise ControlNetError(f"Schedule {text!r}: {body!r} is not {count} comma-separated number(s); "
                              f"write it as {SCHEDULE_SYNTAX}.") from None
    if len(values) != count:
        raise ControlNetError(f"Schedule {text!r} needs {count} value(s), got {len(values)}; "
                              f"write it as {SCHEDULE_SYNTAX}.")
    return values


def _parse_keyframes(text: str) -> Schedule:
    """'0.0:1.0, 0.5:0.6' -> keyframe Schedule; every item must be percent:value."""
    points = []
    for item in (s.strip() for s in text.split(",")):
        pieces = [s.strip() for s in item.split(":")]
        try:
            if len(pieces) != 2:
                raise ValueError
            points.append((float(pieces[0]), float(pieces[1])))
        except ValueError:
            raise ControlNetError(f"Schedule {text!r}: item {item!r} is not percent:value; "
                                  f"write it as {SCHEDULE_SYNTAX}.") from None
    return Schedule("keyframes", tuple(points))


def parse_schedule(text: str) -> Schedule:
    """Parse the schedule syntax of docs/weights.md: constant[:v] | linear:a,b | ease:a,b | p:v, p:v, ..."""
    stripped = (text or "").strip()
    head, _, body = stripped.partition(":")
    kind = head.strip().lower()
    if kind in ("", "constant") and not body.strip():
        return Schedule()
    if kind == "constant":
        return Schedule("constant", _parse_numbers(text, body, 1))
    if kind in ("linear", "ease"):
        return Schedule(kind, _parse_numbers(text, body, 2))
    if kind == "keyframes":
        return _parse_keyframes(body)
    return _parse_keyframes(stripped)


@dataclass(frozen=True)
class ControlWeights:
    """How strongly each residual is applied: mode, soft-weight base, per-block multipliers, uncond, schedule.

    Block order is the host's: `output` residuals shallow -> deep, then the middle block (docs/weights.md).
    """

    mode: str = "balanced"
    base_multiplier: float = 0.825
    block_multipliers: tuple[float, ...] | None = None
    uncond_multiplier: float = 1.0
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self) -> None:
        if self.mode not in MODES.values():
            raise ControlNetError(f"Control mode {self.mode!r} is unknown: use one of {sorted(MODES.values())} "
                                  f"(node labels {list(MODES)}).")
        if not (math.isfinite(self.base_multiplier) and self.base_multiplier > 0.0):
            raise ControlNetError(f"base_multiplier {self.base_multiplier!r} must be a positive number "
                                  f"(A1111 soft weights use 0.825).")
        if not 0.0 <= self.uncond_multiplier <= 1.0:
            raise ControlNetError(f"uncond_multiplier {self.uncond_multiplier!r} is outside [0, 1]: 1 applies the "
                                  f"control to the negative prompt as to the positive, 0 not at all.")
        if self.block_multipliers is not None:
            object.__setattr__(self, "block_multipliers", tuple(float(m) for m in self.block_multipliers))
        if not isinstance(self.schedule, Schedule):
            raise ControlNetError(f"schedule {self.schedule!r} is not a Schedule: build it with parse_schedule().")

    def soft(self) -> bool:
        """True when the mode uses the soft (depth-decaying) block weights."""
        return self.mode != "balanced"

    def block_scales(self, n_residuals: int) -> tuple[float, ...]:
        """Per-residual weight, host order; soft modes: base ** (n - 1 - i), so the middle block keeps weight 1."""
        if n_residuals < 1:
            raise ControlNetError(f"n_residuals {n_residuals} must be at least 1 (a ControlNet has a middle block).")
        base = self.base_multiplier if self.soft() else 1.0
        scales = tuple(base ** (n_residuals - 1 - i) for i in range(n_residuals))
        if self.block_multipliers is None:
            return scales
        if len(self.block_multipliers) != n_residuals:
            raise ControlNetError(f"block_multipliers has {len(self.block_multipliers)} values but this ControlNet "
                                  f"has {n_residuals} residuals (skips shallow->deep, then middle): give exactly "
                                  f"{n_residuals} values or none.")
        return tuple(s * m for s, m in zip(scales, self.block_multipliers))

    def uncond_scale(self) -> float:
        """Weight of the unconditional rows: 0 in "ControlNet is more important", else uncond_multiplier."""
        return 0.0 if self.mode == "controlnet" else float(self.uncond_multiplier)

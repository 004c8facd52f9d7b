"""`ControlStrength` node: control mode, soft-weight base, per-block and uncond multipliers, strength schedule."""
from __future__ import annotations

from comfy_api.latest import io

from ..controlnet_core.errors import ControlNetError
from ..controlnet_core.weights import MODES, SCHEDULE_SYNTAX, ControlWeights
from .inputs import check_strength_texts, parse_block_multipliers, parse_strength_schedule

ControlStrengthType = io.Custom("CONTROL_STRENGTH")  # the value is a controlnet_core ControlWeights


class ControlStrength(io.ComfyNode):
    """Thin node: parse the widgets, build one frozen ControlWeights (controlnet_core/weights.py)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CNCore_ControlStrength",
            display_name="ControlNet Strength (Core)",
            category="conditioning/controlnet",
            description="How strongly each block of a ControlNet is applied (A1111 control modes, soft weights, "
                        "per-block and uncond multipliers, a strength schedule). Feed it to Apply ControlNet "
                        "(Core).control_strength.",
            inputs=[
                io.Combo.Input("mode", options=list(MODES), default="Balanced",
                               tooltip="Balanced: strength on every block. My prompt is more important: soft "
                                       "weights strength*base^(N-1-i), shallow skips weakest, middle block full. "
                                       "ControlNet is more important: the same soft weights and no control on the "
                                       "negative (unconditional) rows."),
                io.Float.Input("base_multiplier", default=0.825, min=0.01, max=1.0, step=0.005, optional=True,
                               tooltip="Soft-weight base of the two soft modes (A1111: 0.825). Ignored in "
                                       "Balanced."),
                io.Float.Input("uncond_multiplier", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Control on the negative (unconditional) rows: 1 = as on the positive, 0 = "
                                       "none (ControlNet is more important forces 0)."),
                io.String.Input("block_multipliers", default="", optional=True,
                                tooltip="Optional per-residual multipliers, comma-separated, skips shallow->deep "
                                        "then the middle block (SD1.x/SD2.x: 13 values, SDXL: 10). Empty = all 1."),
                io.String.Input("schedule", default="constant", optional=True,
                                tooltip=f"Strength over sampling progress (0 = first step, 1 = last): "
                                        f"{SCHEDULE_SYNTAX}."),
            ],
            outputs=[ControlStrengthType.Output(display_name="control_strength",
                                             tooltip="Connect to Apply ControlNet (Core).control_strength.")],
        )

    @classmethod
    def validate_inputs(cls, block_multipliers: str | None = None, schedule: str | None = None) -> bool | str:
        """A malformed block list or schedule is refused at queue time, not at sampling time."""
        return check_strength_texts(block_multipliers, schedule) or True

    @classmethod
    def execute(cls, mode: str, base_multiplier: float = 0.825, uncond_multiplier: float = 1.0,
                block_multipliers: str = "", schedule: str = "constant") -> io.NodeOutput:
        if mode not in MODES:
            raise ControlNetError(f"mode {mode!r} is unknown: choose one of {list(MODES)}.")
        weights = ControlWeights(mode=MODES[mode], base_multiplier=base_multiplier,
                                 block_multipliers=parse_block_multipliers(block_multipliers),
                                 uncond_multiplier=uncond_multiplier, schedule=parse_strength_schedule(schedule))
        return io.NodeOutput(weights)

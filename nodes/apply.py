"""`ApplyControlNet` node: the host's ControlNetApplyAdvanced inputs, plus mask, control strength and resize mode."""
from __future__ import annotations

from comfy_api.latest import io

from ..controlnet_core.engine import resize_hint
from ..controlnet_core.errors import ControlNetError
from ..controlnet_core.union import AUTO, UNION_TYPE_OPTIONS, UNION_TYPES
from . import host
from .inputs import RESIZE_MODES, check_apply_values, effect_mask, hint_from_image
from .strength import ControlStrengthType


class ApplyControlNet(io.ComfyNode):
    """Thin node: validate, then attach a copy of the control to both conditionings (nodes/host/)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CNCore_ApplyControlNet",
            display_name="Apply ControlNet (Core)",
            category="conditioning/controlnet",
            description="Adds a ControlNet to the positive and negative conditioning. Several applies are summed "
                        "(ours and the host's, in either order). Same inputs as the host's Apply ControlNet, plus "
                        "an effect mask, a control strength (modes, soft weights, schedule) and the hint resize "
                        "mode.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning (the prompt)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.ControlNet.Input("control_net", tooltip="From Load ControlNet (Core) or the host's Load "
                                                           "ControlNet Model."),
                io.Image.Input("image", tooltip="The hint, e.g. canny edges; resized to the latent x 8."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Multiplier of every residual; 0 leaves the conditioning untouched."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which the control starts (0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which the control stops (1 = last step)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Per-pixel effect: 1 = full control, 0 = none; resized to each block, per "
                                      "batch item. Needs Load ControlNet (Core)."),
                ControlStrengthType.Input("control_strength", optional=True,
                                          tooltip="From ControlNet Strength (Core): control mode, soft weights, "
                                                  "per-block and uncond multipliers, schedule."),
                io.Vae.Input("vae", optional=True, tooltip="Only for host ControlNets that take a latent hint "
                                                           "(SD3, Flux); ignored otherwise."),
                io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default="Crop and Resize", optional=True,
                               tooltip="When the hint's aspect differs from the latent's: Crop and Resize (centre "
                                       "crop, the host's behaviour), Just Resize (stretch), Resize and Fill (fit "
                                       "inside, borders filled with the hint's median border colour, as in the "
                                       "Preprocessor: black for edge hints)."),
                io.Combo.Input("union_type", options=list(UNION_TYPE_OPTIONS), default=AUTO, optional=True,
                               tooltip="ControlNet-Union / ProMax only: what the hint is (the host's Set Union "
                                       "ControlNet Type names). Several applies of one union file with the same "
                                       "window run in one pass. tile and repaint need ProMax; auto = no type."),
                io.Latent.Input("preview_latent", optional=True,
                                tooltip="Optional: connect the latent you sample to see, in this node, the hint "
                                        "as the network gets it (resized to latent x 8 with resize_mode)."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive",
                                            tooltip="Positive conditioning carrying the control (chained after "
                                                    "any earlier one)."),
                     io.Conditioning.Output(display_name="negative",
                                            tooltip="Negative conditioning carrying the same control object (cond "
                                                    "and uncond run in one batch).")],
        )

    @classmethod
    def validate_inputs(cls, strength: float | None = None, start_percent: float | None = None,
                        end_percent: float | None = None) -> bool | str:
        """At queue time: NaN/inf/out-of-range strength, percents outside [0, 1], start after end."""
        return check_apply_values(strength, start_percent, end_percent) or True

    @classmethod
    def execute(cls, positive, negative, control_net, image, strength: float, start_percent: float,
                end_percent: float, mask=None, control_strength=None, vae=None,
                resize_mode: str = "Crop and Resize", union_type: str = AUTO,
                preview_latent=None) -> io.NodeOutput:
        problem = check_apply_values(strength, start_percent, end_percent)  # linked values skip validate_inputs
        if problem:
            raise ControlNetError(problem)
        if strength == 0:
            return io.NodeOutput(positive, negative)
        if resize_mode not in RESIZE_MODES:
            raise ControlNetError(f"resize_mode {resize_mode!r} is unknown: choose one of {list(RESIZE_MODES)}.")
        hint = hint_from_image(image)
        mask = effect_mask(mask)
        if host.is_core(control_net):
            template = control_net.with_options(control_strength, mask, RESIZE_MODES[resize_mode], union_type)
        elif mask is not None or control_strength is not None or resize_mode != "Crop and Resize":
            raise ControlNetError(f"mask, control_strength and resize_mode need a ControlNet loaded with Load "
                                  f"ControlNet (Core); this one ({type(control_net).__name__}) came from another "
                                  "loader. Load the same file with Load ControlNet (Core), or disconnect them.")
        elif union_type != AUTO:  # a host union ControlNet: what the host's SetUnionControlNetType does
            template = control_net.copy()
            template.set_extra_arg("control_type", [UNION_TYPES[union_type]])
        else:
            template = control_net
        pos, neg = host.apply_to_conditioning(positive, negative, template, hint, strength,
                                              (start_percent, end_percent), vae=vae)
        if preview_latent is None:
            return io.NodeOutput(pos, neg)
        width, height = host.latent_pixel_size(preview_latent)
        seen = resize_hint(hint, height, width, RESIZE_MODES[resize_mode]).movedim(1, -1)  # (B, height, width, 3)
        return io.NodeOutput(pos, neg, ui=host.preview(seen))

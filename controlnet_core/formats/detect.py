"""The one detection table: every control file a ComfyUI user loads -> its kind, from the weights alone.

Rows follow `shared/research/formats_beyond.md` §1 (the host's `comfy/controlnet.py::load_controlnet_state_dict`
order, with the signature tightened where the host mis-detects). The first matching row wins, so the order is
part of the table: every row names keys only its kind has, and rows that share a key (DiT ControlNets all have
`controlnet_blocks.0.weight`; a union and a CoAdapter fuser both have `task_embedding`) come most specific first.
Kinds the core does not run carry the host node that loads them; they are refused with one line naming it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError

Predicate = Callable[[Mapping[str, Any]], bool]

# Kinds the core runs (the `kind` field of `inspect --json`).
CONTROLNET, UNION, CONTROL_LORA, T2I_ADAPTER, DIFF_CONTROLNET = (
    "controlnet", "union", "control_lora", "t2i_adapter", "diff_controlnet")
RUN_KINDS = (CONTROLNET, UNION, CONTROL_LORA, T2I_ADAPTER, DIFF_CONTROLNET)

# Signature keys of the plain ControlNet layouts (formats/controlnet.py LAYOUTS): diffusers, prefixed, bare ldm.
CONTROLNET_SIGNATURES = ("controlnet_cond_embedding.conv_in.weight", "control_model.zero_convs.0.0.weight",
                         "zero_convs.0.0.weight")

HOST_CONTROLNET_LOADER = "the host's 'Load ControlNet Model' node (ControlNetLoader)"


@dataclass(frozen=True)
class Kind:
    """One row: a kind of file, the keys that identify it (for docs and errors), the predicate that decides."""

    name: str
    what: str
    signature: str
    matches: Predicate
    host_node: str | None = None  # set for kinds the core refuses: where the file loads instead

    @property
    def refused(self) -> bool:
        return self.host_node is not None


def has(*keys: str) -> Predicate:
    """All of `keys` are in the state dict."""
    return lambda sd: all(k in sd for k in keys)


def has_any(*keys: str) -> Predicate:
    return lambda sd: any(k in sd for k in keys)


def has_prefix(prefix: str) -> Predicate:
    return lambda sd: any(k.startswith(prefix) for k in sd)


def has_substring(text: str) -> Predicate:
    return lambda sd: any(text in k for k in sd)


def both(*predicates: Predicate) -> Predicate:
    return lambda sd: all(p(sd) for p in predicates)


def either(*predicates: Predicate) -> Predicate:
    return lambda sd: any(p(sd) for p in predicates)


def without(*keys: str) -> Predicate:
    return lambda sd: not any(k in sd for k in keys)


A_CONTROLNET = has_any(*CONTROLNET_SIGNATURES)
DIT_BLOCKS = has("controlnet_blocks.0.weight")

# T2I-Adapter (§3): TencentARC originals (full: conv_in + body.N.block1; light: body.N.in_conv + body.N.body.M)
# and diffusers `T2IAdapter` (adapter.conv_in / adapter.body.N.in_conv + adapter.body.N.resnets.M).
T2I_ORIGINAL_FULL = has("conv_in.weight", "body.0.block1.weight")
T2I_ORIGINAL_LIGHT = has("body.0.in_conv.weight", "body.0.body.0.block1.weight")
T2I_DIFFUSERS = both(has_any("adapter.conv_in.weight", "adapter.body.0.in_conv.weight"),
                     has("adapter.body.0.resnets.0.block1.weight"))

DIFFSYNTH_NODES = "the host's 'ModelPatchLoader' + 'QwenImageDiffsynthControlnet' nodes (models/model_patches)"
LLLITE_NODES = ("no node of the host; Advanced-ControlNet's 'Load Advanced ControlNet Model' or kohya's "
                "ControlNet-LLLite-ComfyUI node")
STYLE_NODES = "the host's 'Load Style Model' + 'Apply Style Model' nodes (StyleModelLoader, StyleModelApply)"

KINDS: tuple[Kind, ...] = (
    # --- DiT and other families the core does not run (most specific first: they share controlnet_blocks.0).
    Kind("hunyuan_dit_controlnet", "a HunyuanDiT ControlNet", "after_proj_list.0.weight | input_block.weight + "
         "controlnet_blocks.0.weight", either(has("after_proj_list.0.weight"), both(DIT_BLOCKS, has(
             "input_block.weight"))), HOST_CONTROLNET_LOADER + " (Tencent layout only)"),
    Kind("diffsynth_model_patch", "a DiffSynth blockwise model patch (Qwen-Image), not a ControlNet",
         "controlnet_blocks.0.x_rms.weight | controlnet_blocks.0.y_rms.weight",
         has_any("controlnet_blocks.0.x_rms.weight", "controlnet_blocks.0.y_rms.weight"), DIFFSYNTH_NODES),
    Kind("flux_controlnet", "a Flux ControlNet (XLabs)", "controlnet_blocks.0.weight + "
         "double_blocks.0.img_attn.norm.key_norm.scale",
         both(DIT_BLOCKS, has("double_blocks.0.img_attn.norm.key_norm.scale")), HOST_CONTROLNET_LOADER),
    Kind("sd3_controlnet", "an SD3.5 ControlNet (Stability 8b)", "controlnet_blocks.0.weight + "
         "pos_embed_input.proj.weight + transformer_blocks.0.adaLN_modulation.1.bias",
         both(DIT_BLOCKS, has("pos_embed_input.proj.weight", "transformer_blocks.0.adaLN_modulation.1.bias")),
         HOST_CONTROLNET_LOADER),
    Kind("sd3_controlnet", "an SD3 / SD3.5 ControlNet (diffusers layout)", "controlnet_blocks.0.weight + "
         "pos_embed_input.proj.weight", both(DIT_BLOCKS, has("pos_embed_input.proj.weight")),
         HOST_CONTROLNET_LOADER),
    Kind("qwen_image_controlnet", "a Qwen-Image ControlNet (InstantX)", "controlnet_blocks.0.weight + "
         "transformer_blocks.0.img_mlp.net.0.proj.weight | txt_norm.weight",
         both(DIT_BLOCKS, has_any("transformer_blocks.0.img_mlp.net.0.proj.weight", "txt_norm.weight")),
         HOST_CONTROLNET_LOADER),
    Kind("flux_controlnet", "a Flux ControlNet (InstantX / Shakker / Union-Pro)", "controlnet_blocks.0.weight + "
         "controlnet_x_embedder.weight", both(DIT_BLOCKS, has("controlnet_x_embedder.weight")),
         HOST_CONTROLNET_LOADER),
    Kind("flux_controlnet", "a Flux ControlNet (MistoLine)", "controlnet_blocks.0.linear.weight",
         has("controlnet_blocks.0.linear.weight"), HOST_CONTROLNET_LOADER),
    Kind("dit_controlnet", "a DiT ControlNet (Flux / SD3 / Qwen-Image family, unrecognised variant)",
         "controlnet_blocks.0.weight", DIT_BLOCKS, HOST_CONTROLNET_LOADER),
    Kind("controlnet_lllite", "a ControlNet-LLLite (kohya; attention-input patches, not residuals)",
         "*lllite*", has_substring("lllite"), LLLITE_NODES),
    Kind("controlnet_xs", "a ControlNet-XS (exchanges features with the U-Net at every block)",
         "control_to_base_for_conv_in.weight | *base_to_ctrl*",
         either(has("control_to_base_for_conv_in.weight"), has_substring("base_to_ctrl")),
         "no node of the host or of Advanced-ControlNet (ComfyUI #2279)"),
    Kind("stable_cascade_controlnet", "a Stable Cascade ControlNet", "backbone.0.0.weight | "
         "backbone.10.blocks.0.weight", has_any("backbone.0.0.weight", "backbone.10.blocks.0.weight"),
         HOST_CONTROLNET_LOADER),
    Kind("t2i_style_adapter", "a T2I style adapter (adds CLIP-vision tokens to the prompt; not a control)",
         "style_embedding | redux_down.weight", has_any("style_embedding", "redux_down.weight"), STYLE_NODES),
    Kind("coadapter_fuser", "a CoAdapter fuser (mixes T2I-Adapter features; no ComfyUI node runs it)",
         "task_embedding + positional_embedding", both(has("task_embedding", "positional_embedding"),
                                                        without(*CONTROLNET_SIGNATURES)),
         "no node of the host; load the individual CoAdapters as T2I-Adapters"),
    # --- kinds the core runs: U-Net ControlNets with extra modules first, then plain ones, then adapters.
    Kind(CONTROL_LORA, "a Control-LoRA (Stability; low-rank deltas to the base U-Net)", "lora_controlnet",
         has("lora_controlnet")),
    Kind(UNION, "a ControlNet-Union / ProMax (xinsir)", "task_embedding + control_add_embedding.linear_1.weight "
         "+ a ControlNet signature", both(has("task_embedding", "control_add_embedding.linear_1.weight"),
                                          A_CONTROLNET)),
    Kind(DIFF_CONTROLNET, "a diff-ControlNet (weights stored as differences to SD1.5)", "difference + a "
         "ControlNet signature", both(has("difference"), A_CONTROLNET)),
    Kind(CONTROLNET, "a ControlNet", " | ".join(CONTROLNET_SIGNATURES), A_CONTROLNET),
    Kind(T2I_ADAPTER, "a T2I-Adapter", "conv_in.weight + body.0.block1.weight | body.0.in_conv.weight + "
         "body.0.body.0.block1.weight | adapter.{conv_in,body.0.in_conv}.weight + "
         "adapter.body.0.resnets.0.block1.weight", either(T2I_ORIGINAL_FULL, T2I_ORIGINAL_LIGHT, T2I_DIFFUSERS)),
    # --- not control models at all.
    Kind("sd_checkpoint", "a Stable Diffusion checkpoint without a ControlNet in it", "model.diffusion_model.*",
         has_prefix("model.diffusion_model."), "the host's 'Load Checkpoint' node (CheckpointLoaderSimple)"),
    Kind("diffusers_unet", "a diffusers UNet2DConditionModel, not a ControlNet", "up_blocks.*",
         has_prefix("up_blocks."), "the host's 'Load Diffusion Model' node (UNETLoader)"),
)


def detect(sd: Mapping[str, Any], source: str = "<state dict>") -> Kind:
    """The first row of KINDS matching `sd`; CheckpointError listing what we read when none does."""
    for kind in KINDS:
        if kind.matches(sd):
            return kind
    sample = ", ".join(sorted(sd)[:3])
    raise CheckpointError(f"{source}: unknown checkpoint layout ({len(sd)} keys, e.g. {sample}); {known_kinds()}")


def known_kinds() -> str:
    """One line naming what the core reads and (briefly) what it recognises and refuses."""
    from .controlnet import known_layouts

    refused = sorted({k.what.split(" (")[0].removeprefix("a ").removeprefix("an ") for k in KINDS if k.refused})
    return (f"kinds run: {', '.join(RUN_KINDS)} (ControlNet {known_layouts()}; T2I-Adapter: TencentARC or diffusers; "
            f"Control-LoRA; Union); recognised and refused: {', '.join(refused)}")


def refusal(kind: Kind, source: str) -> CheckpointError:
    """The one-line error for a kind the core does not run: the kind, the file, the node that loads it."""
    return CheckpointError(f"{source}: this is {kind.what} (kind {kind.name}; has {kind.signature}), which this "
                           f"pack does not run; load it with {kind.host_node}")

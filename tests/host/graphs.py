"""API-format prompts for the host tests, built in code (comfyui_native.md §7: {"id": {"class_type", "inputs"}})."""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

from tests.host.assets import CHECKPOINT, HINT_IMAGE, HINT_SIZE

CANNY = "control_v11p_sd15_canny_fp16.safetensors"
LINEART = "control_v11p_sd15_lineart_fp16.safetensors"
SDXL_TINY = "controlnet_sdxl_tiny_random.safetensors"
FP8 = "control_sd15_canny_fp8_e4m3fn.safetensors"


@dataclass
class Graph:
    """A prompt under construction; `add` returns the node id, `out(id, slot)` a link."""

    nodes: dict = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(next(self._ids))
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    @staticmethod
    def out(node_id: str, slot: int = 0) -> list:
        return [node_id, slot]

    def prompt(self) -> dict:
        return copy.deepcopy(self.nodes)


@dataclass
class Base:
    """Checkpoint, prompts, latent and hint nodes shared by every variant of a test graph."""

    graph: Graph
    model: list
    clip: list
    positive: list
    negative: list
    latent: list
    hint: list


def base(seed_text: str = "a house", size: int = HINT_SIZE, batch: int = 1, image: str = HINT_IMAGE) -> Base:
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    pos = g.add("CLIPTextEncode", text=seed_text, clip=g.out(ckpt, 1))
    neg = g.add("CLIPTextEncode", text="blurry", clip=g.out(ckpt, 1))
    latent = g.add("EmptyLatentImage", width=size, height=size, batch_size=batch)
    hint = g.add("LoadImage", image=image)
    return Base(g, g.out(ckpt, 0), g.out(ckpt, 1), g.out(pos), g.out(neg), g.out(latent), g.out(hint))


def native_loader(b: Base, name: str = CANNY) -> list:
    return b.graph.out(b.graph.add("ControlNetLoader", control_net_name=name))


def core_loader(b: Base, name: str = CANNY) -> list:
    return b.graph.out(b.graph.add("CNCore_LoadControlNet", control_net_name=name))


def apply(b: Base, node: str, control_net: list, positive: list, negative: list, hint: list | None = None,
          strength: float = 1.0, start: float = 0.0, end: float = 1.0, **extra) -> tuple[list, list]:
    """ApplyControlNet (ours) or ControlNetApplyAdvanced (native): returns (positive, negative) links."""
    node_id = b.graph.add(node, positive=positive, negative=negative, control_net=control_net,
                          image=hint or b.hint, strength=strength, start_percent=start, end_percent=end, **extra)
    return b.graph.out(node_id, 0), b.graph.out(node_id, 1)


def control_strength(b: Base, mode: str = "Balanced", **options) -> list:
    return b.graph.out(b.graph.add("CNCore_ControlStrength", mode=mode, **options))


def sample(b: Base, positive: list, negative: list, prefix: str, steps: int = 2, cfg: float = 4.0,
           seed: int = 42) -> str:
    """KSampler + SaveLatent; returns the SaveLatent node id."""
    k = b.graph.add("KSampler", model=b.model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                    scheduler="normal", positive=positive, negative=negative, latent_image=b.latent, denoise=1.0)
    return b.graph.add("SaveLatent", samples=b.graph.out(k), filename_prefix=prefix)


TOLERANCE = 0.01  # of the control's own effect (norm), issue 3


def effect_ratio(ours, reference, uncontrolled) -> float:
    """||ours - reference|| / ||reference - uncontrolled||, after checking the control did something."""
    effect = (reference - uncontrolled).norm()
    assert effect > 1e-3 * uncontrolled.norm(), "the control changed nothing: the comparison would be vacuous"
    return float((ours - reference).norm() / effect)


def reference_prompt() -> dict:
    """Uncontrolled, native-controlled and ours-controlled samplings of one seed (2 steps, cfg 4)."""
    b = base()
    sample(b, b.positive, b.negative, "ref_none")
    sample(b, *apply(b, "ControlNetApplyAdvanced", native_loader(b), b.positive, b.negative), "ref_native")
    sample(b, *apply(b, "CNCore_ApplyControlNet", core_loader(b), b.positive, b.negative), "ref_ours")
    return b.graph.prompt()


def shrink(prompt: dict, size: int = 64, steps: int = 2) -> dict:
    """A copy of an API prompt with small empty latents and few sampling steps (same graph otherwise)."""
    out = copy.deepcopy(prompt)
    for node in out.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=size, height=size)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return out

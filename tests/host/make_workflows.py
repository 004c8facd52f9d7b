"""Writes workflows/<name>.json (UI, drag into the editor), workflows/api/<name>.json (POST /prompt) and the
example pictures they load (workflows/input/*.png) from one description.

    COMFYUI_PATH=/path/to/ComfyUI python -m tests.host.make_workflows     # starts the host to read object_info
    python -m tests.host.make_workflows OBJECT_INFO.json                   # or a saved GET /object_info

Both files come from the same node list, so they describe the same graph by construction; widget order (and the
extra `control_after_generate` / upload values the editor stores) is read from the host's object_info, which is
why this tool needs one. tests/nodes checks the committed pairs without a host, tests/host against a live host.
UI graphs sit directly in workflows/ because the host's template browser lists every `*.json` there; API graphs
live in workflows/api/. Each UI graph carries a Note naming the files the user brings (the checkpoint and the
ControlNets, with download links also listed under `models` for the editor's missing-models dialog); the example
pictures are drawn here (`example_images`, no host needed) and copied into the host's input folder by the pack
when it loads (nodes/host/examples.py), so a dragged workflow finds them.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.host.assets import CHECKPOINT, HINT_IMAGE

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
API_DIR = WORKFLOWS / "api"
INPUT_DIR = WORKFLOWS / "input"
CANNY = "control_v11p_sd15_canny_fp16.safetensors"
LINEART = "control_v11p_sd15_lineart_fp16.safetensors"
OPENPOSE = "control_v11p_sd15_openpose_fp16.safetensors"
MODEL_URLS = {  # name -> (models/ folder, download URL): the files a user brings (the editor offers to fetch them)
    CHECKPOINT: ("checkpoints", "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
                                "v1-5-pruned-emaonly-fp16.safetensors"),
    CANNY: ("controlnet", "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                          "control_v11p_sd15_canny_fp16.safetensors"),
    LINEART: ("controlnet", "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                            "control_v11p_sd15_lineart_fp16.safetensors"),
    OPENPOSE: ("controlnet", "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                             "control_v11p_sd15_openpose_fp16.safetensors"),
}
VIRTUAL_NODES = ("Note", "MarkdownNote")  # editor-only nodes: in the UI graph, never in the API prompt
POSITIVE = "a cozy wooden house in a forest clearing, golden hour, highly detailed"
NEGATIVE = "blurry, lowres, watermark, text"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@dataclass
class Node:
    id: int
    type: str
    inputs: dict  # name -> literal | (Node, slot)
    pos: tuple[int, int]


@dataclass
class Workflow:
    nodes: list[Node] = field(default_factory=list)

    def add(self, type_: str, pos: tuple[int, int], **inputs) -> Node:
        node = Node(len(self.nodes) + 1, type_, inputs, pos)
        self.nodes.append(node)
        return node


def is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def ordered_inputs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) in the host's input order: required then optional."""
    out = []
    for group in ("required", "optional"):
        for name in info["input_order"].get(group, []):
            out.append((name, info["input"][group][name]))
    return out


def default_of(spec: list):
    """A widget's default as the editor fills it: `default`, else the first option, else the type's zero."""
    options = spec[1] if len(spec) > 1 else {}
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options")
    if choices:
        return choices[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[spec[0]]


def complete(wf: Workflow, info: dict) -> Workflow:
    """Every widget gets a value (the editor stores them all; an API export lists them all)."""
    for node in wf.nodes:
        for name, spec in ordered_inputs(info[node.type]):
            if is_widget(spec) and name not in node.inputs:
                node.inputs[name] = default_of(spec)
    return wf


def widgets_values(node: Node, info: dict) -> list:
    """The editor's positional widget values, including control_after_generate and upload entries."""
    values = []
    for name, spec in ordered_inputs(info):
        if not is_widget(spec) or isinstance(node.inputs.get(name), tuple):
            continue
        values.append(node.inputs[name])
        options = spec[1] if len(spec) > 1 else {}
        if options.get("control_after_generate"):
            values.append("fixed")
        if options.get("image_upload"):
            values.append("image")
    return values


def to_api(wf: Workflow, info: dict) -> dict:
    prompt = {}
    for node in wf.nodes:
        names = [name for name, _ in ordered_inputs(info[node.type])]
        inputs = {}
        for name in sorted(node.inputs, key=names.index):
            value = node.inputs[name]
            inputs[name] = [str(value[0].id), value[1]] if isinstance(value, tuple) else value
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                "_meta": {"title": info[node.type]["display_name"]}}
    return prompt


def to_ui(wf: Workflow, info: dict) -> dict:
    links, incoming, outgoing = [], {}, {}
    for node in wf.nodes:
        for name, spec in ordered_inputs(info[node.type]):
            value = node.inputs.get(name)
            if isinstance(value, tuple):
                src, slot = value
                link_id = len(links) + 1
                links.append([link_id, src.id, slot, node.id, name, info[src.type]["output"][slot]])
                incoming[(node.id, name)] = link_id
                outgoing.setdefault((src.id, slot), []).append(link_id)
    order = {n.id: i for i, n in enumerate(wf.nodes)}  # nodes are listed in a valid execution order
    ui_nodes = []
    for node in wf.nodes:
        node_info = info[node.type]
        sockets = [(name, spec) for name, spec in ordered_inputs(node_info) if not is_widget(spec)]
        inputs = [{"name": name, "type": spec[0], "link": incoming.get((node.id, name))} for name, spec in sockets]
        outputs = [{"name": node_info["output_name"][i], "type": t, "links": outgoing.get((node.id, i), []),
                    "slot_index": i} for i, t in enumerate(node_info["output"])]
        ui_nodes.append({"id": node.id, "type": node.type, "pos": list(node.pos), "size": [320, 130],
                         "flags": {}, "order": order[node.id], "mode": 0, "inputs": inputs, "outputs": outputs,
                         "properties": {"Node name for S&R": node.type},
                         "widgets_values": widgets_values(node, node_info)})
    # the editor's link rows name the target slot by index among the node's listed inputs
    index = {n["id"]: [i["name"] for i in n["inputs"]] for n in ui_nodes}
    links = [[lid, s, ss, t, index[t].index(name), typ] for lid, s, ss, t, name, typ in links]
    used = used_models(wf)
    ui_nodes.append(note_node(len(wf.nodes) + 1, used))
    return {"last_node_id": len(wf.nodes) + 1, "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
            "models": [{"name": name, "url": MODEL_URLS[name][1], "directory": MODEL_URLS[name][0]}
                       for name in used]}


def used_models(wf: Workflow) -> list[str]:
    """The model files the graph names (checkpoint, ControlNets), in node order, each once."""
    names = [v for n in wf.nodes for v in n.inputs.values() if isinstance(v, str) and v in MODEL_URLS]
    return list(dict.fromkeys(names))


def note_node(node_id: int, models: list[str]) -> dict:
    """The editor-only Note telling the user which files to bring and where they go."""
    lines = [f"- models/{MODEL_URLS[n][0]}/{n}\n  {MODEL_URLS[n][1]}" for n in models]
    text = ("Bring your own model files (any SD1.5 checkpoint works; pick yours in Load Checkpoint):\n"
            + "\n".join(lines) + "\n\nThe example picture (" + HINT_IMAGE + ") ships with the pack and is copied "
            "into ComfyUI's input folder when the pack loads.")
    return {"id": node_id, "type": "Note", "pos": [0, -260], "size": [560, 220], "flags": {}, "order": node_id - 1,
            "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653"}


def example_images() -> dict[str, "object"]:
    """{file name: PIL image}: the pictures the workflows load, drawn deterministically (flat shapes with hard
    edges and thin lines, so canny, line art and depth all have something to find)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (512, 512), (150, 190, 225))  # sky
    d = ImageDraw.Draw(img)
    d.rectangle([0, 360, 511, 511], fill=(70, 130, 60))  # meadow
    d.ellipse([380, 40, 460, 120], fill=(250, 215, 90))  # sun
    d.rectangle([150, 240, 350, 400], fill=(150, 95, 55), outline=(60, 35, 20), width=4)  # house
    d.polygon([(130, 245), (250, 150), (370, 245)], fill=(120, 40, 35), outline=(60, 20, 15))  # roof
    d.rectangle([225, 320, 275, 400], fill=(80, 50, 30))  # door
    for x in (170, 295):
        d.rectangle([x, 270, x + 35, 305], fill=(230, 230, 200), outline=(60, 35, 20), width=3)  # windows
    for x in (40, 440):
        d.rectangle([x + 18, 330, x + 30, 400], fill=(90, 60, 30))  # trunk
        d.ellipse([x - 10, 250, x + 58, 345], fill=(40, 100, 45))  # crown
    for i in range(0, 512, 32):
        d.line([(i, 430 + (i // 32) % 3 * 8), (i + 16, 420)], fill=(50, 100, 40), width=2)  # grass strokes
    return {HINT_IMAGE: img}


def write_example_images(folder: Path = INPUT_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in example_images().items():
        img.save(folder / name, optimize=True)
        paths.append(folder / name)
    return paths


def base(wf: Workflow) -> dict:
    """Checkpoint, prompts, hint image, empty latent: the part every example shares."""
    ckpt = wf.add("CheckpointLoaderSimple", (0, 0), ckpt_name=CHECKPOINT)
    pos = wf.add("CLIPTextEncode", (380, 0), text=POSITIVE, clip=(ckpt, 1))
    neg = wf.add("CLIPTextEncode", (380, 220), text=NEGATIVE, clip=(ckpt, 1))
    image = wf.add("LoadImage", (0, 420), image=HINT_IMAGE)
    latent = wf.add("EmptyLatentImage", (380, 440), width=512, height=512, batch_size=1)
    return {"ckpt": ckpt, "pos": pos, "neg": neg, "image": image, "latent": latent}


def finish(wf: Workflow, b: dict, pos, neg, prefix: str, x: int = 1500, y: int = 0) -> None:
    """KSampler -> VAEDecode -> SaveImage."""
    k = wf.add("KSampler", (x, y), model=(b["ckpt"], 0), seed=42, steps=20, cfg=7.0, sampler_name="euler",
               scheduler="normal", positive=pos, negative=neg, latent_image=(b["latent"], 0), denoise=1.0)
    decoded = wf.add("VAEDecode", (x + 360, y), samples=(k, 0), vae=(b["ckpt"], 2))
    wf.add("SaveImage", (x + 600, y), images=(decoded, 0), filename_prefix=prefix)


def canny() -> Workflow:
    """One canny ControlNet on a photo: Preprocessor(canny) -> Apply ControlNet (Core)."""
    wf = Workflow()
    b = base(wf)
    edges = wf.add("CNCore_Preprocessor", (380, 660), image=(b["image"], 0), preprocessor="canny")
    cn = wf.add("CNCore_LoadControlNet", (760, 500), control_net_name=CANNY)
    apply = wf.add("CNCore_ApplyControlNet", (1100, 200), positive=(b["pos"], 0), negative=(b["neg"], 0),
                   control_net=(cn, 0), image=(edges, 0), strength=1.0, start_percent=0.0, end_percent=1.0,
                   resize_mode="Crop and Resize")
    finish(wf, b, (apply, 0), (apply, 1), "controlnet_core/canny")
    return wf


def two_controls() -> Workflow:
    """Canny + line art on one conditioning: the residuals are summed (the paper's y_c = sum y_ci)."""
    wf = Workflow()
    b = base(wf)
    edges = wf.add("CNCore_Preprocessor", (380, 660), image=(b["image"], 0), preprocessor="canny")
    lines = wf.add("CNCore_Preprocessor", (380, 900), image=(b["image"], 0), preprocessor="lineart_standard")
    cn_a = wf.add("CNCore_LoadControlNet", (760, 500), control_net_name=CANNY)
    cn_b = wf.add("CNCore_LoadControlNet", (760, 700), control_net_name=LINEART)
    first = wf.add("CNCore_ApplyControlNet", (1100, 0), positive=(b["pos"], 0), negative=(b["neg"], 0),
                   control_net=(cn_a, 0), image=(edges, 0), strength=0.8, start_percent=0.0, end_percent=1.0,
                   resize_mode="Crop and Resize")
    second = wf.add("CNCore_ApplyControlNet", (1100, 300), positive=(first, 0), negative=(first, 1),
                    control_net=(cn_b, 0), image=(lines, 0), strength=0.6, start_percent=0.0, end_percent=0.8,
                    resize_mode="Crop and Resize")
    finish(wf, b, (second, 0), (second, 1), "controlnet_core/two_controls")
    return wf


def control_modes() -> Workflow:
    """The three A1111 control modes side by side, one sampler each."""
    wf = Workflow()
    b = base(wf)
    edges = wf.add("CNCore_Preprocessor", (380, 660), image=(b["image"], 0), preprocessor="canny")
    cn = wf.add("CNCore_LoadControlNet", (760, 500), control_net_name=CANNY)
    modes = ("Balanced", "My prompt is more important", "ControlNet is more important")
    for i, mode in enumerate(modes):
        weights = wf.add("CNCore_ControlStrength", (760, 700 + 260 * i), mode=mode, base_multiplier=0.825,
                         uncond_multiplier=1.0, block_multipliers="", schedule="constant")
        apply = wf.add("CNCore_ApplyControlNet", (1100, 420 * i), positive=(b["pos"], 0), negative=(b["neg"], 0),
                       control_net=(cn, 0), image=(edges, 0), strength=1.0, start_percent=0.0, end_percent=1.0,
                       control_strength=(weights, 0), resize_mode="Crop and Resize")
        finish(wf, b, (apply, 0), (apply, 1), f"controlnet_core/mode_{i}", y=420 * i)
    return wf


def regional_mask() -> Workflow:
    """Control only the left half of the picture: a MASK on Apply ControlNet (Core)."""
    wf = Workflow()
    b = base(wf)
    edges = wf.add("CNCore_Preprocessor", (380, 660), image=(b["image"], 0), preprocessor="canny")
    cn = wf.add("CNCore_LoadControlNet", (760, 500), control_net_name=CANNY)
    empty = wf.add("SolidMask", (380, 900), value=0.0, width=512, height=512)
    left = wf.add("SolidMask", (380, 1060), value=1.0, width=256, height=512)
    mask = wf.add("MaskComposite", (760, 900), destination=(empty, 0), source=(left, 0), x=0, y=0,
                  operation="add")
    apply = wf.add("CNCore_ApplyControlNet", (1100, 200), positive=(b["pos"], 0), negative=(b["neg"], 0),
                   control_net=(cn, 0), image=(edges, 0), strength=1.0, start_percent=0.0, end_percent=1.0,
                   mask=(mask, 0), resize_mode="Crop and Resize")
    finish(wf, b, (apply, 0), (apply, 1), "controlnet_core/regional_mask")
    return wf


EXAMPLES = {"canny": canny, "two_controls": two_controls, "control_modes": control_modes,
            "regional_mask": regional_mask}




def pose() -> Workflow:
    """OpenPose on a photo -> Apply ControlNet (Core); the keypoints (POSE_KEYPOINT) re-drawn by Render Pose
    Keypoints (Core) with hands and face off, shown in a preview. Needs body_pose_model.pth in
    models/controlnet_preprocessors/openpose/."""
    wf = Workflow()
    b = base(wf)
    skeleton = wf.add("CNCore_Preprocessor", (380, 660), image=(b["image"], 0), preprocessor="openpose")
    cn = wf.add("CNCore_LoadControlNet", (760, 500), control_net_name=OPENPOSE)
    drawn = wf.add("CNCore_RenderPose", (760, 700), pose_keypoint=(skeleton, 1), hands=False, face=False)
    wf.add("PreviewImage", (1100, 700), images=(drawn, 0))
    apply = wf.add("CNCore_ApplyControlNet", (1100, 200), positive=(b["pos"], 0), negative=(b["neg"], 0),
                   control_net=(cn, 0), image=(skeleton, 0), strength=1.0, start_percent=0.0, end_percent=1.0,
                   resize_mode="Crop and Resize")
    finish(wf, b, (apply, 0), (apply, 1), "controlnet_core/pose")
    return wf


EXAMPLES["pose"] = pose


def host_object_info() -> dict:
    """GET /object_info from a host started with this pack (COMFYUI_PATH), in a throw-away base directory."""
    import tempfile

    from tests.host.server import Server, comfyui_path, comfyui_python, make_base_dir

    root = comfyui_path()
    if root is None:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout, or pass a saved object_info JSON file")
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(root=root, base=make_base_dir(Path(tmp), {}, {}), python=comfyui_python(root))
        try:
            return server.start().get("/object_info", timeout=120)
        finally:
            server.stop()


def main(argv: list[str]) -> int:
    info = json.loads(Path(argv[0]).read_text()) if argv else host_object_info()
    API_DIR.mkdir(parents=True, exist_ok=True)
    write_example_images()
    for name, build in EXAMPLES.items():
        wf = complete(build(), info)
        (WORKFLOWS / f"{name}.json").write_text(json.dumps(to_ui(wf, info), indent=2) + "\n")
        (API_DIR / f"{name}.json").write_text(json.dumps(to_api(wf, info), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

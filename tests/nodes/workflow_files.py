"""Reading the workflow pairs: UI (LiteGraph) graphs in workflows/<name>.json, API prompts in
workflows/api/<name>.json, and the example pictures they load in workflows/input/. No host needed."""
from __future__ import annotations

import json
from pathlib import Path

WORKFLOW_DIR = Path(__file__).resolve().parents[2] / "workflows"
API_DIR = WORKFLOW_DIR / "api"
INPUT_DIR = WORKFLOW_DIR / "input"  # copied into the host's input folder by the pack (nodes/host/examples.py)
WORKFLOWS = {p.stem: (p, WORKFLOW_DIR / p.name) for p in sorted(API_DIR.glob("*.json"))}
VIRTUAL_NODES = {"Note", "MarkdownNote"}  # editor-only nodes: in UI graphs, never in API prompts
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_VALUE = "image"  # the editor stores the upload button's value after an image_upload combo


def api_pairs() -> dict[str, tuple[dict, dict]]:
    """{name: (API prompt, UI workflow)} for every pair in workflows/."""
    return {name: (json.loads(api.read_text()), json.loads(ui.read_text())) for name, (api, ui) in WORKFLOWS.items()}


def graph_nodes(ui: dict) -> list[dict]:
    """The UI graph's executable nodes (Notes left out)."""
    return [n for n in ui["nodes"] if n["type"] not in VIRTUAL_NODES]


def loaded_images(api: dict) -> set[str]:
    """The input pictures an API prompt's LoadImage nodes name."""
    return {n["inputs"]["image"] for n in api.values() if n["class_type"] == "LoadImage"}


def ui_links(ui: dict) -> dict[int, dict[str, list]]:
    """{target node id: {input name: [source id (str), source slot]}} from the UI link table."""
    names = {n["id"]: [i["name"] for i in n.get("inputs", [])] for n in graph_nodes(ui)}
    out: dict[int, dict[str, list]] = {}
    for _, src, src_slot, dst, dst_slot, _ in ui["links"]:
        out.setdefault(dst, {})[names[dst][dst_slot]] = [str(src), src_slot]
    return out


def is_widget(spec: list) -> bool:
    """A node input the editor shows as a widget (number, text, toggle, combo) rather than a socket."""
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def ordered_inputs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) in object_info order: required, then optional."""
    return [(name, info["input"][group][name]) for group in ("required", "optional")
            for name in info["input_order"].get(group, [])]


def ui_widgets_by_name(node: dict, info: dict) -> dict:
    """A UI node's positional `widgets_values`, named with the node's input order (object_info layout)."""
    linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
    values = list(node.get("widgets_values", []))
    named = {}
    for name, spec in ordered_inputs(info):
        if not is_widget(spec) or name in linked or not values:
            continue
        named[name] = values.pop(0)
        options = spec[1] if len(spec) > 1 else {}
        if options.get("control_after_generate") and values:
            values.pop(0)
        if options.get("image_upload") and values and values[0] == UPLOAD_VALUE:
            values.pop(0)
    if values:
        raise ValueError(f"node {node['id']} ({node['type']}) has {len(values)} widget values more than inputs")
    return named

"""workflows/: the required examples exist, each UI/API pair is one graph, and our nodes' inputs exist (no host).

The host's own nodes are checked against a live host's object_info in tests/host/test_workflows.py.
"""
from __future__ import annotations

import pytest

from tests.nodes.schemas import UNKNOWN, schemas
from tests.nodes.workflow_files import (
    INPUT_DIR,
    WORKFLOW_DIR,
    WORKFLOWS,
    api_pairs,
    graph_nodes,
    loaded_images,
    ui_links,
    ui_widgets_by_name,
)

REQUIRED = ("canny", "two_controls", "control_modes", "regional_mask")
EDITOR_MARKERS = {"fixed", "increment", "decrement", "randomize", "image"}  # control_after_generate, upload


def _ours(class_type: str) -> bool:
    return class_type in schemas()


def _by_class(api: dict, class_type: str) -> list[dict]:
    return [n for n in api.values() if n["class_type"] == class_type]


def test_required_examples_exist_as_pairs():
    assert set(REQUIRED) <= set(WORKFLOWS)
    for api_path, ui_path in WORKFLOWS.values():
        assert api_path.is_file() and ui_path.is_file(), f"{api_path.name} needs its UI twin {ui_path.name}"


def test_examples_show_what_their_names_say():
    pairs = api_pairs()
    canny = pairs["canny"][0]
    assert [n["inputs"]["preprocessor"] for n in _by_class(canny, "CNCore_Preprocessor")] == ["canny"]
    assert len(_by_class(canny, "CNCore_ApplyControlNet")) == 1
    two = pairs["two_controls"][0]
    applies = _by_class(two, "CNCore_ApplyControlNet")
    assert len(applies) == 2
    first_id = next(k for k, v in two.items() if v is applies[0])
    assert applies[1]["inputs"]["positive"] == [first_id, 0]  # chained: the second sums onto the first
    modes = {n["inputs"]["mode"] for n in _by_class(pairs["control_modes"][0], "CNCore_ControlStrength")}
    assert modes == {"Balanced", "My prompt is more important", "ControlNet is more important"}
    masked = _by_class(pairs["regional_mask"][0], "CNCore_ApplyControlNet")
    assert len(masked) == 1 and isinstance(masked[0]["inputs"].get("mask"), list)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_ui_and_api_describe_the_same_graph(name):
    api, ui = api_pairs()[name]
    ui_nodes = {str(n["id"]): n for n in graph_nodes(ui)}
    assert set(ui_nodes) == set(api), f"{name}: node ids differ"
    links = ui_links(ui)
    for node_id, node in api.items():
        ui_node = ui_nodes[node_id]
        assert ui_node["type"] == node["class_type"], f"{name}: node {node_id} type differs"
        linked = {k: v for k, v in node["inputs"].items() if isinstance(v, list)}
        assert linked == links.get(int(node_id), {}), f"{name}: node {node_id} ({node['class_type']}) links differ"
        literal = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
        if _ours(node["class_type"]):
            assert ui_widgets_by_name(ui_node, schemas()[node["class_type"]]) == literal, f"{name}: node {node_id}"
        else:  # host node: the editor's positional values, less its own markers, are the API values in order
            values = [v for v in ui_node["widgets_values"] if not (isinstance(v, str) and v in EDITOR_MARKERS)]
            assert values == [v for v in literal.values() if not (isinstance(v, str) and v in EDITOR_MARKERS)]
    for link_id, src, src_slot, dst, dst_slot, _ in ui["links"]:
        assert link_id in ui_nodes[str(src)]["outputs"][src_slot]["links"], f"{name}: link {link_id} dangling"


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_our_nodes_inputs_exist_and_are_valid(name):
    api, _ = api_pairs()[name]
    for node_id, node in api.items():
        if not _ours(node["class_type"]):
            continue
        schema = schemas()[node["class_type"]]
        specs = schema["input"]["required"] | schema["input"]["optional"]
        assert set(node["inputs"]) <= set(specs), f"{name}: node {node_id} has unknown inputs"
        assert set(schema["input"]["required"]) <= set(node["inputs"]), f"{name}: node {node_id} lacks inputs"
        for key, value in node["inputs"].items():
            kind, options = specs[key]
            if isinstance(value, list):
                continue
            if kind == "COMBO" and options.get("options") is not UNKNOWN:
                assert value in options["options"], f"{name}: {node['class_type']}.{key}={value!r}"
            if kind in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), f"{name}: {key}={value}"


def test_ui_graphs_are_the_only_json_in_workflows():
    """The host's template browser lists every workflows/*.json: only UI graphs may sit there, each with an API twin."""
    assert {p.stem for p in WORKFLOW_DIR.glob("*.json")} == set(WORKFLOWS)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_ships_its_pictures_and_names_the_users_files(name):
    """Runs as dragged: every picture it loads ships in workflows/input/; a Note and `models` name the files the
    user brings (checkpoint, ControlNets), each with a download link."""
    api, ui = api_pairs()[name]
    for image in loaded_images(api):
        assert (INPUT_DIR / image).is_file(), f"{name}: {image} is not shipped in workflows/input/"
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1, f"{name}: needs one Note naming the user's files"
    files = {v for n in api.values() for k, v in n["inputs"].items() if k in ("ckpt_name", "control_net_name")}
    assert files and files == {m["name"] for m in ui["models"]}
    for model in ui["models"]:
        assert model["name"] in notes[0]["widgets_values"][0]
        assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith(model["name"])


def test_example_pictures_are_the_generators():
    """workflows/input/*.png are exactly what tests/host/make_workflows.py draws (regenerate, never hand-edit)."""
    import numpy as np
    from PIL import Image

    from tests.host.make_workflows import example_images

    drawn = example_images()
    assert {p.name for p in INPUT_DIR.glob("*.png")} == set(drawn)
    for file_name, img in drawn.items():
        assert np.array_equal(np.asarray(Image.open(INPUT_DIR / file_name).convert("RGB")), np.asarray(img))

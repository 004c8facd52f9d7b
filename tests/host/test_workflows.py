"""Every workflows/api/*.json runs on the real host; every node and input of every workflow exists there."""
from __future__ import annotations

import json

import pytest

from tests.host.graphs import shrink
from tests.nodes.workflow_files import WORKFLOWS, api_pairs, graph_nodes, ui_links, ui_widgets_by_name
from tests.host.test_pose import body_file  # noqa: F401 - the pose example needs openpose weights


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.get("/object_info", timeout=120)


def _input_specs(info: dict) -> dict[str, list]:
    return {name: spec for group in ("required", "optional") for name, spec in info["input"].get(group, {}).items()}


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_every_node_and_input_exists_on_the_host(object_info, name):
    api, ui = api_pairs()[name]
    for node_id, node in api.items():
        assert node["class_type"] in object_info, f"{name}: node {node_id} {node['class_type']} unknown to the host"
        specs = _input_specs(object_info[node["class_type"]])
        unknown = set(node["inputs"]) - set(specs)
        assert not unknown, f"{name}: node {node_id} ({node['class_type']}) has inputs the host lacks: {unknown}"
        required = set(object_info[node["class_type"]]["input"].get("required", {}))
        assert required <= set(node["inputs"]), f"{name}: node {node_id} misses {required - set(node['inputs'])}"


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_ui_widgets_match_the_api_inputs_by_name(object_info, name):
    """Read the UI file's positional widget values with the host's own input order; they must equal the API's."""
    api, ui = api_pairs()[name]
    links = ui_links(ui)
    for node in graph_nodes(ui):
        info = object_info[node["type"]]
        widgets = ui_widgets_by_name(node, info)
        literal = {k: v for k, v in api[str(node["id"])]["inputs"].items() if not isinstance(v, list)}
        assert widgets == literal, f"{name}: node {node['id']} ({node['type']}) widgets {widgets} != API {literal}"
        linked = {k: v for k, v in api[str(node["id"])]["inputs"].items() if isinstance(v, list)}
        assert linked == links.get(node["id"], {}), f"{name}: node {node['id']} links differ"


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_runs(server, name, body_file):
    """Queued exactly as POSTed by a user, only shrunk to 64 px and 2 steps so two CPU cores can afford it."""
    api, _ = api_pairs()[name]
    entry = server.run(shrink(api, size=64, steps=2))
    saved = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    saves = [n for n in api.values() if n["class_type"] == "SaveImage"]
    assert entry["status"]["status_str"] == "success"
    assert len(saved) == len(saves) >= 1, json.dumps(entry["outputs"])[:3000]
    for img in saved:
        assert (server.base / "output" / img["subfolder"] / img["filename"]).stat().st_size > 0
    for node_id, node in api.items():  # every Preprocessor shows its hint in the node (temp preview PNGs)
        if node["class_type"] == "CNCore_Preprocessor":
            previews = entry["outputs"][node_id]["images"]
            assert previews and all(img["type"] == "temp" for img in previews), f"{name}: node {node_id}"

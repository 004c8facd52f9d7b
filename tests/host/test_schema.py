"""Our nodes as the real host registers them (GET /object_info)."""
from __future__ import annotations

import pytest

from tests.nodes.schemas import schemas

OURS = ("CNCore_LoadControlNet", "CNCore_ApplyControlNet", "CNCore_ControlStrength", "CNCore_Preprocessor",
        "CNCore_RenderPose", "CNCore_TrainControlNet")


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.get("/object_info", timeout=120)


def test_registered_with_display_names_distinct_from_every_other_node(object_info):
    others = {info["display_name"] for name, info in object_info.items() if name not in OURS}
    for node_id in OURS:
        assert node_id in object_info
        assert object_info[node_id]["display_name"] not in others


def test_apply_has_the_host_apply_ranges(object_info):
    ours, host = object_info["CNCore_ApplyControlNet"]["input"], object_info["ControlNetApplyAdvanced"]["input"]
    for name in ("positive", "negative", "control_net", "image", "strength", "start_percent", "end_percent"):
        expected = {k: v for k, v in host["required"][name][1].items() if k != "tooltip"} \
            if len(host["required"][name]) > 1 else {}
        got = {k: v for k, v in ours["required"][name][1].items() if k != "tooltip"}
        assert ours["required"][name][0] == host["required"][name][0] and got == expected, name


def test_load_lists_the_same_files_as_the_host_loader(object_info):
    ours = object_info["CNCore_LoadControlNet"]["input"]["required"]["control_net_name"]
    host = object_info["ControlNetLoader"]["input"]["required"]["control_net_name"]
    ours_options = ours[1]["options"] if ours[0] == "COMBO" else ours[0]
    assert ours_options == host[0] and len(ours_options) >= 3
    assert object_info["CNCore_LoadControlNet"]["output"] == ["CONTROL_NET"]


@pytest.mark.parametrize("node_id", OURS)
def test_static_schema_reading_matches_the_host(object_info, node_id):
    """tests/nodes reads our schemas without a host; here that reading is checked against the real one."""
    static, live = schemas()[node_id], object_info[node_id]
    for group in ("required", "optional"):
        assert static["input_order"][group] == live["input_order"].get(group, []), f"{node_id} {group} order"
    for group in ("required", "optional"):
        for name, spec in live["input"].get(group, {}).items():
            assert static["input"][group][name][0] == spec[0], f"{node_id}.{name}"
    assert static["output"] == live["output"] and static["display_name"] == live["display_name"]

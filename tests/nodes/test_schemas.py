"""The node contract (issue 3), read statically from nodes/*.py: ids, inputs, outputs, tooltips, import rules."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodes.schemas import NODES_DIR, REPO, UNKNOWN, pack_module, schemas

CONTRACT = {  # node id -> (required inputs in order, outputs) that users' workflows depend on
    "CNCore_LoadControlNet": (["control_net_name"], ["CONTROL_NET"]),
    "CNCore_ApplyControlNet": (["positive", "negative", "control_net", "image", "strength", "start_percent", "end_percent"],
                        ["CONDITIONING", "CONDITIONING"]),
    "CNCore_ControlStrength": (["mode"], ["CONTROL_STRENGTH"]),
    "CNCore_Preprocessor": (["image", "preprocessor"], ["IMAGE", "POSE_KEYPOINT"]),
    "CNCore_RenderPose": (["pose_keypoint"], ["IMAGE"]),
    "CNCore_TrainControlNet": (["model", "vae", "positive", "dataset", "steps", "learning_rate", "batch_size",
                                "resolution", "filename"], ["STRING", "IMAGE"]),
}
HOST_APPLY_RANGES = {  # the host's ControlNetApplyAdvanced (nodes.py), which ApplyControlNet must match
    "strength": {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01},
    "start_percent": {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001},
    "end_percent": {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001},
}


def test_exactly_the_contract_nodes():
    assert set(schemas()) == set(CONTRACT)
    assert tuple(pack_module("nodes").NODE_IDS) == tuple(CONTRACT)


@pytest.mark.parametrize("node_id", CONTRACT)
def test_required_inputs_and_outputs(node_id):
    schema = schemas()[node_id]
    required, outputs = CONTRACT[node_id]
    assert schema["input_order"]["required"] == required  # everything else is optional (issue 3)
    assert schema["output"] == outputs


@pytest.mark.parametrize("node_id", CONTRACT)
def test_display_names_are_our_own(node_id):
    """Distinct from the host's built-ins ("Apply ControlNet" is taken): every one is marked "(Core)"."""
    name = schemas()[node_id]["display_name"]
    assert name.endswith("(Core)") and name != node_id


@pytest.mark.parametrize("node_id", CONTRACT)
def test_every_input_and_output_has_a_tooltip(node_id):
    schema = schemas()[node_id]
    for group in ("required", "optional"):
        for name, (_, options) in schema["input"][group].items():
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert all(schema["output_tooltips"]), f"{node_id} has an output without tooltip"
    assert schema["description"]


def test_apply_matches_the_host_apply_and_adds_only_optional_inputs():
    schema = schemas()["CNCore_ApplyControlNet"]
    for name, expected in HOST_APPLY_RANGES.items():
        _, options = schema["input"]["required"][name]
        assert {k: options[k] for k in expected} == expected, name
    optional = schema["input"]["optional"]
    assert [optional[n][0] for n in ("mask", "control_strength", "vae")] == ["MASK", "CONTROL_STRENGTH", "VAE"]
    assert optional["resize_mode"][1]["options"] == ["Crop and Resize", "Just Resize", "Resize and Fill"]
    assert optional["resize_mode"][1]["default"] == "Crop and Resize"  # the host's behaviour by default
    assert schema["output_name"] == ["positive", "negative"]


def test_control_strength_modes():
    schema = schemas()["CNCore_ControlStrength"]
    _, mode = schema["input"]["required"]["mode"]
    assert mode["options"] == ["Balanced", "My prompt is more important", "ControlNet is more important"]
    optional = schema["input"]["optional"]
    assert {k: optional["uncond_multiplier"][1][k] for k in ("default", "min", "max")} == {
        "default": 1.0, "min": 0.0, "max": 1.0}
    assert optional["base_multiplier"][1]["default"] == 0.825
    assert {"block_multipliers", "schedule"} <= set(optional)


def test_load_lists_the_host_folder():
    _, options = schemas()["CNCore_LoadControlNet"]["input"]["required"]["control_net_name"]
    assert options["options"] is UNKNOWN  # computed by the host (folder_paths), never hard-coded


def test_preprocessor_offers_every_registered_preprocessor():
    pre = pack_module("controlnet_core.preprocess")
    _, options = schemas()["CNCore_Preprocessor"]["input"]["required"]["preprocessor"]
    assert options["options"] == list(pre.PREPROCESSORS)
    names = schemas()["CNCore_Preprocessor"]["input_order"]["optional"]
    assert len(names) == len(set(names))
    for name, spec in pre.PREPROCESSORS.items():
        assert {f"{name}.{o.name}" for o in spec.options} <= set(names)
    assert {o.name for o in pre.COMMON_OPTIONS} <= set(names)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.add((node.module or "").split(".")[0])
    return out


def test_only_host_py_imports_the_host():
    host_modules = {"comfy", "folder_paths", "server", "nodes", "execution", "comfy_execution"}
    for path in sorted(NODES_DIR.rglob("*.py")):
        found = _imports(path) & host_modules
        assert not found or path.parent.name == "host", f"{path.name} imports {found}; only nodes/host/ may"
    for path in sorted((REPO / "controlnet_core").rglob("*.py")):
        assert not _imports(path) & (host_modules | {"comfy_api"}), f"{path} imports the host"


def test_root_package_imports_nothing_from_the_host():
    code = ("import sys, importlib.util, inspect\n"
            f"spec = importlib.util.spec_from_file_location('pack', {str(REPO / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(REPO)!r}])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
            "import pack.nodes, pack.nodes.inputs\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths'))\n"
            "assert not bad, bad\n"
            "assert inspect.iscoroutinefunction(m.comfy_entrypoint)\n"
            "print(m.WEB_DIRECTORY)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    web = REPO / result.stdout.strip()
    assert (web / "controlnet_core.js").is_file()

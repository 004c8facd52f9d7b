"""Load ControlNet (Core) names (issue 12): the host does not check V3 combo values (v0.3.64), so the node's
validate_inputs does; a workflow saved on Windows (`sub\\file`) or naming a unique basename loads and runs."""
from __future__ import annotations

import pytest

from tests.host.graphs import CANNY, apply, base, core_loader, sample
from tests.host.server import HostError


@pytest.fixture(scope="module")
def in_subfolder(server) -> str:
    """The canny file also reachable as controlnet/cn_sub/<name> (a second copy under a subfolder)."""
    folder = server.base / "models" / "controlnet" / "cn_sub"
    folder.mkdir(exist_ok=True)
    link = folder / "sub_canny.safetensors"
    if not link.exists():
        link.symlink_to((server.base / "models" / "controlnet" / CANNY).resolve())
    return "cn_sub/sub_canny.safetensors"


def _graph(name: str) -> dict:
    b = base()
    sample(b, *apply(b, "CNCore_ApplyControlNet", core_loader(b, name), b.positive, b.negative), "names")
    return b.graph.prompt()


@pytest.mark.parametrize("spelling", ["cn_sub\\sub_canny.safetensors", "sub_canny.safetensors"])
def test_other_separators_and_a_unique_basename_load_and_run(server, in_subfolder, spelling):
    entry = server.run(_graph(spelling))
    assert entry["status"]["status_str"] == "success"


def test_a_missing_file_names_the_folders_and_extra_model_paths(server):
    with pytest.raises(HostError) as info:
        server.queue(_graph("nowhere/missing.safetensors"))
    errors = [e for node in info.value.payload["node_errors"].values() for e in node["errors"]]
    text = " ".join(e.get("details", "") + e.get("message", "") for e in errors)
    assert "missing.safetensors" in text and "extra_model_paths.yaml" in text
    assert str(server.base / "models" / "controlnet") in text

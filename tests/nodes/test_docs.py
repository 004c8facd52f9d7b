"""docs/nodes.md states the SDXL soft-weight convention; the table there must be the code's numbers."""
from __future__ import annotations

import re

from tests.nodes.schemas import REPO, pack_module

DOC = REPO / "docs" / "nodes.md"


def _row(label: str) -> list[str]:
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"docs/nodes.md has no table row {label!r}")


def test_sdxl_soft_weight_table_is_the_code():
    weights = pack_module("controlnet_core.weights")
    documented = [float(v) for v in _row("weight")]
    expected = weights.ControlWeights(mode="prompt").block_scales(10)
    assert documented == [round(v, 4) for v in expected]
    assert documented[-1] == 1.0 and all(a < b for a, b in zip(documented, documented[1:]))


def test_documented_modes_and_resize_modes_are_the_nodes():
    text = DOC.read_text()
    weights = pack_module("controlnet_core.weights")
    inputs = pack_module("nodes.inputs")
    for label in (*weights.MODES, *inputs.RESIZE_MODES):
        assert re.search(re.escape(label), text), f"docs/nodes.md does not mention {label!r}"

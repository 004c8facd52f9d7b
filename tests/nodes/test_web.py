"""web/: one extension file, and a help page for every node (shown by the frontend's node library)."""
from __future__ import annotations

import re

from tests.nodes.schemas import REPO, schemas

WEB = REPO / "web"


def test_the_only_script_under_web_is_the_extension():
    """The host imports every .js file anywhere under the web folder as an extension (server.py)."""
    assert sorted(p.relative_to(WEB).as_posix() for p in WEB.rglob("*.js")) == ["controlnet_core.js"]
    assert {p.suffix for p in WEB.rglob("*") if p.is_file()} <= {".js", ".md", ".png", ".svg", ".webp"}


def test_every_node_has_a_help_page_naming_its_inputs():
    for node_id, schema in schemas().items():
        page = WEB / "docs" / f"{node_id}.md"
        assert page.is_file(), f"web/docs/{node_id}.md is missing"
        text = page.read_text()
        names = [n for group in ("required", "optional") for n in schema["input_order"].get(group, [])]
        for name in names:
            if "." in name:  # a preprocessor's own option: documented as <preprocessor>.<option>
                continue
            assert re.search(rf"\*\*{re.escape(name)}\*\*", text), f"{page.name} does not document {name!r}"


def test_option_hiding_reads_the_schema_route():
    script = (WEB / "controlnet_core.js").read_text()
    assert "/controlnet_core/module_list" in script and "module_detail" in script

"""The Comfy registry's rules (docs.comfy.org/registry/specifications, comfy-cli `comfy node validate`)."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from tests.nodes.schemas import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_tool_comfy_is_complete():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    icon = comfy["Icon"]
    assert icon.startswith("https://raw.githubusercontent.com/") and icon.endswith(".svg")
    assert (REPO / icon.split("/main/", 1)[1]).is_file(), "the Icon URL must point at a file of the repository"
    assert "web" not in comfy, "WEB_DIRECTORY serves web/; a [tool.comfy] web entry would load the extension twice"


def test_registry_name():
    name = PYPROJECT["project"]["name"]
    assert "comfyui" not in name.lower() and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,99}", name)
    assert PYPROJECT["project"]["urls"]["Repository"].startswith("https://")


def test_ruff_exec_eval_and_one_statement_per_line():
    """What `comfy node validate` runs before publishing: no exec (S102), no eval (S307), no `a; b` (E702)."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "S102,S307,E702",
                           "--output-format", "concise", str(REPO)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

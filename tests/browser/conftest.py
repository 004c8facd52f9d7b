"""Browser tests: the real frontend in Debian's Chromium, driven by Playwright's Python package (no browser
download: `executable_path`), against the host's pinned frontend and the newest frontend wheel.

    make test-browser      # installs chromium if missing, unpacks the newest frontend wheel, runs this folder

Environment: COMFYUI_PATH / COMFYUI_PYTHON as for tests/host; CONTROLNET_CORE_NEWEST_FRONTEND = the `static`
folder of an unpacked comfyui-frontend-package wheel (passed to the host as --front-end-root); CHROMIUM (default
/usr/bin/chromium). Screenshots land in .browser/screenshots/ (git-ignored). Every page fails its test on a
console error or page error outside the allow-list of known benign noise.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.host.assets import CHECKPOINT, CONTROLNETS, ensure_model_files
from tests.host.server import REPO, Server, comfyui_path, comfyui_python, make_base_dir
from tests.nodes.workflow_files import INPUT_DIR

REQUIRE = os.environ.get("CONTROLNET_CORE_REQUIRE_HOST") == "1"
SHOTS = REPO / ".browser" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
BENIGN = ("user.css", "userdata", "subgraphs", "comfy.templates.json", "api.comfy.org", "favicon",
          "Failed to load resource", "ERR_FAILED", "ERR_BLOCKED_BY_CLIENT", "net::ERR",
          "Cannot read properties of undefined (reading 'id')",  # FE 1.27.10 on a pre-seeded setting (research §2.4)
          "Failed to fetch jobs", "Failed to fetch queue: JobsApiError")  # newest FE asks for /api/jobs, newer than v0.3.64
FRONTENDS = ("pinned", "newest")


def _need(what: str):
    if REQUIRE:
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="session", params=FRONTENDS)
def frontend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def model_files():
    root = comfyui_path()
    if root is None:
        _need("browser tests need COMFYUI_PATH (a ComfyUI checkout)")
    return ensure_model_files(root)


@pytest.fixture(scope="session")
def host(frontend, model_files):
    """A host serving `frontend`, with the pack, the test models and the shipped example pictures."""
    extra: tuple[str, ...] = ()
    if frontend == "newest":
        root = os.environ.get("CONTROLNET_CORE_NEWEST_FRONTEND")
        if not root or not (Path(root) / "index.html").is_file():
            _need("set CONTROLNET_CORE_NEWEST_FRONTEND to an unpacked comfyui-frontend-package's static folder")
        extra = ("--front-end-root", root)
    tmp = Path(tempfile.mkdtemp(prefix=f"cncore-browser-{frontend}-"))
    base = make_base_dir(tmp, {"checkpoints": {CHECKPOINT: model_files[CHECKPOINT]},
                               "controlnet": {n: model_files[n] for n in CONTROLNETS}},
                         {p.name: p for p in INPUT_DIR.glob("*.png")})
    _openpose_weights(base / "models" / "controlnet_preprocessors" / "openpose")  # the pose example
    root = comfyui_path()
    server = Server(root=root, base=base, python=comfyui_python(root), extra_args=extra)
    try:
        server.start()
        _post_settings(server, {"Comfy.TutorialCompleted": True})  # no first-run template dialog
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _openpose_weights(folder: Path) -> None:
    """Random weights of the published body_pose_model.pth (keys and shapes as upstream)."""
    import torch

    from controlnet_core.preprocess.nets.openpose import OPENPOSE_BODY
    from tests.learned_nets import random_weights

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(random_weights(OPENPOSE_BODY), folder / "body_pose_model.pth")


def _post_settings(server: Server, settings: dict) -> None:
    import json
    import urllib.request

    req = urllib.request.Request(server.url + "/api/settings", data=json.dumps(settings).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).close()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        _need(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (make test-browser does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


class Page:
    """A loaded editor page, recording console and page errors."""

    def __init__(self, page, host: Server, frontend: str):
        self.page, self.host, self.frontend = page, host, frontend
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def real_errors(self) -> list[str]:
        return [e for e in self.errors if not any(b in e for b in BENIGN)]

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{self.frontend}_{name}.png"
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture
def editor(browser, host, frontend):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(host.url)
               else route.abort())
    wrapped = Page(page, host, frontend)
    page.goto(host.url + "/")
    page.wait_for_function("window.app && window.app.graph && window.controlnetCoreReady === true", timeout=90_000)
    try:
        yield wrapped
        assert wrapped.real_errors() == [], f"{frontend}: console errors {wrapped.real_errors()}"
    finally:
        context.close()

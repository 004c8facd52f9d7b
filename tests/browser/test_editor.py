"""The pack in the real editor (issue 12), on the host's pinned frontend and on the newest one: every workflow of
workflows/ loads and runs, the Preprocessor shows its hint, option hiding follows the preprocessor and a saved
workflow keeps hidden values, the node help pages are served where the frontend looks. Screenshots:
.browser/screenshots/<frontend>_<name>.png."""
from __future__ import annotations

import json
import time

import pytest

from tests.nodes.workflow_files import WORKFLOWS, api_pairs

PREPROCESSOR = "CNCore_Preprocessor"
SHRINK = """() => {
  // 64 px and 2 steps so two CPU cores can afford a run; the graph is otherwise as dragged
  for (const node of app.graph.nodes ?? app.graph._nodes) {
    const set = (name, value) => { const w = node.widgets?.find((w) => w.name === name); if (w) w.value = value; };
    if (node.type === "EmptyLatentImage") { set("width", 64); set("height", 64); }
    if (node.type === "KSampler") set("steps", 2);
  }
}"""
PREVIEWED = """(id) => (app.nodeOutputs?.[id]?.images?.length ?? 0) > 0"""  # the editor's per-node outputs
WIDGETS = """(id) => {
  const node = app.graph.getNodeById(id);
  return Object.fromEntries(node.widgets.map((w) => [w.name, {hidden: !!w.hidden, value: w.value}]));
}"""


def _history_count(host) -> int:
    return len(host.get("/history"))


def _wait_idle(host, before: int, timeout: float = 600.0) -> dict:
    """The newest history entry once the queue is empty and a new entry exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = host.get("/history")
        queue = host.get("/queue")
        if len(history) > before and not queue["queue_running"] and not queue["queue_pending"]:
            return list(history.values())[-1]
        time.sleep(0.5)
    raise AssertionError(f"the queued workflow did not finish within {timeout:.0f} s:\n{host.log_tail()}")


def _load(editor, name: str) -> None:
    _, ui = api_pairs()[name]
    editor.page.evaluate("async (wf) => { await app.loadGraphData(wf); }", ui)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_loads_runs_and_shows_the_hint(editor, name):
    api, _ = api_pairs()[name]
    _load(editor, name)
    editor.page.evaluate(SHRINK)
    before = _history_count(editor.host)
    editor.page.evaluate("async () => { await app.queuePrompt(0); }")
    entry = _wait_idle(editor.host, before)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    for node_id, node in api.items():
        if node["class_type"] == PREPROCESSOR:
            editor.page.wait_for_function(PREVIEWED, arg=node_id, timeout=60_000)
            images = editor.page.evaluate("(id) => app.nodeOutputs[id].images", node_id)
            assert images and all(img["type"] == "temp" for img in images), images
    editor.shot(name)


def test_switching_preprocessor_shows_only_its_options_and_saving_keeps_hidden_values(editor):
    _load(editor, "canny")
    node_id = next(int(k) for k, v in api_pairs()["canny"][0].items() if v["class_type"] == PREPROCESSOR)
    widgets = editor.page.evaluate(WIDGETS, node_id)
    assert not widgets["preprocessor"]["hidden"] and not widgets["resolution"]["hidden"]
    owned = {name: name.split(".")[0] for name in widgets if "." in name}
    assert {name for name, owner in owned.items() if not widgets[name]["hidden"]} == {
        name for name, owner in owned.items() if owner == "canny"}
    editor.page.evaluate("""(id) => {
      const node = app.graph.getNodeById(id);
      node.widgets.find((w) => w.name === "canny.low_threshold").value = 77;
      const selector = node.widgets.find((w) => w.name === "preprocessor");
      selector.value = "threshold";
      selector.callback?.(selector.value);
    }""", node_id)
    widgets = editor.page.evaluate(WIDGETS, node_id)
    visible = {name for name in owned if not widgets[name]["hidden"]}
    assert visible == {name for name, owner in owned.items() if owner == "threshold"} and visible
    assert widgets["canny.low_threshold"] == {"hidden": True, "value": 77}
    editor.shot("switched_to_threshold")
    saved = editor.page.evaluate("() => app.graph.serialize()")
    editor.page.evaluate("async () => { await app.loadGraphData({nodes: [], links: [], version: 0.4}); }")
    editor.page.evaluate("async (wf) => { await app.loadGraphData(wf); }", saved)
    widgets = editor.page.evaluate(WIDGETS, node_id)
    assert widgets["preprocessor"]["value"] == "threshold"
    assert widgets["canny.low_threshold"] == {"hidden": True, "value": 77}
    assert not widgets["threshold.threshold"]["hidden"]


def test_node_help_pages_are_served_where_the_frontend_looks(editor):
    """The frontend fetches /extensions/<folder>/docs/<node id>.md, <folder> from object_info's python_module."""
    info = editor.host.get("/object_info")
    for node_id in ("CNCore_LoadControlNet", "CNCore_ApplyControlNet", "CNCore_ControlStrength", PREPROCESSOR):
        folder = info[node_id]["python_module"].split(".", 1)[1].split("@")[0]
        reply = editor.page.evaluate("""async (url) => {
          const r = await fetch(url); return {status: r.status, text: await r.text()};
        }""", f"/extensions/{folder}/docs/{node_id}.md")
        assert reply["status"] == 200 and reply["text"].startswith("# "), node_id

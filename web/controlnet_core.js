// ControlNet Core front-end: the Preprocessor node shows only the selected preprocessor's own options.
// Which widget belongs to which preprocessor comes from the pack's schema, GET /controlnet_core/module_list
// (nodes/host/routes.py): option widgets are named "<preprocessor>.<option>"; shared options stay visible.
// Hidden widgets keep their values, so switching back restores them and saved workflows are unchanged.
// This is the only .js file under web/: the host loads every one of them as an extension.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "CNCore_Preprocessor";
let owners = null; // widget name -> preprocessor, from the schema

async function loadSchema() {
  const response = await api.fetchApi("/controlnet_core/module_list");
  if (!response.ok) throw new Error(`controlnet_core: module_list answered ${response.status}`);
  const schema = await response.json();
  const map = new Map();
  for (const [name, detail] of Object.entries(schema.module_detail)) {
    for (const option of detail.options) map.set(`${name}.${option.name}`, name);
  }
  return map;
}

function showSelectedOptions(node) {
  const selector = node.widgets?.find((w) => w.name === "preprocessor");
  if (!selector || owners === null) return;
  for (const widget of node.widgets) {
    const owner = owners.get(widget.name);
    if (owner !== undefined) widget.hidden = owner !== selector.value;
  }
  const [width] = node.size;
  const [, height] = node.computeSize();
  node.setSize([width, height]);
  node.setDirtyCanvas(true, true);
}

function watchSelector(node) {
  const selector = node.widgets?.find((w) => w.name === "preprocessor");
  if (!selector || selector.controlnetCoreWatched) return;
  selector.controlnetCoreWatched = true;
  const callback = selector.callback;
  selector.callback = function (...args) {
    const result = callback?.apply(this, args);
    showSelectedOptions(node);
    return result;
  };
}

app.registerExtension({
  name: "controlnet_core.preprocessor_options",
  async setup() {
    owners = await loadSchema();
    for (const node of app.graph?._nodes ?? []) {
      if (node.comfyClass === NODE_ID) showSelectedOptions(node);
    }
    window.controlnetCoreReady = true; // read by tests/browser
  },
  nodeCreated(node) {
    if (node.comfyClass !== NODE_ID) return;
    watchSelector(node);
    showSelectedOptions(node);
  },
  loadedGraphNode(node) {
    if (node.comfyClass !== NODE_ID) return;
    watchSelector(node);
    showSelectedOptions(node);
  },
});

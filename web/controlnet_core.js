// ControlNet Core front-end: the Preprocessor node shows only the selected preprocessor's own options.
// Option widgets are named "<preprocessor>.<option>" (nodes/options.py); shared ones have no dot and stay visible.
// Hidden widgets keep their values, so switching back restores them and saved workflows are unchanged.
import { app } from "../../scripts/app.js";

const NODE_ID = "CNCore_Preprocessor";

function ownerOf(widget) {
  const dot = widget.name.indexOf(".");
  return dot > 0 ? widget.name.slice(0, dot) : null;
}

function showSelectedOptions(node) {
  const selector = node.widgets?.find((w) => w.name === "preprocessor");
  if (!selector) return;
  for (const widget of node.widgets) {
    const owner = ownerOf(widget);
    if (owner !== null) widget.hidden = owner !== selector.value;
  }
  const [width] = node.size;
  const [, height] = node.computeSize();
  node.setSize([width, height]);
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "controlnet_core.preprocessor_options",
  nodeCreated(node) {
    if (node.comfyClass !== NODE_ID) return;
    const selector = node.widgets?.find((w) => w.name === "preprocessor");
    if (!selector) return;
    const callback = selector.callback;
    selector.callback = function (...args) {
      const result = callback?.apply(this, args);
      showSelectedOptions(node);
      return result;
    };
    showSelectedOptions(node);
  },
  loadedGraphNode(node) {
    if (node.comfyClass === NODE_ID) showSelectedOptions(node);
  },
});

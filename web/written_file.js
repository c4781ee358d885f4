// ConceptKit: show the file a Save/Export node wrote on the node itself (ComfyUI shows only images by default).
import { app } from "../../scripts/app.js";

const SHOWS_WRITTEN_FILE = new Set(["ConceptKitSaveConcept", "ConceptKitExportConcept", "ConceptKitSaveSGE",
  "ConceptKitExportMemory"]);
const WIDGET = "written";

function showWritten(node, text) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    const box = document.createElement("textarea");
    box.readOnly = true;
    box.rows = 2;
    box.style.cssText = "width:100%;font-size:11px;opacity:0.85;resize:none;background:transparent;color:inherit;border:none";
    widget = node.addDOMWidget(WIDGET, "conceptkit_written", box, { serialize: false, getValue: () => box.value,
                                                                     setValue: (v) => { box.value = v; } });
    widget.serialize = false;
    widget.inputEl = box;
  }
  widget.inputEl.value = text;
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "ConceptKit.WrittenFile",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SHOWS_WRITTEN_FILE.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const written = message?.text;
      if (written?.length) showWritten(this, "written: " + written.join("\n"));
    };
  },
});

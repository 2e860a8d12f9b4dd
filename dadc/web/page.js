// The Draw tab in the browser (dadc/web/page.py says why it exists). The events' js= in
// dadc/web/ui.py call window.dadc: latest() and next() for the live prediction, snapshot() for the
// flag, undo() and clear() for the buttons under the canvas.
(() => {
  const CANVAS = __CANVAS__;
  const $ = (selector) => document.querySelector(selector);
  let seq = 0;

  // --- Gradio's ImageEditor, as this page relies on it (Gradio 6.31; no public JS API, gradio#11488).
  // Every use of its insides goes through these functions; the browser tests fail if an upgrade
  // changes one.

  // Its Pixi application, published as globalThis.__PIXI_APP__ (a devtools hook).
  const pixiApp = () => globalThis.__PIXI_APP__;
  // The drawing: the stage's child that holds the layers (the one with sortableChildren).
  const drawing = (app) => app && app.stage && app.stage.children.find((c) => c.sortableChildren);
  // Its tools: the toolbar's buttons, the chosen one marked with the class "highlight".
  const toolButtons = () => [...document.querySelectorAll("#canvas .toolbar-wrap button")];
  const chosen = (button) => button.classList.contains("highlight");
  // Its Undo, Redo and Clear canvas: the last three icon buttons, found by place, as their labels
  // are translated into the visitor's language.
  const editorButton = (name) =>
    [...document.querySelectorAll("#canvas button.icon-button")].at({ undo: -3, clear: -1 }[name]);
  // --- end of the editor's insides

  function snapshot() {
    const app = pixiApp();
    const image = drawing(app);
    if (!image) return null;
    // the Sketchpad's own export of its composite, call for call: the same pixels, so the flag
    // (which sends this too) stores exactly the prediction the visitor saw
    const frame = new app.screen.constructor(0, 0, CANVAS, CANVAS);
    const { pixels, width, height } = app.renderer.extract.pixels({ target: image, resolution: 1, frame });
    if (app.renderer.type === 1) { // WebGL hands back premultiplied alpha; undo it as Gradio does
      for (let i = 0; i < pixels.length; i += 4) {
        const a = pixels[i + 3];
        if (a === 0 || a === 255) continue;
        for (let k = 0; k < 3; k++) pixels[i + k] = pixels[i + k] * (255 / a);
      }
    }
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    const data = ctx.createImageData(width, height);
    data.data.set(pixels);
    ctx.putImageData(data, 0, 0);
    return canvas.toDataURL("image/png");
  }

  // Ask for the prediction of the drawing as it is now: read it, and click the live event's hidden
  // button (its js= sends `latest`). The event runs always_last: a burst of strokes costs one
  // request in flight and one for the latest drawing.
  let latest = null;
  function live() {
    latest = snapshot();
    $("#dadc-live")?.click();
  }

  // The editor starts, and starts again after every clear, with no tool chosen ("select the draw
  // tool to start"): choose the brush (the toolbar's first tool) whenever no tool is chosen.
  function ready() {
    const tools = toolButtons();
    if (tools.length && !tools.some(chosen)) tools[0].click();
  }

  // Undo and clear through the editor's own buttons. Clearing through the editor works every time;
  // setting the Sketchpad's value to null does not, as that value stays null while the page draws
  // (nothing uploads it).
  function undo() {
    editorButton("undo")?.click();
    setTimeout(live, 0); // once the editor has undone
  }
  function clear() {
    editorButton("clear")?.click();
    latest = null;
  }

  function typing(target) {
    const tag = target.tagName;
    return target.isContentEditable || tag === "TEXTAREA" || tag === "SELECT" ||
      (tag === "INPUT" && !["radio", "checkbox"].includes(target.type));
  }

  // A stroke is read as soon as it ends: at its pointerup's last stop (window, bubbling), after
  // the editor has drawn it. Then the editor's render loop is stopped: it would go on rendering
  // for 0.5 s although the screen already shows the stroke, and where WebGL runs on the CPU (no
  // GPU: some VMs and laptops, CI) each frame takes ~0.2 s and the answer waits behind them
  // (measured here: 0.6-0.9 s to the answer with them, ~0.25 s without). The next pointer event
  // starts it again. A click on the editor's own tools (undo, redo, clear) is read once the
  // editor has handled it.
  let down = null;
  document.addEventListener("pointerdown", (e) => {
    down = e.target.closest?.("#canvas .pixi-target") ? "stroke" : e.target.closest?.("#canvas") ? "tool" : null;
  }, true);
  window.addEventListener("pointerup", () => {
    if (down === "stroke") {
      live();
      pixiApp()?.ticker.stop();
    } else if (down === "tool") setTimeout(live, 0);
    down = null;
  });

  // Keys on the Draw tab: 0-9 choose the true digit, Enter flags, Backspace undoes, Escape clears.
  // A held key acts once; keys typed into a text field, or with a modifier, are left alone.
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing || e.repeat || typing(e.target)) return;
    if (!$("#canvas")?.checkVisibility()) return; // another tab is shown
    if (e.key === "Enter" && e.target.tagName === "BUTTON" && e.target.id !== "flag") return; // its own
    const act = /^[0-9]$/.test(e.key) ? () => $(`#digit input[value="${e.key}"]`)?.click()
      : { Enter: () => $("#flag")?.click(), Backspace: undo, Escape: () => $("#clear")?.click() }[e.key];
    if (act) { e.preventDefault(); act(); }
  });

  new MutationObserver(() => ready()).observe(document.documentElement, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["class"] });

  window.dadc = { snapshot, latest: () => latest ?? snapshot(), next: () => ++seq, live, ready, undo, clear };
})();

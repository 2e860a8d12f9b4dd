"""Mouse-up to live prediction, in real Chromium (Debian's, driven by playwright): the time from the
release of a stroke until the prediction line under the canvas answers the drawing as it is then,
p50 and p90 over `--strokes` strokes (the digits 7 1 0 4 2 of dadc.synth.drawings, drawn over and over,
cleared after each), and the HTTP requests a stroke costs. At two sizes:

  desktop  1280x1000, mouse
  phone    390x844, touch (CDP touch events)

(both at device pixel ratio 1: with no GPU, as here, Chromium renders the editor's WebGL on the CPU,
where a phone's 3x pixels cost 9x the time per frame; a phone renders them on its GPU)

and for two paths from the drawing to the model:

  app        the app as it ships (`python app.py`): page.js reads the drawing in the browser and
             sends one PNG to a light event (dadc/page.py)
  sketchpad  the path it replaced, for comparison: the Sketchpad's change event carries its value
             (layer, background and composite uploads, then the queue) to the same Studio.predict,
             on a page with the same canvas, brush and page.js

    python benchmarks/bench_browser.py [--strokes 20] [--paths app,sketchpad] [--sizes desktop,phone]

Each path is served by its own subprocess on a fresh DADC_HOME (a temp folder); the server, the
browser and this script share the machine's cores. Needs /usr/bin/chromium and playwright.
"""
import argparse
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SIZES = {"desktop": dict(viewport={"width": 1280, "height": 1000}),
         "phone": dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)}
DIGITS = [(7, "plain"), (1, "stick"), (0, "oval"), (4, "closed"), (2, "curved")]

# the drawing's place on the screen: the editor's Pixi stage (see dadc/page.js), in CSS px
IMAGE_RECT = """() => { const app = globalThis.__PIXI_APP__;
  const b = app.stage.children.find((c) => c.sortableChildren).getBounds();
  const r = app.canvas.getBoundingClientRect();
  return {x: r.x + b.x, y: r.y + b.y, width: b.width, height: b.height}; }"""

# in the page: on each armed pointer release, the time until the line under the canvas changes
# (its data-seq names the drawing it answers)
TIMER = """() => { window.__lat = []; window.__armed = false;
  document.addEventListener('pointerup', () => {
    if (!window.__armed) return;
    window.__armed = false;
    const host = document.querySelector('#dadc-top'), seq = host.querySelector('.dadc-top')?.dataset.seq;
    const t0 = performance.now();
    const seen = new MutationObserver(() => {
      const now = host.querySelector('.dadc-top')?.dataset.seq;
      if (now !== undefined && now !== seq) { window.__lat.push(performance.now() - t0); seen.disconnect(); }
    });
    seen.observe(host, {subtree: true, childList: true, attributes: true, characterData: true});
  }, true); }"""


def image_rect(page):
    """IMAGE_RECT once the editor has settled (it fits the image to its box just after loading)."""
    last = None
    while (rect := page.evaluate(IMAGE_RECT)) != last:
        last = rect
        page.wait_for_timeout(200)
    return rect


def strokes(digit, style, rect):
    """The strokes of one dadc.synth.drawings digit, in screen px, filling the middle 60 % of the canvas."""
    from dadc.synth import drawings

    out = []
    for p in drawings.STYLES[digit][style](np.random.default_rng(digit)):
        p = np.clip(p, 0, 1)
        out.append([(rect["x"] + (0.2 + 0.6 * x) * rect["width"], rect["y"] + (0.2 + 0.6 * y) * rect["height"])
                    for x, y in p])
    return out


def resample(points, step=20.0):
    """Pointer reports every `step` px along the stroke (a browser coalesces a hand's reports into
    one per frame, and a frame takes ~0.2 s where WebGL runs on the CPU, as here)."""
    p = np.asarray(points, dtype=float)
    at = np.concatenate([[0], np.cumsum(np.hypot(*np.diff(p, axis=0).T))])
    n = max(2, int(at[-1] / step) + 1)
    s = np.linspace(0, at[-1], n)
    return list(zip(np.interp(s, at, p[:, 0]), np.interp(s, at, p[:, 1])))


def stroke(page, points, touch):
    points = resample(points)
    if touch:
        cdp = page.context.new_cdp_session(page)
        kinds = ["touchStart"] + ["touchMove"] * (len(points) - 1)
        for kind, (x, y) in zip(kinds, points):
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        cdp.detach()
    else:
        page.mouse.move(*points[0])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(x, y)
        page.mouse.up()


def measure(browser, url, size, n):
    """(latencies in ms, requests per stroke) for n strokes on a fresh page."""
    context = browser.new_context(**SIZES[size])
    page = context.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.locator("#canvas .pixi-target canvas").first.wait_for(timeout=60_000)
    page.wait_for_function("() => document.querySelector('#canvas .toolbar-wrap button.highlight')", timeout=60_000)
    page.evaluate(TIMER)
    rect = image_rect(page)
    lat, per_stroke = [], []
    for digit, style in itertools.cycle(DIGITS):
        for s in strokes(digit, style, rect):
            if len(lat) == n:
                break
            before = len(requests)
            page.evaluate("window.__armed = true")
            stroke(page, s, size == "phone")
            page.wait_for_function(f"() => window.__lat.length > {len(lat)}", timeout=30_000)
            lat.append(page.evaluate(f"window.__lat[{len(lat)}]"))
            print(f"  {size} stroke {len(lat)}: {lat[-1]:.0f} ms", file=sys.stderr, flush=True)
            page.wait_for_timeout(300)  # the 28x28 image's fetch and any late request belong to this stroke
            per_stroke.append(len(requests) - before)
        if len(lat) == n:
            break
        page.locator("#clear").click()
        page.wait_for_timeout(800)  # the sketchpad path predicts the cleared canvas too: let it land
    context.close()
    return lat, per_stroke


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_sketchpad(port):
    """The replaced path: the Sketchpad's own change event, its value uploaded and preprocessed by
    Gradio, then Studio.predict, as dadc/ui.py did before page.js."""
    import gradio as gr

    from dadc.web import components
    from dadc import config, preprocess
    from dadc.web import page
    from dadc.web import ui
    from dadc.studio.service import Studio

    studio = Studio(config.from_env())
    answers = itertools.count(1)
    with gr.Blocks() as demo:
        demo.studio = studio
        canvas = components.Canvas(canvas_size=(preprocess.CANVAS, preprocess.CANVAS), type="pil", layers=False, transforms=(),
                                   brush=gr.Brush(default_size=ui.BRUSH, colors=["#000000"], color_mode="fixed"),
                                   elem_id="canvas", height=520)
        top = gr.HTML(ui.top_line(None), elem_id="dadc-top", js_on_load=None)
        gr.ClearButton(canvas, elem_id="clear")
        label, seen = gr.Label(num_top_classes=3), gr.Image(image_mode="L", interactive=False)

        def live(value):
            said, x = studio.predict(value, "bench")
            return said, ui.seen_image(x), ui.top_line(said, next(answers))

        canvas.change(live, canvas, [label, seen, top], trigger_mode="always_last", show_progress="hidden",
                      concurrency_limit=None)
    ui.launch(demo, server_name="127.0.0.1", server_port=port, quiet=True, head=page.head(preprocess.CANVAS))


def start(path, home):
    port = free_port()
    env = {**os.environ, "DADC_HOME": str(home), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "DADC_THRESHOLD": "1000000", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("HF_TOKEN", None)
    cmd = [sys.executable, "app.py"] if path == "app" else [sys.executable, __file__, "--serve", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{path}: the server did not start")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--strokes", type=int, default=20)
    p.add_argument("--paths", default="app,sketchpad")
    p.add_argument("--sizes", default="desktop,phone")
    args = p.parse_args()
    if args.serve:
        return serve_sketchpad(args.serve)
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for path in args.paths.split(","):
            proc, url = start(path, Path(tmp) / path)
            try:
                for size in args.sizes.split(","):
                    lat, req = measure(browser, url, size, args.strokes)
                    q = statistics.quantiles(lat, n=10)
                    rows.append((path, size, len(lat), statistics.median(lat), q[8], statistics.median(req)))
                    print(f"{path:9} {size:7} p50 {rows[-1][3]:6.0f} ms  p90 {q[8]:6.0f} ms", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(20)
        browser.close()
    print("| path | size | strokes | mouse-up to prediction p50 | p90 | HTTP requests a stroke (median) |")
    print("|---|---|---|---|---|---|")
    for path, size, n, p50, p90, req in rows:
        print(f"| {path} | {size} | {n} | {p50:.0f} ms | {p90:.0f} ms | {req:.0f} |")
    print(f"\n(load average before the run's end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()

"""The product as a person uses it: real Chromium (Debian's, driven by playwright) against
`python app.py` on a tmp DADC_HOME. Draw a digit with mouse strokes, see the prediction, pick the
true digit, flag it, see the confirmation and the dashboard count go up. A screenshot of each step
is kept under the test's tmp_path (its path is printed). Skipped when chromium or playwright is
missing (CI installs chromium; `playwright install` cannot download a browser here)."""
import os
import re
from pathlib import Path

import pytest

from test_app import App, round0, stored  # noqa: F401 (fixture)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT = 60_000  # ms: generous, a shared 2-core CI machine

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


def stroke(page, box, points):
    """One mouse stroke through points given as fractions of the canvas box."""
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=12)
    page.mouse.up()


def settled(page, locator, quiet=4, limit=120):
    """The locator's text once it has stayed the same for `quiet` reads half a second apart."""
    last, same = None, 0
    for _ in range(limit):
        text = locator.inner_text().strip()
        same = same + 1 if text == last else 0
        if same >= quiet:
            break
        last = text
        page.wait_for_timeout(500)
    return text


def test_draw_predict_flag_and_see_the_dashboard(tmp_path, round0, record_property):  # noqa: F811
    shots = tmp_path / "screenshots"
    shots.mkdir()
    record_property("screenshots", str(shots))  # in the junit report, and printed (shown on failure)
    print(f"screenshots: {shots}")
    app = App(tmp_path / "home", round0, DADC_THRESHOLD="100000")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(TIMEOUT)
                page.goto(app.url)
                surface = page.locator("#canvas .pixi-target canvas").first
                surface.wait_for()

                # the dashboard before: nothing collected
                page.get_by_role("tab", name="Dashboard").click()
                page.get_by_text(re.compile(r"\b0 examples collected")).first.wait_for()
                page.get_by_role("tab", name="Draw").click()

                # draw a 7 with the mouse: the top bar, then the diagonal down
                page.locator("#canvas").get_by_role("button", name="Brush").first.click()
                surface.wait_for()
                box = surface.bounding_box()
                stroke(page, box, [(0.3, 0.25), (0.7, 0.25)])
                stroke(page, box, [(0.7, 0.25), (0.55, 0.5), (0.45, 0.8)])
                page.get_by_role("button", name="Submit").click()
                prediction = page.locator('[data-testid="label-output-value"]').first
                prediction.wait_for()
                page.wait_for_function(
                    "() => /^[0-9]$/.test((document.querySelector('[data-testid=\"label-output-value\"]')"
                    " || {}).textContent?.trim() || '')", timeout=TIMEOUT)
                said = settled(page, prediction)  # live predictions of partial strokes may still land
                page.screenshot(path=str(shots / "1-predicted.png"))

                # the true digit, then flag
                page.get_by_role("radio", name="7", exact=True).check()
                page.get_by_role("button", name=re.compile("^Flag")).click()
                confirm = page.get_by_text(re.compile(r"You fooled round 0|Saved: round 0")).first
                confirm.wait_for()
                message = confirm.inner_text()
                page.screenshot(path=str(shots / "2-flagged.png"))

                # the dashboard after: one example collected
                page.get_by_role("tab", name="Dashboard").click()
                page.get_by_role("button", name="Refresh").click()
                page.get_by_text(re.compile(r"\b1 examples collected")).first.wait_for()
                page.screenshot(path=str(shots / "3-dashboard.png"), full_page=True)
            finally:
                browser.close()
        rows = stored(app.home)
        assert len(rows) == 1 and rows[0]["label"] == 7 and rows[0]["round"] == 0
        assert f"said {rows[0]['prediction']}" in message  # the confirmation names what was stored
        print(f"the model said {said}; {message!r}; screenshots in {shots}")
    finally:
        app.stop()

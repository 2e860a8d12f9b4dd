"""The drawing experience (issue 16), in real Chromium against `python app.py` serving the shipped
round 0, as a new visitor meets it: the brush is ready (on load, after a flag, after Clear), the
live prediction comes with no Submit and no Sketchpad upload, the flag stores exactly the
prediction the visitor saw, the keys (0-9, Enter, Backspace, Escape), the feedback after a flag
(fooled or not, the visitor's running count, per identity, and a hint), and a phone's first
screen with touch drawing. Then the light path's public side with hostile input, over raw HTTP.
The PNG reader and the tally are tested directly first (no browser needed).

Browser tests skip when chromium or playwright is missing, except in CI, where they fail. Screenshots are
kept under each test's tmp_path (their folder is printed). Timing is the benchmark's job
(benchmarks/bench_browser.py), never asserted here."""
import base64
import io
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from dadc.web import page as dadc_page
from dadc.examples import Example
from dadc.preprocess import CanvasError
from dadc.studio.tally import Tally
from conftest import browser_or_skip
from test_app import App, next_address, stored

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_browser as bb  # noqa: E402  (the strokes and the canvas's place: shared with the benchmark)

CANVAS = 448
TIMEOUT = 60_000  # ms: a shared 2-core machine renders the editor's WebGL on the CPU
PHONE = dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
DIGITS = dict(bb.DIGITS)  # digit -> the dadc.drawings style the page draws


# --- the PNG the page sends: page.snapshot ------------------------------------------------------

def data_url(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, fmt)
    return ("data:image/png;base64," if fmt == "PNG" else "data:image/jpeg;base64,") + \
        base64.b64encode(buf.getvalue()).decode()


def test_snapshot_reads_the_canvas_png():
    img = Image.new("RGBA", (CANVAS, CANVAS), "white")
    got = dadc_page.snapshot(data_url(img), CANVAS)
    assert got.size == (CANVAS, CANVAS) and got.getpixel((0, 0)) == (255, 255, 255, 255)


@pytest.mark.parametrize("text, why", [
    (None, "expected a data:image/png;base64 URL"),
    (17, "expected a data:image/png;base64 URL"),
    ("hello", "expected a data:image/png;base64 URL"),
    ("data:image/png;base64,@@@@", "bad base64"),
    ("data:image/png;base64," + "A" * 2_000_000, "too long"),
    ("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"x" * 100).decode(), "not a readable PNG"),
])
def test_snapshot_refuses_what_is_not_a_canvas_png(text, why):
    with pytest.raises(CanvasError, match=re.escape(why)):
        dadc_page.snapshot(text, CANVAS)


def test_snapshot_refuses_other_sizes_and_formats_before_decoding():
    huge = data_url(Image.new("L", (5000, 5000)))  # small on the wire, 25 Mpx decoded
    with pytest.raises(CanvasError, match="5000x5000, the canvas is 448x448"):
        dadc_page.snapshot(huge, CANVAS)
    jpeg = data_url(Image.new("RGB", (CANVAS, CANVAS), "white"), "JPEG").replace("jpeg", "png", 1)
    with pytest.raises(CanvasError, match="not a readable PNG"):
        dadc_page.snapshot(jpeg, CANVAS)
    png = base64.b64decode(data_url(Image.new("RGB", (CANVAS, CANVAS), "white")).split(",")[1])
    with pytest.raises(CanvasError, match="not a readable PNG"):  # truncated: its header says 448x448
        dadc_page.snapshot(dadc_page.PREFIX + base64.b64encode(png[:len(png) // 2]).decode(), CANVAS)
    # the longest accepted text holds the worst PNG a canvas can make (noise, no compression)
    noise = Image.frombytes("RGBA", (CANVAS, CANVAS), os.urandom(CANVAS * CANVAS * 4))
    assert dadc_page.snapshot(data_url(noise), CANVAS).size == (CANVAS, CANVAS)


# --- the tally: running counts and the hint -------------------------------------------------------

def example(session, label, prediction, round_=0, time_="2020-01-01T00:00:00Z"):
    return Example(id=f"{session}-{label}-{prediction}-{time_}", label=label, prediction=prediction,
                   confidences=(0.0,) * 10, round=round_, time=time_, visitor=session, path=Path("x"),
                   canvas_path=Path("x"))


def receipt(label, prediction, round_="round-000"):
    return {"label": label, "prediction": prediction, "fooled": label != prediction, "round": round_}


def test_tally_counts_each_visitor_and_finds_what_fools_the_round():
    t = Tally()
    t.add("ann", receipt(7, 1))
    t.add("ann", receipt(7, 7))
    t.add("bob", receipt(4, 9))
    t.add("bob", receipt(4, 9))
    t.add("bob", receipt(3, 3))
    assert t.visitor("ann") == (2, 1) and t.visitor("bob") == (3, 2) and t.visitor("cy") == (0, 0)
    assert t.hint() == (0, 4, 2, 2)  # 4s: 2 of 2 fooled round 0, ahead of 7s (1 of 2)
    t.add("ann", receipt(5, 5, "round-001"))  # a new round serves: the window starts again
    assert t.hint() == (1, None, 0, 1) and t.visitor("ann") == (3, 1)


def test_tally_window_is_bounded_and_seed_never_counts_a_flag_twice():
    t = Tally(window=3)
    t.add("ann", receipt(2, 8))  # flagged through this app after the tally was made
    on_disk = [example("ann", 2, 8, time_="2000-01-01T00:00:00Z"),   # before: counted by seed()
               example("bob", 6, 6, time_="2000-01-01T00:00:01Z"),
               example("bob", 6, 0, round_=3, time_="2000-01-01T00:00:02Z"),  # another round's
               example("ann", 2, 8, time_=t.since)]  # stored by this app (the same second): add()'s
    t.seed(on_disk, 0)
    t.seed(on_disk, 0)  # once only
    assert t.visitor("ann") == (2, 2) and t.visitor("bob") == (2, 1)
    assert t.hint() == (0, 2, 2, 2)  # the window: the seeded round-0 rows, then the live one
    for _ in range(3):
        t.add("cy", receipt(9, 9))
    assert t.hint() == (0, None, 0, 3)  # only the last 3 flags count


# --- in the browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    sync_api = browser_or_skip()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=bb.CHROMIUM, args=bb.ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    a = App(tmp_path_factory.mktemp("drawux") / "home", ROOT / "models" / "round-000", DADC_THRESHOLD="100000")
    yield a
    a.stop()


@pytest.fixture
def shots(tmp_path):
    d = tmp_path / "screenshots"
    d.mkdir()
    print(f"screenshots: {d}")
    return d


def open_page(browser, app, address=None, **context):
    """A new visitor (an address of their own unless given) on a fresh page; the editor loaded."""
    ctx = browser.new_context(**(context or dict(viewport={"width": 1280, "height": 1000})),
                              extra_http_headers={"X-Forwarded-For": address or next_address()})
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT)
    page.goto(app.url)
    page.wait_for_function("() => globalThis.__PIXI_APP__ && document.querySelector('#canvas .toolbar-wrap button')")
    bb.image_rect(page)  # the editor has fitted the image to its box
    return page


@pytest.fixture
def page(browser, app):
    p = open_page(browser, app)
    yield p
    p.context.close()


def brush_ready(page):
    """The brush is the chosen tool (the toolbar's first, highlighted), with no click from us."""
    page.wait_for_function("() => document.querySelector('#canvas .toolbar-wrap button')"
                           "?.classList.contains('highlight')")
    return True


def shown_seq(page):
    return page.evaluate("() => document.querySelector('.dadc-top')?.dataset.seq")


def answered(page, act):
    """Do act(), then wait for the live prediction that answers it (the line's data-seq moves on)."""
    before = shown_seq(page)
    act()
    page.wait_for_function("(before) => document.querySelector('.dadc-top')?.dataset.seq !== before", arg=before)


def draw(page, digit, touch=False):
    """Draw a digit stroke by stroke, each time waiting for the live answer to that stroke; returns
    the top prediction then shown under the canvas (a digit, or the label's message)."""
    rect = bb.image_rect(page)
    for points in bb.strokes(digit, DIGITS[digit], rect):
        answered(page, lambda: bb.stroke(page, points, touch))
    return top(page)


def top(page):
    said = page.locator(".dadc-top .digit, .dadc-top .msg").first.inner_text().strip()
    return int(said) if said.isdigit() else said


def top_percent(page):
    return int(re.match(r"(\d+)%", page.locator(".dadc-top .sure").inner_text()).group(1))


def flag_with_keys(page, digit):
    """Press the digit, then Enter; wait for the new feedback (each one counts one more flag)."""
    page.keyboard.press(str(digit))
    assert page.locator(f'#digit input[value="{digit}"]').is_checked()
    before = page.locator("#feedback").inner_text()
    page.keyboard.press("Enter")
    page.wait_for_function("""(before) => { const t = document.querySelector('#feedback').innerText;
        return t !== before && /You fooled round|Saved: round/.test(t); }""", arg=before)
    page.wait_for_function("() => !document.querySelector('#digit input:checked')")  # reset after the flag


def blank(page, wait_s=20):
    """The drawing is (or, within wait_s, becomes) empty: no ink in the PNG the page would send.
    The canvas is cleared by its own event, next to the one that shows the feedback."""
    deadline = time.monotonic() + wait_s
    while True:
        img = dadc_page.snapshot(page.evaluate("() => dadc.snapshot()"), CANVAS).convert("L")
        if img.getextrema()[0] > 200 or time.monotonic() > deadline:
            return img.getextrema()[0] > 200
        page.wait_for_timeout(200)


@pytest.mark.slow
def test_a_new_visitor_draws_7_1_0_4_2_each_read_live_with_no_tool_and_no_submit(browser, app, shots):
    for digit in (7, 1, 0, 4, 2):
        page = open_page(browser, app)
        try:
            uploads = []
            page.on("request", lambda r: re.search(r"/upload|component_server", r.url) and uploads.append(r.url))
            assert brush_ready(page)
            assert not page.get_by_role("button", name="Submit").is_visible()
            said = draw(page, digit)
            page.screenshot(path=str(shots / f"drew-{digit}.png"))
            assert said == digit, f"drew {digit}, the live prediction says {said!r}"
            assert page.locator('[data-testid="label-output-value"]').inner_text().strip() == str(digit)
            assert uploads == []  # the Sketchpad's value never travelled: only the page's PNG did
        finally:
            page.context.close()


@pytest.mark.slow
def test_the_flag_stores_exactly_the_prediction_the_visitor_saw(page, app, shots):
    assert draw(page, 4) == 4
    # the drawing read at mouse-up (sent for the live prediction) is the drawing the editor holds
    assert page.evaluate("() => dadc.latest() === dadc.snapshot()")
    shown, percent = top(page), top_percent(page)
    before = len(stored(app.home))
    flag_with_keys(page, 9)  # say it is a 9: the model, which said 4, "was fooled"
    page.screenshot(path=str(shots / "flagged.png"))
    rows = stored(app.home)
    assert len(rows) == before + 1
    row = rows[-1]
    assert row["label"] == 9 and row["prediction"] == shown
    assert round(100 * row["confidences"][shown]) == percent
    assert f"it said {shown}" in page.locator("#feedback").inner_text()


@pytest.mark.slow
def test_keys_pick_flag_and_the_next_digit_draws_at_once(page, app, shots):
    assert draw(page, 7) == 7
    flag_with_keys(page, 7)
    assert "Not fooled. Saved: round 0 said 7" in page.locator("#feedback").inner_text()
    # the canvas is clear and ready: blank, the brush chosen, the prediction line reset
    assert blank(page) and brush_ready(page) and top(page) == "draw a digit"
    page.screenshot(path=str(shots / "after-flag.png"))
    assert draw(page, 1) == 1  # at once: no tool to pick
    flag_with_keys(page, 2)
    assert "Fooled! You fooled round 0: it said 1." in page.locator("#feedback").inner_text()
    assert blank(page) and brush_ready(page)


@pytest.mark.slow
def test_undo_and_clear_at_hand_by_button_and_key(page, app, shots):
    first, second = bb.strokes(4, DIGITS[4], bb.image_rect(page))
    answered(page, lambda: bb.stroke(page, first, False))
    one = page.evaluate("() => dadc.snapshot()")
    answered(page, lambda: bb.stroke(page, second, False))
    for undo in (lambda: page.locator("#undo").click(), lambda: page.keyboard.press("Backspace")):
        answered(page, undo)
        assert page.evaluate("() => dadc.snapshot()") == one  # the last stroke is gone...
        assert page.evaluate("() => dadc.latest()") == one  # ...and what was sent is without it
        answered(page, lambda: bb.stroke(page, second, False))  # again, for the next way to undo
    answered(page, lambda: page.keyboard.press("Backspace"))
    answered(page, lambda: page.keyboard.press("Backspace"))
    assert top(page) == "draw a digit" and blank(page) and brush_ready(page)
    for clear in (lambda: page.locator("#clear").click(), lambda: page.keyboard.press("Escape")):
        assert draw(page, 1) == 1
        clear()
        page.wait_for_function("() => document.querySelector('.dadc-top .msg')?.innerText === 'draw a digit'")
        assert blank(page) and brush_ready(page)
        assert page.locator('[data-testid="label-output-value"]').all_inner_texts() in ([], [""])  # cleared too
    page.screenshot(path=str(shots / "cleared.png"))


@pytest.mark.slow
def test_after_a_flag_the_visitor_sees_their_running_count_per_identity_and_a_hint(browser, app, shots):
    me, other = next_address(), next_address()
    first = open_page(browser, app, me)
    try:
        draw(first, 1)
        flag_with_keys(first, 8)  # a 1 said to be an 8: it fooled the model
        text = first.locator("#feedback").inner_text()
        assert "Fooled! You fooled round 0: it said 1." in text
        assert "Your flags: 1, of which 1 fooled the model." in text
        hint = re.search(r"Hint: lately, (\d)s fool round 0 most often \((\d+) of (\d+) flags?\)\.", text)
        digit, fooled, flags = map(int, hint.groups())
        # the store agrees: of this module's flags on round 0 (fewer than the window), that digit's
        # fooled the model at the highest rate (then the most often)
        rows = stored(app.home)
        score = {d: (sum(r["prediction"] != d for r in rows if r["label"] == d), sum(r["label"] == d for r in rows))
                 for d in range(10)}
        assert score[digit] == (fooled, flags)
        assert (fooled / flags, fooled) == max((f / n, f) for f, n in score.values() if f)
        first.screenshot(path=str(shots / "feedback.png"))
    finally:
        first.context.close()
    again = open_page(browser, app, me)  # the same visitor in a new session: the count goes on
    try:
        draw(again, 7)
        flag_with_keys(again, 7)
        assert "Your flags: 2, of which 1 fooled the model." in again.locator("#feedback").inner_text()
    finally:
        again.context.close()
    stranger = open_page(browser, app, other)
    try:
        draw(stranger, 7)
        flag_with_keys(stranger, 7)
        assert "Your flags: 1, of which 0 fooled the model." in stranger.locator("#feedback").inner_text()
    finally:
        stranger.context.close()


def test_a_phone_holds_the_canvas_and_the_prediction_on_its_first_screen_and_draws_by_touch(browser, app, shots):
    page = open_page(browser, app, **PHONE)
    try:
        assert brush_ready(page)
        image = bb.image_rect(page)
        assert 280 <= image["width"] <= 390 and image["x"] >= 0 and image["x"] + image["width"] <= 390, image
        assert draw(page, 1, touch=True) == 1
        assert page.evaluate("window.scrollY") == 0
        line = page.locator(".dadc-top").bounding_box()
        assert image["y"] + image["height"] <= line["y"] and line["y"] + line["height"] <= 844, (image, line)
        page.screenshot(path=str(shots / "phone.png"))
    finally:
        page.context.close()


# --- the light path's public side: hostile callers --------------------------------------------------

def private_call(app, js_marker, data):
    """Call the page's private event whose js= contains js_marker, as any HTTP client can (by its
    index in the queue); returns (success, output)."""
    config = json.load(urllib.request.urlopen(app.url + "/config", timeout=30))
    fn = next(d["id"] for d in config["dependencies"] if js_marker in (d.get("js") or ""))
    session = os.urandom(8).hex()
    body = json.dumps({"data": data, "fn_index": fn, "session_hash": session, "event_data": None,
                       "trigger_id": None}).encode()
    join = urllib.request.Request(app.url + "/gradio_api/queue/join", body, {
        "Content-Type": "application/json", "X-Forwarded-For": next_address()})
    urllib.request.urlopen(join, timeout=30).read()
    with urllib.request.urlopen(f"{app.url}/gradio_api/queue/data?session_hash={session}", timeout=60) as stream:
        for line in stream:
            if line.startswith(b"data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg.get("success"), msg.get("output")
    raise AssertionError("no answer")


HOSTILE = {"text": lambda: "hello", "none": lambda: None,
           "too long": lambda: "data:image/png;base64," + "A" * 1_500_000,
           "huge": lambda: data_url(Image.new("L", (5000, 5000))),
           "blank": lambda: data_url(Image.new("L", (CANVAS, CANVAS), 255))}


@pytest.mark.parametrize("kind, why", [
    ("text", "expected a data:image/png;base64 URL"), ("none", "expected a data:image/png;base64 URL"),
    ("too long", "too long"), ("huge", "5000x5000"),
    ("blank", None),  # a blank canvas: the live event says so (no error); the flag refuses it
])
def test_the_light_events_refuse_hostile_input_and_store_nothing(app, kind, why):
    payload = HOSTILE[kind]()
    before = len(stored(app.home))
    ok, out = private_call(app, "dadc.latest()", [payload, 1])
    if why is None:
        assert ok and "draw a digit" in json.dumps(out)
    else:
        assert not ok and why in out["error"], out
    ok, out = private_call(app, "dadc.snapshot(), d", [payload, 3])
    assert not ok and (why or "Nothing stored: draw a digit") in out["error"], out
    assert len(stored(app.home)) == before and app.proc.poll() is None

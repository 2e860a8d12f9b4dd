"""The product as a person uses it: real Chromium (Debian's, driven by playwright) against
`python app.py` on a tmp DADC_HOME. Draw a digit with mouse strokes, see the prediction, pick the
true digit, flag it, see the confirmation and the dashboard count go up. Then bad input through the
page: Undo back to an empty canvas (the label says "draw a digit"); Flag with no digit picked, Flag on
an empty canvas, a flood of flags from one session (the app runs with DADC_FLAG_LIMIT=2): each an
error toast (gr.Error), and nothing stored; Verify with nothing to verify: Yes and No disabled, and
the page says why. One app and one browser serve
the whole module; each test gets a fresh page, so a fresh Gradio session. Screenshots are kept
under each test's tmp_path (their path is printed). Skipped when chromium or playwright is
missing, except in CI, where they fail (conftest.browser_or_skip)."""
import os
import re

import pytest

from test_app import App, next_address, round0, stored  # noqa: F401 (fixture)

from conftest import CHROMIUM, browser_or_skip

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT = 60_000  # ms: generous, a shared 2-core CI machine
FLAG_LIMIT = 2  # flags a minute from one session, for the flood test
QUICK = 2  # mouse moves between stroke points where any digit will do

sync_api = browser_or_skip()


@pytest.fixture(scope="module")
def app(tmp_path_factory, round0):  # noqa: F811
    a = App(tmp_path_factory.mktemp("browser") / "home", round0, DADC_THRESHOLD="100000",
            DADC_FLAG_LIMIT=str(FLAG_LIMIT))
    yield a
    a.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, app, address=None):
    """A fresh page (its own browser context: a new Gradio session) on the app, canvas ready."""
    # each page is another visitor: the app knows visitors by address (X-Forwarded-For from loopback)
    context = browser.new_context(viewport={"width": 1280, "height": 1000},
                                  extra_http_headers={"X-Forwarded-For": address or next_address()})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    page.goto(app.url)
    page.locator("#canvas .pixi-target canvas").first.wait_for()
    return page


@pytest.fixture
def page(browser, app):
    p = open_page(browser, app)
    yield p
    p.context.close()


@pytest.fixture
def shots(tmp_path, record_property):
    d = tmp_path / "screenshots"
    d.mkdir()
    record_property("screenshots", str(d))  # in the junit report, and printed (shown on failure)
    print(f"screenshots: {d}")
    return d


def stroke(page, box, points, steps=12):
    """One mouse stroke through points given as fractions of the canvas box; `steps` mouse moves
    from one point to the next (each costs a redraw: about 0.3 s on a busy 2-core machine)."""
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=steps)
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


PREDICTION = '[data-testid="label-output-value"]'


def draw_seven(page, steps=12):
    """Draw a 7 with the mouse (the top bar, then the diagonal down) and wait until the live
    prediction shows a digit: the page has read the drawing. steps=QUICK draws the
    same 7 with straight segments, 6x faster, for the tests that only need some digit."""
    surface = page.locator("#canvas .pixi-target canvas").first  # the brush is ready: no tool to pick
    surface.wait_for()
    box = surface.bounding_box()
    stroke(page, box, [(0.3, 0.25), (0.7, 0.25)], steps)
    stroke(page, box, [(0.7, 0.25), (0.55, 0.5), (0.45, 0.8)], steps)
    page.wait_for_function(
        f"() => /^[0-9]$/.test((document.querySelector('{PREDICTION}') || {{}}).textContent?.trim() || '')",
        timeout=TIMEOUT)


def pick(page, digit):
    page.get_by_role("radio", name=str(digit), exact=True).check()


def press_flag(page):
    page.get_by_role("button", name=re.compile("^Flag")).click()


def error_toast(page, text):
    """The text of the error toast (gr.Error) that contains `text` (a str or a regex), once shown."""
    toast = page.locator('[data-testid="toast-text"].error').filter(has_text=text).first
    toast.wait_for()
    return toast.inner_text().strip()


def confirmation(page):
    return page.get_by_text(re.compile(r"You fooled round 0|Saved: round 0")).first


def wait_until_flag_is_done(page):
    """After a stored flag, the page shows the receipt and resets the true digit."""
    confirmation(page).wait_for()
    page.wait_for_function("() => !document.querySelector('input[type=radio]:checked')", timeout=TIMEOUT)


def ids(home):
    return [r["id"] for r in stored(home)]


@pytest.mark.slow
def test_draw_predict_flag_and_see_the_dashboard(page, app, shots):
    before = len(stored(app.home))
    # the dashboard before
    page.get_by_role("tab", name="Dashboard").click()
    page.get_by_text(re.compile(rf"\b{before} examples? collected")).first.wait_for()
    page.get_by_role("tab", name="Draw").click()

    draw_seven(page)  # predicted live: no Submit
    prediction = page.locator(PREDICTION).first
    said = settled(page, prediction)  # live predictions of partial strokes may still land
    assert re.fullmatch(r"[0-9]", said), said
    page.screenshot(path=str(shots / "1-predicted.png"))

    # the true digit, then flag
    pick(page, 7)
    press_flag(page)
    confirm = confirmation(page)
    confirm.wait_for()
    message = confirm.inner_text()
    page.screenshot(path=str(shots / "2-flagged.png"))

    # the dashboard after: one more example collected
    page.get_by_role("tab", name="Dashboard").click()
    page.get_by_text(re.compile(rf"\b{before + 1} examples? collected")).first.wait_for()  # as the tab opens
    page.screenshot(path=str(shots / "3-dashboard.png"), full_page=True)

    rows = stored(app.home)
    assert len(rows) == before + 1 and rows[-1]["label"] == 7 and rows[-1]["round"] == 0
    assert f"said {rows[-1]['prediction']}" in message  # the confirmation names what was stored
    print(f"the model said {said}; {message!r}; screenshots in {shots}")


# --- bad input through the page ------------------------------------------------------------------

def test_undo_to_an_empty_canvas_says_draw_a_digit(page, app, shots):
    draw_seven(page, QUICK)
    for _ in range(2):  # both strokes, with the Undo under the canvas
        page.locator("#undo").click()
    page.wait_for_function(
        f"() => (document.querySelector('{PREDICTION}') || {{}}).textContent?.trim() === 'draw a digit'",
        timeout=TIMEOUT)
    page.screenshot(path=str(shots / "empty-undo.png"))
    assert page.locator('[data-testid="toast-text"]').count() == 0  # a message in the label, not an error


def test_flag_with_no_true_digit_picked_is_refused(page, app, shots):
    before = ids(app.home)
    draw_seven(page, QUICK)
    press_flag(page)
    assert error_toast(page, "Pick the true digit first.") == "Pick the true digit first."
    page.screenshot(path=str(shots / "no-digit.png"))
    assert ids(app.home) == before
    assert not confirmation(page).is_visible()


def test_flag_of_a_blank_canvas_is_refused(page, app, shots):
    before = ids(app.home)
    pick(page, 3)
    press_flag(page)
    text = error_toast(page, "Nothing stored: draw a digit")
    page.screenshot(path=str(shots / "blank-flag.png"))
    assert text.startswith("Nothing stored: draw a digit"), text
    assert ids(app.home) == before
    assert not confirmation(page).is_visible()


@pytest.mark.slow
def test_a_flood_of_flags_from_one_session_is_refused_after_the_limit(page, browser, app, shots):
    """DADC_FLAG_LIMIT=2: the first two flags of this page's session are stored, the third within
    the minute gets the "too many flags" toast and is not stored; another session is not held back."""
    before = ids(app.home)
    for n in range(FLAG_LIMIT):
        draw_seven(page, QUICK)
        pick(page, 7)
        press_flag(page)
        wait_until_flag_is_done(page)
        assert len(ids(app.home)) == len(before) + n + 1
    stored_two = ids(app.home)
    draw_seven(page, QUICK)
    pick(page, 7)
    press_flag(page)
    text = error_toast(page, "too many flags")
    page.screenshot(path=str(shots / "flood.png"))
    assert re.fullmatch(rf"Nothing stored: too many flags from this session \(at most {FLAG_LIMIT} a minute\)\. "
                        r"Try again in \d+ s\.", text), text
    assert ids(app.home) == stored_two
    new = [r for r in stored(app.home) if r["id"] not in before]
    assert len(new) == FLAG_LIMIT and len({r["session"] for r in new}) == 1

    other = open_page(browser, app)  # another person (a new session) still flags
    try:
        draw_seven(other, QUICK)
        pick(other, 7)
        press_flag(other)
        wait_until_flag_is_done(other)
    finally:
        other.context.close()
    rows = stored(app.home)
    assert len(rows) == len(stored_two) + 1 and rows[-1]["session"] != new[0]["session"]


def test_verify_with_nothing_to_verify_disables_yes_and_no_and_says_so(browser, app, shots):
    """Yes and No answer only an example on the screen: with none left for this visitor (their own
    flags are never shown; the others they have voted on), they are disabled and the page says so."""
    me = next_address()
    c = app.client(me)
    while (ex := c.predict(api_name="/verify_next")[4]) and ex.get("id"):  # vote on all the others' flags
        c.predict(ex["id"], True, None, api_name="/verify")
    votes = sorted((app.home / "flags" / "data").glob("*/votes.jsonl"))
    before = [p.read_bytes() for p in votes]
    page = open_page(browser, app, me)
    try:
        page.get_by_role("tab", name="Verify").click()  # it looks for an example as it opens
        page.get_by_text("Nothing to verify right now").wait_for()
        page.locator("#yes[disabled]").wait_for()
        assert page.locator("#no").is_disabled()
        page.screenshot(path=str(shots / "verify-nothing.png"))
        assert page.locator('[data-testid="toast-text"]').count() == 0
    finally:
        page.context.close()
    assert sorted((app.home / "flags" / "data").glob("*/votes.jsonl")) == votes
    assert [p.read_bytes() for p in votes] == before  # no vote recorded

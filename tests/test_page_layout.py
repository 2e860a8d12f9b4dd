"""The page as it looks (issue 27), in real Chromium against `python app.py`, at a laptop's 1280x800
and a phone's 390x844: every tab (Draw before and after a prediction and after a flag, Verify,
Dashboard with flags and a promoted round) is checked by the page's own geometry, not by eye:
nothing visible runs past the screen's right edge, no visible text is cut (a box narrower than
its text, a table header broken inside a word, a plot title past its plot), the Draw tab's
controls (canvas, Undo, Clear, the digit picker, Flag) do not overlap and, at 1280x800, all fit
the first screen, and Flag stays where it is when the first prediction comes. Screenshots of
every state are kept (their folder is printed).

Also here, each without a browser where it can be: a refused request is no traceback in the
server's log; the take-back button answers only its own session's flag; the robustness plot
plots one protocol; the feedback's wording.

The round the dashboard shows is written before the app starts (round-001: round-000's weights,
with the metrics and history a promoted round has), so no training runs here."""
import json
import re
import shutil
import urllib.request
import uuid

import pytest

from test_app import App, next_address, stored
from test_draw_ux import ROOT, blank, browser, draw, open_page, shots  # noqa: F401 (browser, shots: fixtures)

DESKTOP = dict(viewport={"width": 1280, "height": 800})
PHONE = dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
SIZES = {"1280x800": DESKTOP, "390x844": PHONE}

# the gate's protocol, as rounds/retrain.py records it: round-000's reference and round-001's own numbers
SETTINGS = {"val_n": 5000, "robust_n": 1000, "eps": 0.3, "robust_steps": 10, "seed": 0}
REFERENCE = {"round": "round-000", "val_clean_acc": 0.9905, "val_robust_acc": 0.951, "settings": SETTINGS}
ROUND1 = {"clean_acc": 0.99, "robust_acc": 0.95, "val_clean_acc": 0.9911, "val_robust_acc": 0.953,
          "human_acc": None, "human_n": 0, "reference": REFERENCE,
          "matrix_row": {"round-000": {"n": 2, "acc": 0.5}}}
ATTEMPT = {"time": "2026-01-01T00:00:00Z", "event": "attempt", "attempt": 1, "base": "round-000", "claimed": 0,
           "passed": True, "round": "round-001", "reasons": [], "notes": [], "reference": REFERENCE,
           "candidate": ROUND1, "seconds": 12.5}


def seed_rounds(home):
    """round-000 as shipped and round-001 (the same weights) as if a gate had promoted it."""
    rounds = home / "rounds"
    for name in ("round-000", "round-001"):
        shutil.copytree(ROOT / "models" / "round-000", rounds / name)
    (rounds / "round-001" / "metrics.json").write_text(json.dumps(ROUND1))
    (rounds / "history.jsonl").write_text(json.dumps(ATTEMPT) + "\n")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    home = tmp_path_factory.mktemp("layout") / "home"
    seed_rounds(home)
    a = App(home, ROOT / "models" / "round-000", DADC_THRESHOLD="100000")
    yield a
    a.stop()


# --- what the page's geometry says -----------------------------------------------------------------

# Problems, as sentences: an element (or the part of it its scrolling ancestors leave visible) past
# the screen's edges; text cut by its box (wider than a box that hides its overflow, or past a
# hiding ancestor); a word broken across lines in a header, label or button; an SVG text (a plot's
# title, labels, legend) past its plot.
PROBLEMS = """() => {
  const W = document.documentElement.clientWidth, out = [];
  const name = (e) => e.id ? '#' + e.id : e.tagName.toLowerCase() +
    (typeof e.className === 'string' && e.className.trim() ? '.' + e.className.trim().split(/\\s+/)[0] : '');
  const where = (e) => { const p = []; for (let a = e; a && a !== document.body && p.length < 4; a = a.parentElement) p.unshift(name(a)); return p.join(' > '); };
  const text = (e) => [...e.childNodes].filter((n) => n.nodeType === 3 && n.textContent.trim());
  const clips = new Map();  // element -> [left, right] its overflow-clipping ancestors leave visible
  const clip = (e) => {
    if (!e || e === document.documentElement) return [-Infinity, Infinity];
    if (clips.has(e)) return clips.get(e);
    let [l, r] = clip(e.parentElement);
    if (getComputedStyle(e).overflowX !== 'visible') { const b = e.getBoundingClientRect(); l = Math.max(l, b.left); r = Math.min(r, b.right); }
    clips.set(e, [l, r]);
    return [l, r];
  };
  if (document.documentElement.scrollWidth > W + 1) out.push(`the page scrolls sideways: ${document.documentElement.scrollWidth} px > ${W}`);
  for (const e of document.body.querySelectorAll('*')) {
    if (!e.checkVisibility({ visibilityProperty: true, opacityProperty: true })) continue;
    const b = e.getBoundingClientRect();
    if (b.width <= 1 || b.height <= 1) continue;  // nothing, or a screen reader's 1 px text
    const [l, r] = clip(e.parentElement);
    const left = Math.max(b.left, l), right = Math.min(b.right, r);
    if (right - left < 1) continue;  // scrolled out of sight inside a scroller: not on the screen
    if (right > W + 1 || left < -1) out.push(`past the screen's edge: ${where(e)} [${Math.round(left)}, ${Math.round(right)}]`);
    const words = text(e);
    if (!words.length) continue;
    const style = getComputedStyle(e);
    if (style.overflowX !== 'visible' && style.overflowX !== 'auto' && style.overflowX !== 'scroll' && e.scrollWidth > e.clientWidth + 1)
      out.push(`text cut by its box: ${where(e)} "${e.textContent.trim().slice(0, 40)}"`);
    const ink = words.map((n) => { const q = document.createRange(); q.selectNodeContents(n); return q.getBoundingClientRect(); });
    if (ink.some((q) => q.width > 0 && (q.left < l - 1 || q.right > r + 1))) {
      const scroller = (a) => a && (['auto', 'scroll'].includes(getComputedStyle(a).overflowX) || scroller(a.parentElement));
      if (!scroller(e.parentElement)) out.push(`text cut by an ancestor: ${where(e)} "${e.textContent.trim().slice(0, 40)}"`);
    }
    if (e.closest('th, label, button, [role=tab], h1, h2, h3')) {
      for (const node of words) {
        for (const m of node.textContent.matchAll(/\\S+/g)) {
          const range = document.createRange();
          range.setStart(node, m.index);
          range.setEnd(node, m.index + m[0].length);
          const lines = new Set([...range.getClientRects()].filter((q) => q.width > 0).map((q) => Math.round(q.top)));
          if (lines.size > 1) out.push(`a word broken across lines: ${where(e)} "${m[0]}"`);
        }
      }
    }
  }
  for (const t of document.querySelectorAll('svg text')) {
    if (!t.checkVisibility() || !t.textContent.trim()) continue;
    const b = t.getBoundingClientRect(), box = t.closest('.block')?.getBoundingClientRect() || t.ownerSVGElement.getBoundingClientRect();
    if (b.left < box.left - 1 || b.right > box.right + 1) out.push(`plot text past its plot: "${t.textContent.trim()}"`);
  }
  return [...new Set(out)];
}"""


def problems(page):
    return page.evaluate(PROBLEMS)


CONTROLS = {"canvas": "#canvas", "Undo": "#undo", "Clear": "#clear", "digit picker": "#digit", "Flag": "#flag"}


def boxes(page):
    return {name: page.locator(sel).first.bounding_box() for name, sel in CONTROLS.items()}


def overlap(a, b):
    w = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    return w > 0.5 and h > 0.5


def check_controls(page, size):
    """The Draw tab's controls: none on another; at 1280x800 all on the first screen."""
    got = boxes(page)
    names = list(got)
    clash = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if overlap(got[a], got[b])]
    assert not clash, (clash, got)
    if size == "1280x800":
        assert page.evaluate("scrollY") == 0
        below = {n: b for n, b in got.items() if b["y"] < 0 or b["y"] + b["height"] > 800}
        assert not below, f"below the first screen at 1280x800: {below}"
    return got


def tab(page, name):
    page.get_by_role("tab", name=name).click()


def flag_via_api(app, address, digit=7):
    """One flag from another visitor, through /flag (no browser): a drawn 7, said to be `digit`."""
    from gradio_client import Client, handle_file

    import numpy as np

    from dadc.synth import drawings

    path = app.home.parent / f"seven-{uuid.uuid4().hex[:6]}.png"
    drawings.digit(7, np.random.default_rng(1))[0].save(path)
    c = Client(app.url, verbose=False, headers={"X-Forwarded-For": address})
    return c.predict({"background": handle_file(str(path)), "layers": [], "composite": None}, digit, api_name="/flag")


@pytest.mark.slow
@pytest.mark.parametrize("size", list(SIZES))
def test_every_tab_fits_the_screen_with_nothing_cut(browser, app, shots, size):  # noqa: F811
    flag_via_api(app, next_address(), 1)  # someone else's flag: the Verify tab has one to show
    page = open_page(browser, app, **SIZES[size])
    try:
        report = {}
        before = check_controls(page, size)
        report["draw"] = problems(page)
        page.screenshot(path=str(shots / f"{size}-1-draw.png"))

        draw(page, 7, touch=size == "390x844")
        after = check_controls(page, size)
        assert after["Flag"]["y"] == before["Flag"]["y"], "Flag moved when the first prediction came"
        report["predicted"] = problems(page)
        page.screenshot(path=str(shots / f"{size}-2-predicted.png"))

        page.locator('#digit input[value="3"]').check()
        page.locator("#flag").click()
        page.locator("#take-back").wait_for()
        assert blank(page)
        check_controls(page, size)
        report["flagged"] = problems(page)
        page.screenshot(path=str(shots / f"{size}-3-flagged.png"), full_page=True)

        tab(page, "Verify")
        page.locator("#yes:not([disabled])").wait_for()  # an example loaded as the tab opened
        report["verify"] = problems(page)
        page.screenshot(path=str(shots / f"{size}-4-verify.png"), full_page=True)

        tab(page, "Dashboard")
        page.get_by_text("Serving round-001").first.wait_for()
        page.locator(".dadc-gallery img").first.wait_for()
        page.wait_for_timeout(1500)  # the plots draw their SVG after their data came
        report["dashboard"] = problems(page)
        page.screenshot(path=str(shots / f"{size}-5-dashboard.png"), full_page=True)
        assert not any(report.values()), json.dumps(report, indent=1)
    finally:
        page.context.close()


# --- the Draw tab -----------------------------------------------------------------------------------

def test_the_pad_shows_no_pan_zoom_eraser_or_palette_and_no_keys_on_a_phone(browser, app, shots):  # noqa: F811
    page = open_page(browser, app, **DESKTOP)
    try:
        shown = page.evaluate("""() => [...document.querySelectorAll('#canvas button, #canvas .zoom-number')]
            .filter((e) => e.checkVisibility()).map((e) => e.getAttribute('aria-label') || e.textContent.trim())""")
        assert shown == ["Undo", "Redo", "Clear canvas"], shown
        assert page.locator("#keys").is_visible()
        page.screenshot(path=str(shots / "pad.png"))
    finally:
        page.context.close()
    phone = open_page(browser, app, **PHONE)
    try:
        assert not phone.locator("#keys").is_visible()  # no keyboard on a touch screen
    finally:
        phone.context.close()


@pytest.mark.slow
def test_after_a_flag_the_drawing_shows_small_and_can_be_taken_back(browser, app, shots):  # noqa: F811
    page = open_page(browser, app, **DESKTOP)
    try:
        assert draw(page, 7) == 7
        before = len(stored(app.home))
        page.locator('#digit input[value="7"]').check()  # right, and sure: still kept, and it says so
        page.locator("#flag").click()
        page.locator("#take-back").wait_for()
        text = page.locator("#feedback").inner_text()
        assert "as you did. It is kept as a drawing the model reads right and counts toward the next round." in text
        assert "Your flags: 1," in text and re.search(r"round\. \d+ more until the next round\.", text), text
        assert page.locator("#last-pic img").evaluate(
            "(i) => i.naturalWidth > 0 && i.getBoundingClientRect().width === 72 && i.getBoundingClientRect().height === 72")
        page.screenshot(path=str(shots / "flagged.png"))
        row = stored(app.home)[-1]
        assert len(stored(app.home)) == before + 1
        page.locator("#take-back").click()
        page.get_by_text("Taken back.").wait_for()
        assert not page.locator("#take-back").is_visible()
        page.screenshot(path=str(shots / "taken-back.png"))
        votes = [json.loads(line) for f in (app.home / "flags" / "data").glob("*/votes.jsonl")
                 for line in f.read_text().splitlines()]
        assert {"id": row["id"], "session": row["session"], "agree": False}.items() <= votes[-1].items()
    finally:
        page.context.close()


def test_the_flag_answers_in_one_step_with_no_progress_timer(app):
    """The feedback and the cleared canvas come together (one event, its outputs all at once), and
    Gradio's timer is not shown over the old feedback while a flag is stored."""
    config = json.load(urllib.request.urlopen(app.url + "/config", timeout=30))
    flag = next(d for d in config["dependencies"] if "dadc.snapshot(), d" in (d.get("js") or ""))
    assert flag["show_progress"] == "hidden"
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    assert {"feedback", "last-pic", "dadc-last", "digit", "dadc-top"} <= {ids.get(o) for o in flag["outputs"]}
    clear = next(d for d in config["dependencies"] if (d.get("js") or "").strip() == "() => { dadc.clear(); }")
    assert clear["trigger_after"] == flag["id"] and clear["trigger_only_on_success"]  # the canvas, after them


def private_call(app, elem_id, data, session=None, address=None):
    """Click the page's button `elem_id` as a script can (its event by index, in a session of its
    own): (success, output or error)."""
    config = json.load(urllib.request.urlopen(app.url + "/config", timeout=30))
    button = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == elem_id)
    fn = next(d["id"] for d in config["dependencies"] if [button, "click"] in d["targets"])
    session = session or uuid.uuid4().hex
    body = json.dumps({"data": data, "fn_index": fn, "session_hash": session, "event_data": None,
                       "trigger_id": button}).encode()
    join = urllib.request.Request(app.url + "/gradio_api/queue/join", body, {
        "Content-Type": "application/json", "X-Forwarded-For": address or next_address()})
    urllib.request.urlopen(join, timeout=30).read()
    with urllib.request.urlopen(f"{app.url}/gradio_api/queue/data?session_hash={session}", timeout=60) as stream:
        for line in stream:
            if line.startswith(b"data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg.get("success"), msg.get("output")
    raise AssertionError("no answer")


def test_take_it_back_answers_only_the_flag_of_its_own_session(app):
    """The button sends no id: the flag's id stays on the server, in the session that flagged. So
    another session (another visitor, or a script) has nothing to take back; an id sent along is
    not read. The flag stays in, not retracted."""
    r = flag_via_api(app, next_address())
    ok, out = private_call(app, "take-back", [r["id"]])
    assert not ok and "Nothing to take back" in out["error"], out
    votes = [line for f in (app.home / "flags" / "data").glob("*/votes.jsonl") for line in f.read_text().splitlines()]
    assert not any(r["id"] in line for line in votes)


def test_a_refused_request_prints_no_traceback_in_the_server_log(app):
    """A visitor's mistake is an error for them and at most one line in the server's log."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    c = Client(app.url, verbose=False, headers={"X-Forwarded-For": next_address()})
    mistakes = [("Pick the true digit first.", lambda: flag_via_api(app, next_address(), None)),
                ("No flagged example with id", lambda: c.predict("no-such-id", api_name="/retract")),
                ("The right digit (0-9) goes only with a 'no' vote.", lambda: c.predict(
                    flag_via_api(app, next_address())["id"], True, 3, api_name="/verify"))]
    for message, call in mistakes:
        with pytest.raises(AppError, match=re.escape(message)):
            call()
    for elem_id, data, message in (("yes", ["", None], "Press Next first."),
                                   ("save-nick", ["admin"], "'admin' is a word the studio uses: pick another nickname.")):
        ok, out = private_call(app, elem_id, data)
        assert not ok and out["error"] == message
        mistakes.append((message, None))
    log = (app.home / "app.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    for message, _ in mistakes:
        assert log.count(message) <= 1


# --- the Verify tab ---------------------------------------------------------------------------------

def vote_on_everything(app, address):
    """This visitor votes on every flag they may: then there is nothing left for them to verify."""
    from gradio_client import Client

    c = Client(app.url, verbose=False, headers={"X-Forwarded-For": address})
    while (ex := c.predict(api_name="/verify_next")[4]) and ex.get("id"):
        c.predict(ex["id"], True, None, api_name="/verify")


@pytest.mark.slow
def test_verify_loads_an_example_as_it_opens_and_disables_yes_no_when_there_is_none(browser, app, shots):  # noqa: F811
    me = next_address()
    flag_via_api(app, next_address(), 4)
    page = open_page(browser, app, me, **DESKTOP)
    try:
        tab(page, "Verify")
        page.get_by_text("Is this a").wait_for()  # loaded with no Next
        page.locator("#yes:not([disabled])").wait_for()
        assert page.locator("#no").is_enabled()
        page.screenshot(path=str(shots / "verify-loaded.png"))
        vote_on_everything(app, me)
        page.get_by_role("button", name="Next").click()
        page.get_by_text("Nothing to verify right now").wait_for()
        page.locator("#yes[disabled]").wait_for()
        assert page.locator("#no").is_disabled()
        page.screenshot(path=str(shots / "verify-nothing.png"))
    finally:
        page.context.close()


# --- the Dashboard ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_dashboard_counts_are_fresh_when_it_opens_and_empty_parts_say_so(browser, app, shots):  # noqa: F811
    page = open_page(browser, app, **DESKTOP)
    try:
        tab(page, "Dashboard")
        status = page.get_by_text("Serving round-001").first
        status.wait_for()
        n = len(stored(app.home))
        assert f"{n} example{'s' * (n != 1)} collected" in status.inner_text()
        assert "HF_TOKEN" in page.locator("body").inner_text() and "&#" not in page.locator("body").inner_text()
        tab(page, "Draw")
        flag_via_api(app, next_address(), 2)
        tab(page, "Dashboard")  # no Refresh: opening the tab counts the new flag
        page.get_by_text(f"{n + 1} example{'s' * (n != 0)} collected").first.wait_for(timeout=10_000)
        assert page.get_by_text("Nobody is on the leaderboard yet.").is_visible()
        assert "anonymous visitors only under a nickname" in page.locator("body").inner_text()
        # the gallery: small thumbnails, each drawing whole, in a grid that wraps
        sizes = page.locator(".dadc-gallery img").evaluate_all(
            "(imgs) => imgs.map((i) => { const b = i.getBoundingClientRect(); "
            "return [b.width, b.height, getComputedStyle(i).objectFit]; })")
        assert sizes and all(s == [72, 72, "contain"] for s in sizes), sizes
        # one protocol per series, named; the rounds as whole numbers, once each
        assert page.get_by_text("The gate's protocol for every round").is_visible()
        ticks = page.locator('#accuracy svg g[aria-label^="X-axis"] .role-axis-label text').evaluate_all(
            "(texts) => texts.map((t) => t.textContent)")
        page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
        assert "0" in ticks and "1" in ticks and len(ticks) == len(set(ticks)), ticks
    finally:
        page.context.close()


def test_the_robustness_plot_plots_the_gates_protocol_for_every_round(tmp_path):
    """Round-000's recorded PGD-40 on 10,000 test images is not plotted next to the gate's PGD-10
    numbers of later rounds: round-000's gate reference is."""
    from dadc.rounds.registry import Registry
    from dadc.studio.dashboard import accuracy

    seed_rounds(tmp_path)
    rows, protocol = accuracy(Registry(tmp_path))
    assert {(r["round"], r["metric"]): r["accuracy"] for r in rows} == {
        (0, "clean"): 0.9905, (0, "PGD-10, ε 0.3"): 0.951, (1, "clean"): 0.9911, (1, "PGD-10, ε 0.3"): 0.953}
    assert protocol.startswith("The gate's protocol for every round") and "first 1,000" in protocol
    fresh = tmp_path / "fresh"  # before any gate: round-000's own evaluation, named as such
    rows, protocol = accuracy(Registry(fresh, ROOT / "models" / "round-000"))
    assert {r["metric"] for r in rows} == {"clean", "PGD-40, ε 0.3"} and "own evaluation" in protocol


def test_the_feedback_words_a_count_of_one_and_joins_sentences():
    from dadc.web.ui import feedback_text

    r = {"fooled": False, "message": "Saved: round 0 said 7 (100% sure), as you did. A new round is training now."}
    one = feedback_text(r, 1, 0, (0, None, 0, 1), 0)
    assert "The last flag did not fool round 0" in one and "last 1 flag" not in one
    assert "None of the last 2 flags fooled round 0" in feedback_text(r, 2, 0, (0, None, 0, 2), 0)
    assert "(1 of 1 flag)" in feedback_text(r, 1, 1, (0, 3, 1, 1), 0)


def test_dashboard_counts_include_the_latest_flag_and_scan_at_most_once_a_refresh(monkeypatch):
    """A visitor who flags and opens the dashboard sees the flag counted (the request waits for the
    scan that catches up), and a stream of changes still costs one scan a REFRESH_S."""
    import time

    from dadc.studio import dashboard

    scans = []

    class Store:
        v = 0

        def version(self):
            return self.v

    monkeypatch.setattr(dashboard, "REFRESH_S", 0.3)
    monkeypatch.setattr(dashboard, "_count", lambda store, cfg: scans.append(time.monotonic()) or {"v": store.v})
    store = Store()
    counts = dashboard.Counts(store, None)
    assert counts.get() == {"v": 0}
    assert counts.get() == {"v": 0} and len(scans) == 1  # unchanged: no scan
    for v in range(1, 4):
        store.v = v
        assert counts.get() == {"v": v}  # fresh, not the value before the change
    gaps = [b - a for a, b in zip(scans, scans[1:])]
    assert len(scans) == 4 and min(gaps) >= 0.29, gaps


def test_the_receipt_is_whole_sentences_and_says_what_a_right_flag_does():
    from types import SimpleNamespace

    from dadc.studio.service import receipt

    training = SimpleNamespace(pending=lambda: (3, 0), running=True, enabled=True)
    waiting = SimpleNamespace(pending=lambda: (1, 2), running=False, enabled=True)
    remote = SimpleNamespace(pending=lambda: (1, 2), running=False, enabled=False)  # DADC_TRAINER=remote
    cfg = SimpleNamespace(verified_only=False)
    assert receipt(training, cfg, "round-002", 7, 7, 1.0) == (
        "Saved: round 2 said 7 (100% sure), as you did. It is kept as a drawing the model reads right and "
        "counts toward the next round. A new round is training now.")
    assert receipt(waiting, cfg, "round-002", 7, 1, 0.6) == "You fooled round 2: it said 1. 2 more until the next round."
    said = receipt(waiting, SimpleNamespace(verified_only=True), "round-002", 7, 7, 0.9)
    assert "counts toward the next round once verified. 2 more verified until the next round." in said
    assert receipt(remote, cfg, "round-002", 7, 1, 0.6) == (
        "You fooled round 2: it said 1. The trainer takes it into a coming round.")

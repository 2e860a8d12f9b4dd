"""The Gradio page: draw a digit, see what the model says, flag it when it is wrong, verify other
people's flags, and watch the rounds on the dashboard. The work is done by service.Studio, asked
through its own methods only (never its store or model); this file lays the page out tab by tab,
each event wired under its widgets (a tab's larger groups of events in a function of their own:
flag_events, api_events, admin_events), and turns the Studio's errors into Gradio's in one
place (shown(), through bounds.refused: a refusal is one log line, never a traceback).

API (gradio_client): /predict (Sketchpad value -> gr.Label value), /flag (Sketchpad value, digit ->
{"id", "saved", ...}), /verify_next and /verify (Dynabench-style validation), /retract, /rollback.
"""
import atexit
import base64
import functools
import html
import io
import json
import logging
import math
import shutil
import signal
import threading
import warnings

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from .. import config
from . import bounds, identity
from . import page
from .. import preprocess
from ..preprocess import CANVAS
from .components import Canvas, Digit
from ..examples import round_number
from ..rounds.registry import ROUND0
from ..studio.service import Studio, StudioError, Visitor
from ..studio.tally import Tally

log = logging.getLogger("dadc.web")


INTRO = """# DADC studio: fool the digit model
Draw a digit. If the model gets it wrong, pick the true digit and flag it: every few flags, a new
round of the model is trained on them (with adversarial training) and must pass a gate before it
serves. Can you still fool the next round?"""


def shown(fn):
    """The one place where the Studio's errors become Gradio errors (a toast, or the API's error)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StudioError as e:
            raise bounds.refused(str(e)) from None  # a visitor's mistake: one log line, no traceback
    return wrapper


def real_login():
    """Whether an OAuth profile Gradio hands a handler comes from the real Hugging Face login.
    Gradio internal (6.31, gradio/oauth.py attach_oauth): it serves the real OAuth routes only where
    gradio.utils.get_space() names a Space (SYSTEM=spaces and SPACE_ID); anywhere else it mocks
    them, and a plain GET of /login/huggingface logs the caller in as the owner of the machine's HF
    token. So a profile counts only where both we (config.on_space: the login button is shown) and
    Gradio (its own test, read here) say the login is real."""
    return config.on_space() and gr.utils.get_space() is not None


def identify(settings):
    """who(request, profile) -> Visitor: logged in (Visitor.logged_in: the HF username's id) when
    OAuth gave a profile and the login is real (real_login), else anonymous; either way with the id
    the server derives from the client's address (identity.client_identity: salted with a per-home
    secret, X-Forwarded-For trusted only for DADC_TRUSTED_PROXY_HOPS proxies), which a logged-in
    visitor keeps as `address_id` (their flags from this browser are their own). Never the session
    hash or anything else the client picks: a new session must not be a new person."""
    secret = settings.identity_key or identity.home_secret(settings.home / "identity.key")  # one for all replicas

    def who(request, profile=None):
        address_id = identity.client_identity(request, secret, settings.proxy_hops)
        username = getattr(profile, "username", None) if profile is not None else None
        if username and real_login():
            return Visitor.logged_in(str(username), address_id)
        return Visitor(address_id)
    return who


def privacy_notice(settings):
    where = "a Hugging Face dataset" if settings.hub_enabled else "this app's local store"
    return ("*What is kept when you flag:* your drawing, the digit you give and the model's answer, with your "
            "Hugging Face username if you are logged in, otherwise an anonymous id derived from your network "
            f"address (it cannot be turned back into the address). Flags are stored in {where} and may be "
            "published under CC BY 4.0. Nothing is kept while you only draw.")


# HTML's special characters and Markdown's, each as an entity, in one pass: escaping in turns would
# escape the entities of the turn before ("_" -> "&#95;", then "#" -> "&&#35;95;", shown as "&#95;")
_PLAIN = str.maketrans({c: f"&#{ord(c)};" for c in "&<>\"'*_[]`#\\"})


def md(text):
    """Text from people or the Hub, shown as plain text inside Markdown/HTML (no links, images or
    markup): what the page shows is exactly `text`."""
    return str(text).translate(_PLAIN)


def seen_image(x):
    """The 28x28 the model saw, enlarged for the page; None when Gradio's cache has no room for its
    copy (a full disk must not turn the prediction itself into an error)."""
    if x is None or not cache_has_room():
        return None
    return preprocess.to_image(x).resize((112, 112), Image.NEAREST)


def cache_has_room(least=2**20):
    """Whether the folder Gradio copies returned images into (config.gradio_cache) has `least` bytes
    free: one statvfs call."""
    folder = config.gradio_cache()
    try:
        return shutil.disk_usage(folder if folder.is_dir() else folder.parent).free >= least
    except OSError:
        return False


@functools.lru_cache(maxsize=64)  # canvases are at most 256 px: at most ~16 MiB held
def stored_image(path):
    """A stored canvas as pixels for the page (read-only). The page is handed the pixels, never the
    store's path: Gradio then serves a copy from its own cache, and no route serves the store's
    folder (its metadata names every flagger and voter). Stored files never change: cached by path."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGBA") if img.mode not in ("RGB", "RGBA", "L") else img.copy())
    pixels.setflags(write=False)
    return pixels


TESTED_GRADIO = "6.31.0"  # the Gradio whose internals web/ relies on (bounds, components, page.js)


def check_gradio_version(version=gr.__version__):
    """Say clearly, once at build, when the installed Gradio is not the one web/ was tested with:
    bounds.py, components.py and page.js lean on its internals, which may have moved. The browser
    tests are the net that catches it; this line tells the person running the app where to look."""
    if version != TESTED_GRADIO:
        log.warning("Gradio %s is installed, but this app was tested with Gradio %s: the Sketchpad's "
                    "bounds (web/bounds.py), components (web/components.py) and page code (web/page.js) "
                    "use its internals. Install gradio==%s, or run the browser tests before serving.",
                    version, TESTED_GRADIO, TESTED_GRADIO)
        return False
    return True


def blocks():
    """gr.Blocks for the page. delete_cache: Gradio's copies of uploads and outputs are removed after
    an hour (bounded disk). head: the Draw tab's browser side (page.py). Gradio 6 wants head in
    launch() and warns here, but any launch() falls back to it: so every launcher (app.py, the tests,
    the benchmarks) has it. The warning is silenced by its text (Gradio 6.31's wording): it has no
    category of its own."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The parameters have been moved", UserWarning)
        return gr.Blocks(title="DADC studio", delete_cache=(3600, 3600), head=page.head(CANVAS))


def build(settings, round0=ROUND0, round_cfg=None, sync="auto", mnist=None, studio=None):
    """The Blocks app. sync="auto" pushes to the Hub when HF_TOKEN and DADC_DATASET_REPO are set."""
    if studio is None:
        if sync == "auto":
            from ..hub.sync import HubSync

            sync = lambda store, registry: HubSync.from_settings(settings, store, registry)  # noqa: E731
        studio = Studio(settings, round0, round_cfg, sync=sync, mnist=mnist).start()
        atexit.register(studio.stop)  # one last push when the app stops
    who = identify(studio.settings)
    check_gradio_version()
    with blocks() as demo:
        demo.studio = studio
        gr.Markdown(INTRO)
        if config.on_space():
            gr.LoginButton()  # flags are then credited to your HF username
        with gr.Tabs():
            with gr.Tab("Draw"):
                draw_tab(studio, who)
            with gr.Tab("Verify") as tab:
                vote_tab(studio, who, tab)
            with gr.Tab("Dashboard") as tab:
                dashboard_tab(studio, who, tab)
    return demo


BRUSH = 12  # the brush's radius in canvas px: 24 px strokes, a pen's width for a digit ~250 px tall
PAD_HEIGHT = 500  # px: at 1280x800 the pad, the answer under it, Undo and Clear fit the first screen
KEYS = ("Keys: <kbd>0</kbd>-<kbd>9</kbd> pick the true digit, <kbd>Enter</kbd> flags, "
        "<kbd>Backspace</kbd> undoes, <kbd>Esc</kbd> clears.")


def top_line(value, seq=0):
    """The top prediction, large, right under the canvas (on a phone the first screen holds it).
    data-seq names the page's snapshot it answers (tests and benchmarks wait for it)."""
    if isinstance(value, dict):
        d = max(value, key=value.get)
        said = f'<b class="digit">{d}</b> <span class="sure">{value[d]:.0%} sure</span>'
    else:
        said = f'<span class="msg">{html.escape(value or "draw a digit")}</span>'
    return f'<div class="dadc-top" data-seq="{seq}"><span>The model says</span> {said}</div>'


def flags_word(n):
    return f"{n} flag{'s' * (n != 1)}"


def feedback_text(r, flags, fooled, hint, serving):
    """After a flag: the receipt, the visitor's running count, and what still fools the round."""
    lines = [f"**{'Fooled!' if r['fooled'] else 'Not fooled.'}** {md(r['message'])}",
             f"Your flags: **{flags}**, of which **{fooled}** fooled the model."]
    window_round, digit, n_fooled, n = hint
    if window_round != serving or not n:
        lines.append(f"Nobody has flagged round {serving} yet.")
    elif digit is None:
        said = f"None of the last {n} flags fooled" if n > 1 else "The last flag did not fool"
        lines.append(f"{said} round {serving}: find its blind spot.")
    else:
        lines.append(f"Hint: lately, **{digit}s** fool round {serving} most often "
                     f"({n_fooled} of {flags_word(n)}).")
    return "\n\n".join(lines)


def drawing(png):
    """The page's drawing (a PNG data URL, page.snapshot) as an image; else the caller's error."""
    try:
        return page.snapshot(png, CANVAS)
    except preprocess.CanvasError as e:
        raise bounds.refused(f"Nothing done: {e}.") from None


def counter(studio):
    """counted() -> the visitors' running counts and the hint (tally.py), with the stored flags
    counted once they are all in (after a Hub restore)."""
    tally = Tally()

    def counted():
        if not tally.seeded and not studio.restoring:
            tally.seed(studio.examples(), round_number(studio.serving))
        return tally
    counted()  # now, and again on each flag until the Hub restore is done
    return counted


def draw_tab(studio, who):
    """Drawing is the Sketchpad; its value travels only to the API's /predict and /flag. The page
    reads the drawing in the browser (page.js: snapshot()) and sends that PNG to light events:
    the live prediction on every mouse-up, and the flag (so it stores what the visitor saw).
    The pad has one pen: no layers or crop (the editor's options); its eraser, colour, size, pan and
    zoom are hidden by page.css (eraser=False, the documented option, leaves Gradio 6.31's editor
    with no tool chosen and a page error)."""
    counted = counter(studio)  # the visitors' running counts and the hint (tally.py)
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            canvas = Canvas(label="Draw one digit", canvas_size=(CANVAS, CANVAS), type="pil",
                            brush=gr.Brush(default_size=BRUSH, colors=["#000000"], color_mode="fixed"),
                            layers=False, transforms=(), elem_id="canvas", height=PAD_HEIGHT)
            with gr.Row(elem_id="dadc-under", equal_height=True):  # the answer, then what changes the drawing
                top = gr.HTML(top_line(None), elem_id="dadc-top", js_on_load=None, scale=4, min_width=220)
                gr.Button("Undo", size="md", elem_id="undo", scale=1, min_width=100).click(None, js="() => dadc.undo()")
                clear = gr.Button("Clear", size="md", elem_id="clear", scale=1, min_width=100)
        with gr.Column(scale=2, min_width=300):
            label = gr.Label(num_top_classes=3, label="The model says", elem_id="dadc-label")
            seen = gr.Image(label="What the model sees (28x28)", image_mode="L", height=140,
                            interactive=False, buttons=[], elem_id="seen")
            digit = Digit([(str(d), d) for d in range(10)], label="The true digit", elem_id="digit")
            flag_btn = gr.Button("Flag: the model got it wrong (or was unsure)", variant="stop", elem_id="flag")
            with gr.Row(visible=False, elem_id="dadc-last") as last_row:  # the latest flag, to take back
                last_pic = gr.HTML(elem_id="last-pic", padding=False, min_width=72, scale=0)
                take_back = gr.Button("Take it back", size="sm", elem_id="take-back", min_width=110, scale=0)
            feedback = gr.Markdown(elem_id="feedback")
            gr.Markdown(KEYS, elem_id="keys")  # hidden on touch screens (page.css): no keyboard there
            gr.Markdown(privacy_notice(studio.settings))
    # Clear, in the browser (no request): the editor's own clear, and the outputs' empty values as
    # gr.ClearButton writes them (a Label given null breaks)
    empty = [label.postprocess(None), seen.postprocess(None), top_line(None)]
    clear.click(None, None, [label, seen, top], js=f"() => {{ dadc.clear(); return {json.dumps(empty)}; }}")
    # the page's light path: a PNG of the drawing (page.snapshot) and its number, filled in by js=
    snap, seq = gr.Textbox(visible=False), gr.Number(visible=False)
    live_btn = gr.Button(visible="hidden", elem_id="dadc-live")  # clicked by page.js on mouse-up
    # the API's endpoints, which take Sketchpad values; the page does not use them
    submit, flag_api = gr.Button("Submit", visible=False), gr.Button("Flag", visible=False)
    receipt = gr.JSON(visible=False)
    seen_state = gr.State()

    def live(png, n, request: gr.Request, profile: gr.OAuthProfile | None = None):
        value, x = studio.predict(drawing(png), who(request, profile).id)
        n = int(n) if isinstance(n, (int, float)) and math.isfinite(n) and abs(n) < 2**53 else 0
        return {label: value, seen: seen_image(x), top: top_line(value, n)}

    live_btn.click(live, [snap, seq], [label, seen, top], js="() => [dadc.latest(), dadc.next()]",
                   api_visibility="private", trigger_mode="always_last", show_progress="hidden",
                   concurrency_limit=None)

    def predict(canvas_value, request: gr.Request, profile: gr.OAuthProfile | None = None):
        return studio.predict(canvas_value, who(request, profile).id)  # (label value, 28x28)

    # /predict and /flag decode a Sketchpad value (the light events a 448 px PNG): a few at a time
    submit.click(predict, canvas, [label, seen_state], api_name="predict", concurrency_id=bounds.HEAVY,
                 concurrency_limit=bounds.HEAVY_CONCURRENCY).then(
        seen_image, seen_state, seen, api_visibility="private", show_progress="hidden")
    flag_events(studio, who, counted, (canvas, snap, digit), (flag_btn, flag_api, receipt),
                (feedback, last_row, last_pic, take_back), answer=[label, seen, top])


def flag_events(studio, who, counted, inputs, buttons, after, answer):
    """The Draw tab's flag: /flag takes a Sketchpad value, the page's Flag button the PNG it saw.
    Once stored, in one answer (no moment when the canvas is clear and the old feedback still
    shows): the receipt and the visitor's counts in `feedback`, the flagged drawing small with
    "Take it back", the digit and the answer cleared; then the canvas, in the browser."""
    canvas, snap, digit = inputs
    flag_btn, flag_api, receipt = buttons
    feedback, last_row, last_pic, take_back = after
    label, seen, top = answer
    last_id = gr.State()  # the id of this session's latest flag: kept on the server, never sent

    @shown
    def flag(canvas_value, true_digit, request: gr.Request, profile: gr.OAuthProfile | None = None):
        visitor = who(request, profile)
        r = studio.flag(canvas_value, true_digit, visitor)
        counted().add(visitor.id, r)  # page or API: every stored flag counts for its visitor
        return r

    flag_api.click(flag, [canvas, digit], receipt, api_name="flag", concurrency_id=bounds.HEAVY,
                   concurrency_limit=bounds.HEAVY_CONCURRENCY)  # as /predict: it decodes a Sketchpad value

    def flag_drawing(png, true_digit, request: gr.Request, profile: gr.OAuthProfile | None = None):
        img = drawing(png)
        r = flag(img, true_digit, request, profile)
        flags, fooled = counted().visitor(who(request, profile).id)
        text = feedback_text(r, flags, fooled, counted().hint(), round_number(studio.serving))
        return {feedback: text, digit: None, label: None, seen: None, top: top_line(None), last_id: r["id"],
                last_pic: flagged_html(img, r["label"]), last_row: gr.Row(visible=True)}

    # show_progress hidden: Gradio's timer over the feedback would outlast the cleared canvas
    flagged = flag_btn.click(flag_drawing, [snap, digit], [feedback, digit, label, seen, top, last_id, last_pic,
                                                            last_row], js="(png, d) => [dadc.snapshot(), d]",
                             api_visibility="private", concurrency_limit=None, show_progress="hidden")
    # only once the flag is stored (success) is the canvas cleared, in the browser by the editor's
    # own Clear (page.js says why not by writing None to the Sketchpad); the brush stays ready
    flagged.success(None, None, None, js="() => { dadc.clear(); }", api_visibility="private")

    @shown
    def take_it_back(id_, request: gr.Request, profile: gr.OAuthProfile | None = None):
        if not id_:
            raise StudioError("Nothing to take back: flag a drawing first.")
        studio.retract(id_, who(request, profile))  # the same check as /retract: only its flagger
        return {feedback: "**Taken back.** That flag trains nothing and nobody is asked about it.",
                last_id: None, last_row: gr.Row(visible=False)}

    take_back.click(take_it_back, last_id, [feedback, last_id, last_row], api_visibility="private",
                    show_progress="hidden")


def thanks_text(r):
    """After a vote (a Studio.vote answer): where the votes on that example stand."""
    done = " It is now verified." if r["verified"] else ""
    if r["corrected"] is not None:
        done = f" It is now relabelled as {r['corrected']}."
    return f"Thanks: {r['agree']} agree, {r['disagree']} disagree so far.{done}"


NOTHING_TO_VERIFY = "Nothing to verify right now (you never verify your own flags): come back later."


def vote_tab(studio, who, tab):
    """Votes on other people's flags (the API's /verify_next and /verify). An example is loaded
    when the tab opens; Yes and No are live only while one is shown. Taking back one's own flag
    is on the Draw tab (after a flag) and the API's /retract (api_events)."""
    gr.Markdown("Check other people's flags (never your own): is the label right? If not, say which digit "
                "it is: when enough people agree, the example is relabelled.")
    with gr.Row():
        picture = gr.Image(label="Their drawing", height=300, interactive=False, buttons=[], format="png",
                           min_width=240)
        with gr.Column(min_width=300):
            question = gr.Markdown("Loading an example…", elem_id="question")
            example_id = gr.Textbox(visible=False)
            example_label = gr.Number(visible=False)
            with gr.Row():
                yes = gr.Button("Yes, that label is right", variant="primary", interactive=False, elem_id="yes")
                no = gr.Button("No, it is wrong", interactive=False, elem_id="no")
            right = gr.Radio([(str(d), d) for d in range(10)], label="With 'No': it is a … (optional)",
                             interactive=False)
            next_btn = gr.Button("Next")
            thanks = gr.Markdown()
            result = gr.JSON(visible=False)
    shows = [picture, question, example_id, example_label, result]  # /verify_next's answer, as before

    def next_example(request: gr.Request, profile: gr.OAuthProfile | None = None):
        ex = studio.next_to_vote(who(request, profile))
        if ex is None:
            return {picture: None, question: NOTHING_TO_VERIFY, example_id: "", example_label: None, result: {}}
        return {picture: stored_image(ex["canvas"]), question: f"### Is this a **{md(ex['label'])}**?",
                example_id: ex["id"], example_label: ex["label"], result: {"id": ex["id"], "label": ex["label"]}}

    def answerable(id_):
        """Yes, No and the digit are live only while an example is shown (and the digit starts unpicked)."""
        return gr.Button(interactive=bool(id_)), gr.Button(interactive=bool(id_)), gr.Radio(interactive=bool(id_),
                                                                                            value=None)

    def load(trigger, **api):
        trigger(next_example, None, shows, concurrency_limit=None, **api).then(
            answerable, example_id, [yes, no, right], api_visibility="private", show_progress="hidden")

    load(next_btn.click, api_name="verify_next")
    load(tab.select, api_visibility="private")  # an example is there as the tab opens

    def vote(agree):
        @shown
        def cast(id_, digit, request: gr.Request, profile: gr.OAuthProfile | None = None):
            if not id_:
                raise StudioError("Press Next first.")
            r = studio.vote(id_, agree, who(request, profile), None if agree else digit)
            return {result: r, thanks: thanks_text(r)}
        return cast

    for btn, agree in ((yes, True), (no, False)):
        load(btn.click(vote(agree), [example_id, right], [result, thanks], api_visibility="private").success,
             api_visibility="private")
    api_events(studio, who)


def api_events(studio, who):
    """The API's calls with no widget of their own: /verify (a vote by id) and /retract (take back
    one of one's own flags by its id, the /flag receipt's). The page's own "Take it back"
    (flag_events) goes through the same Studio.retract and its check."""
    @shown
    def vote_api(id_: str, agree: bool, digit: int | None = None, request: gr.Request = None,
                 profile: gr.OAuthProfile | None = None) -> dict:
        """Vote on someone else's example; with agree=false, optionally the digit it really is."""
        return studio.vote(id_, agree, who(request, profile), digit)

    gr.api(vote_api, api_name="verify", concurrency_limit=None)

    @shown
    def retract_api(id_: str, request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
        """Take back one of your own flags."""
        return studio.retract(id_.strip() if isinstance(id_, str) else id_, who(request, profile))

    gr.api(retract_api, api_name="retract", concurrency_limit=None)


def small_png(img, side=144):
    """A drawing as a small PNG data URL: all of it in a side x side box (shown at half that: sharp
    on a phone's 2x screen). Inline in the page's HTML: no file for Gradio to copy or serve."""
    img = img.copy()
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@functools.lru_cache(maxsize=64)  # stored files never change: one small PNG (~3 KB) per path
def thumb_url(path):
    """A stored canvas as small_png."""
    return small_png(Image.fromarray(np.asarray(stored_image(path))))


def flagged_html(img, digit):
    """The drawing just flagged, small, next to "Take it back"."""
    return f'<img src="{small_png(img)}" width="72" height="72" alt="your flagged drawing, a {int(digit)}">'


def gallery_html(items):
    """The recent fooling examples (path, caption) as a grid of small thumbnails that wraps, each
    drawing whole, its caption under it; a sentence when there are none."""
    if not items:
        return '<p class="dadc-empty">No drawing has fooled a round yet.</p>'
    cells = "".join(f'<figure><img src="{thumb_url(p)}" alt="{html.escape(c)}" width="72" height="72">'
                    f"<figcaption>{html.escape(c)}</figcaption></figure>" for p, c in items)
    return f'<div class="dadc-gallery">{cells}</div>'


LEADERS_NOTE = ("Logged-in visitors appear by their Hugging Face username; anonymous visitors only under a "
                "nickname they choose here.")


def plot(kind, rows, columns, rounds=None, **props):
    """A plot's new value, shown only when there is something to plot (an empty plot's axes and
    labels pile up): rounds as labels ("0", "1", ... in their order), never a numeric axis
    (which reads "0 1 1")."""
    df = pd.DataFrame(rows, columns=columns)
    if rounds is not None:
        df["round"] = df["round"].map(str)
        props["sort"] = [str(r) for r in rounds]
    return kind(value=df, visible=bool(rows), **props)


def note(text, show):
    return gr.Markdown(text, visible=show)


MIN_PLOT = 360  # px: two plots abreast from ~750 px up, one above the other on a phone (their titles whole)


def dashboard_tab(studio, who, tab):
    """The rounds and the people who fool them; an admin's controls (admin_events) show to admins only."""
    parts, asks = dashboard_layout()  # parts: what show_dashboard fills in; asks: the controls
    shows = list(parts.values())
    status, timer = parts["status"], parts["timer"]

    def show_dashboard(request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        d = studio.dashboard(who(request, profile) if request is not None else None)
        return {parts[k]: v for k, v in dashboard_values(d).items()}

    for trigger in (tab.select, asks["refresh"].click):  # opening the tab shows the counts as they are now
        trigger(show_dashboard, None, shows, api_visibility="private", show_progress="hidden")

    def tick(request: gr.Request, profile: gr.OAuthProfile | None = None):
        d = studio.dashboard(who(request, profile))
        return {status: md(d["status"]), timer: gr.Timer(active=d["running"])}

    timer.tick(tick, None, [status, timer], api_visibility="private", show_progress="hidden")

    @shown
    def set_nickname(name, request: gr.Request, profile: gr.OAuthProfile | None = None):
        return studio.set_nickname(name, who(request, profile))

    asks["save_nick"].click(set_nickname, asks["nickname"], None, api_visibility="private").success(
        show_dashboard, None, shows, api_visibility="private")
    admin_events(studio, who, parts["rounds"], asks["rollback"], asks["retrain"], status, timer,
                 (show_dashboard, shows))


def dashboard_layout():
    """The dashboard laid out: (its parts by name, its controls by name). Every part with nothing
    to show says so in a sentence (its *_note; dashboard_values)."""
    status = gr.Markdown()
    with gr.Row():
        per_digit = gr.BarPlot(x="digit", y="examples", color="kind", title="Examples per digit", sort="x",
                               min_width=MIN_PLOT)
        with gr.Column(min_width=MIN_PLOT):
            mer = gr.ScatterPlot(x="round", y="rate", color="kind", title="Model error rate per round", y_lim=[0, 1])
            mer_note = note("No drawing has been tried on a round yet.", False)
    with gr.Row():
        with gr.Column(min_width=MIN_PLOT):
            acc = gr.ScatterPlot(x="round", y="accuracy", color="metric", title="Clean and PGD accuracy per round",
                                 elem_id="accuracy")
            acc_note = gr.Markdown(elem_classes="dadc-caption")  # the protocol, named: one for all rounds
        with gr.Column(min_width=MIN_PLOT):
            gr.Markdown("**Recent fooling examples**")
            gallery = gr.HTML(gallery_html([]), elem_id="gallery")
    with gr.Row():
        with gr.Column(min_width=MIN_PLOT):
            matrix = gr.BarPlot(x="fooled", y="accuracy", color="round", title="Accuracy on held-out fooling examples",
                                y_lim=[0, 1], caption="Each round on the held-out examples that fooled earlier rounds")
            matrix_note = note("No held-out example has fooled a round yet: once some have, this shows how each "
                               "later round does on them.", False)
        with gr.Column(min_width=MIN_PLOT):
            leaders = gr.Dataframe(headers=["who", "fooling flags", "verified by others", "verified error rate",
                                            "rounds fooled"], label="Leaderboard", wrap=True, elem_id="leaders")
            leaders_note = gr.Markdown(LEADERS_NOTE)
            with gr.Row():
                nickname = gr.Textbox(label="Show me on the leaderboard as (empty: not shown)", max_length=24)
                save_nick = gr.Button("Save", elem_id="save-nick")
    history = gr.Dataframe(headers=["time", "what", "outcome", "why", "clean", "PGD", "seconds"],
                           label="Every round attempt, and why it passed or failed (accuracy on the gate's validation slice)",
                           wrap=True, elem_id="history")
    history_note = note("No round has been attempted yet.", False)
    with gr.Row(visible=False) as admin_row:  # shown to admins only; the handlers check it again
        rounds = gr.Dropdown(label="Serve an earlier round", choices=[], allow_custom_value=True)
        rollback_btn = gr.Button("Roll back")
        retrain_btn = gr.Button("Retrain now")
    refresh = gr.Button("Refresh")
    timer = gr.Timer(3.0, active=False)  # ticks while a round trains
    return dict(status=status, per_digit=per_digit, mer=mer, mer_note=mer_note, acc=acc, acc_note=acc_note,
                gallery=gallery, matrix=matrix, matrix_note=matrix_note, leaders=leaders,
                leaders_note=leaders_note, history=history, history_note=history_note, rounds=rounds,
                timer=timer, admin_row=admin_row), \
        dict(nickname=nickname, save_nick=save_nick, rollback=rollback_btn, retrain=retrain_btn, refresh=refresh)


def dashboard_values(d):
    """The dashboard's parts (by their names in dashboard_tab) from Studio.dashboard's numbers."""
    numbered = [round_number(n) for n in d["rounds"]]
    leaders = d["leaders"]
    return dict(
        status=md(d["status"]),
        per_digit=pd.DataFrame(d["digits"]),
        mer=plot(gr.ScatterPlot, d["mer"], ["round", "kind", "rate"], numbered),
        mer_note=note("No drawing has been tried on a round yet.", not d["mer"]),
        acc=plot(gr.ScatterPlot, d["accuracy"], ["round", "metric", "accuracy"], numbered),
        acc_note=md(d["protocol"]),
        gallery=gallery_html(d["gallery"]),
        matrix=plot(gr.BarPlot, d["matrix"], ["round", "fooled", "accuracy", "n"]),
        matrix_note=note("No held-out example has fooled a round yet: once some have, this shows how each "
                         "later round does on them.", not d["matrix"]),
        leaders=gr.Dataframe(leaders or [[""] * 5], visible=bool(leaders)),
        leaders_note=LEADERS_NOTE if leaders else "Nobody is on the leaderboard yet. " + LEADERS_NOTE,
        history=gr.Dataframe(d["history"] or [[""] * 7], visible=bool(d["history"])),
        history_note=note("No round has been attempted yet.", not d["history"]),
        rounds=gr.Dropdown(choices=d["rounds"], value=d["serving"]),
        timer=gr.Timer(active=d["running"]),
        admin_row=gr.Row(visible=d["admin"]))


def admin_events(studio, who, rounds, rollback_btn, retrain_btn, status, timer, refresh):
    """The admin row's Roll back (and the API's /rollback) and Retrain now: the Studio refuses them
    to anyone but an admin, however they are called. refresh: (show_dashboard, its outputs)."""
    show_dashboard, shows = refresh

    @shown
    def rollback_api(round_name: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> dict:
        """Serve an earlier round (e.g. "round-000") from now on. Admins only."""
        return studio.rollback(round_name, who(request, profile))

    gr.api(rollback_api, api_name="rollback")
    rollback_btn.click(rollback_api, rounds, None, api_visibility="private").success(
        show_dashboard, None, shows, api_visibility="private")

    @shown
    def retrain_now(request: gr.Request, profile: gr.OAuthProfile | None = None):
        return studio.retrain_now(who(request, profile))

    retrain_btn.click(retrain_now, None, status, api_visibility="private").success(
        lambda: gr.Timer(active=True), None, timer, api_visibility="private")


def launch(demo, **kwargs):
    """Launch with the settings this app needs: requests run concurrently (a default Gradio app
    runs one event at a time and serialises every user behind the slowest), but for the heavy
    ones (/predict, /flag: bounds.HEAVY_CONCURRENCY at a time), and every upload route is bounded
    in size (bounds.install). SIGTERM and SIGINT shut the app down cleanly:
    the final push is made within service.SHUTDOWN_S."""
    if threading.current_thread() is threading.main_thread():
        def shut_down(signum, frame):  # a Space's restart sends SIGTERM; atexit would not run
            demo.studio.stop()           # a running round stops, then the final push (bounded)
            raise KeyboardInterrupt      # Gradio's launch() closes the server on it and returns
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, shut_down)
    demo.queue(default_concurrency_limit=None, max_size=None)
    # Gradio keeps each session's page state in memory (~150 KiB a fresh session, measured), the
    # latest `state_session_capacity` sessions: 1,000 by default here, not Gradio's 10,000 (1.5 GB)
    return demo.launch(max_threads=64, state_session_capacity=demo.studio.settings.session_capacity,
                       **bounds.install(demo), **kwargs)  # bounded uploads (bounds.py)

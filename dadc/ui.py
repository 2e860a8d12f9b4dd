"""The Gradio app: draw a digit, see what the model says, flag it when it is wrong, verify other
people's flags, and watch the rounds on the dashboard. The top half is the app's state and actions
(plain Python, used by the events); the bottom half, build(), lays the page out top to bottom.

API (gradio_client): /predict (Sketchpad value -> gr.Label value), /flag (Sketchpad value, digit ->
{"id", "saved", ...}), /verify_next and /verify (Dynabench-style validation), /rollback.
"""
import atexit
import hashlib
import json
import math
import os
import random
import threading
import time
from collections import Counter, deque
from pathlib import Path

import gradio as gr
from gradio.components.image_editor import EditorData
from gradio.data_classes import FileData
import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from . import preprocess
from .rounds import ROUND0, Predictor, Registry, RetrainJob, RoundConfig, eligible, is_verified, round_number
from .checkpoint import CheckpointError
from .store import FlagStore, StoreError

CANVAS = 448          # canvas pixels: big enough for a finger, small enough to send and read fast
KEEP_CANVAS = 512     # the stored copy of a canvas is at most this many pixels a side
MAX_SESSIONS = 10_000  # open drawings remembered for the attempt count


class Studio:
    """Everything the page does, without the page: store, rounds, serving model, counters."""

    def __init__(self, settings, seed=ROUND0, round_cfg=None, sync=None, mnist=None):
        """sync: a HubSync, or a function store -> HubSync or None."""
        from . import data

        self.settings = settings
        self.store = FlagStore(settings.home)
        self.sync = sync = sync(self.store) if callable(sync) else sync
        if sync is not None:
            sync.restore()  # a Space restarts with an empty disk: flags and rounds come back first
            sync.start()
            atexit.register(sync.stop)  # one last push when the app stops
        self.registry = Registry(settings.home, seed)
        self.predictor = Predictor(self.registry)
        self.cfg = round_cfg or RoundConfig.from_env()
        self.job = RetrainJob(self.registry, self.predictor, self.store, settings.threshold, self.cfg,
                              mnist=mnist or (lambda: data.fetch(settings.home, log=lambda m: None)),
                              on_promote=sync.push_round if sync is not None and sync.model_repo else None)
        self.attempts = Attempts(settings.home / "rounds" / "attempts.json")
        self.flag_limit = RateLimit(settings.flag_limit, per=60.0)
        self.job.start()  # flags stored before a restart may already be due

    # --- draw and predict ---

    def predict(self, canvas, session):
        """(gr.Label value, the 28x28 the model saw or None). Counts one attempt per drawing."""
        try:
            x = preprocess.to_mnist(canvas)
        except preprocess.CanvasError as e:
            self.attempts.close(session)
            return str(e), None
        name, p = self.predictor.probs(x)
        self.attempts.open(session, round_number(name))
        return {str(d): float(p[d]) for d in range(10)}, x

    # --- flag ---

    def flag(self, canvas, digit, session):
        """Store one flagged example; the receipt says whether it fooled the model."""
        digit = check_digit(digit)
        try:
            x = preprocess.to_mnist(canvas)
        except preprocess.CanvasError as e:
            raise gr.Error(f"Nothing stored: {e}.") from None
        wait = self.flag_limit.take(session)  # counts flags that would be stored, not refused ones
        if wait:
            raise gr.Error(f"Nothing stored: too many flags from this session (at most {self.flag_limit.n} "
                           f"a minute). Try again in {math.ceil(wait)} s.")
        name, p = self.predictor.probs(x)
        prediction = int(p.argmax())
        try:
            id_ = self.store.append(x, digit, canvas=keepable(preprocess.pick(canvas)), prediction=prediction,
                                    confidences=[float(v) for v in p], round=round_number(name), session=session)
        except StoreError as e:
            raise gr.Error(str(e)) from None
        self.attempts.close(session)
        if not self.cfg.verified_only:
            self.job.notify()
        fooled = prediction != digit
        new, more = self.job.pending()
        if self.job.running:
            after = "a new round is training now"
        elif self.cfg.verified_only:
            after = f"{more} more verified until the next round"
        else:
            after = f"{more} more until the next round"
        r = round_number(name)
        head = (f"You fooled round {r}: it said {prediction}" if fooled
                else f"Saved: round {r} said {prediction} ({p[prediction]:.0%} sure)")
        return {"id": id_, "saved": True, "label": digit, "prediction": prediction, "fooled": fooled,
                "round": name, "message": f"{head}. {after}."}

    # --- verify ---

    def next_to_verify(self, session):
        """Someone else's example this session has not judged yet, fewest votes first; None if none."""
        voted = {v["id"] for v in self.store.validations() if v.get("session") == session}
        rows = [r for r in self.store.examples() if r["session"] != session and r["id"] not in voted]
        if not rows:
            return None
        fewest = min(r["agree"] + r["disagree"] for r in rows)
        row = random.choice([r for r in rows if r["agree"] + r["disagree"] == fewest])
        return {"id": row["id"], "label": row["label"], "canvas": row["canvas_path"]}

    def verify(self, id_, agree, session):
        rows = {r["id"]: r for r in self.store.examples()}
        if id_ not in rows:
            raise gr.Error(f"No flagged example with id {id_!r}.")
        if rows[id_]["session"] == session:
            raise gr.Error("You cannot verify your own example.")
        if not isinstance(agree, bool):
            raise gr.Error(f"agree must be true or false, got {agree!r}.")
        was = is_verified(rows[id_], self.cfg.votes)
        try:
            self.store.validate(id_, session, agree)
        except (StoreError, ValueError) as e:
            raise gr.Error(str(e)) from None
        row = {r["id"]: r for r in self.store.examples()}[id_]
        now = is_verified(row, self.cfg.votes)
        if self.cfg.verified_only and now and not was:
            self.job.notify()
        return {"id": id_, "agree": row["agree"], "disagree": row["disagree"], "verified": now}

    # --- rounds ---

    def rollback(self, name):
        if self.job.running:
            raise gr.Error("A round is training: roll back when it has finished.")
        try:
            self.registry.rollback(name, why="asked on the dashboard or API")  # checks that it loads
            self.predictor.swap(name)
        except (ValueError, CheckpointError) as e:
            raise gr.Error(str(e)) from None
        return {"serving": name}

    # --- dashboard ---

    def dashboard(self):
        rows = self.store.examples()
        use = {r["id"] for r in eligible(rows, self.cfg)}
        per_digit = Counter((r["label"], "collected") for r in rows)
        per_digit.update((r["label"], "verified") for r in rows if is_verified(r, self.cfg.votes))
        digits = [{"digit": str(d), "kind": k, "examples": per_digit[(d, k)]}
                  for d in range(10) for k in ("collected", "verified")]
        attempts = self.attempts.counts()
        fooled = Counter(r["round"] for r in rows if r["prediction"] not in (-1, r["label"]))
        fooled_verified = Counter(r["round"] for r in rows if r["prediction"] not in (-1, r["label"])
                                  and is_verified(r, self.cfg.votes))
        names = self.registry.names()
        mer, acc = [], []
        for name in names:
            n = round_number(name)
            if attempts.get(n):
                mer.append({"round": n, "kind": "MER (fooled / attempts)", "rate": fooled[n] / attempts[n]})
                mer.append({"round": n, "kind": "verified MER", "rate": fooled_verified[n] / attempts[n]})
            m = self.registry.metrics(name)
            for key, label in (("clean_acc", "clean"), ("robust_acc", "PGD robust"), ("human_acc", "human hold-out")):
                if isinstance(m.get(key), (int, float)):
                    acc.append({"round": n, "metric": label, "accuracy": m[key]})
        history = []
        for h in reversed(self.registry.history()):
            if h.get("event") == "attempt":
                outcome = f"promoted {h['round']}" if h.get("passed") else "rejected"
                why = "; ".join(h.get("reasons", [])) or "passed the gate"
                c = h.get("candidate", {})
                history.append([h["time"], f"attempt {h.get('attempt', '?')} on {h.get('base', '?')}", outcome, why,
                                _pct(c.get("clean_acc")), _pct(c.get("robust_acc")), h.get("seconds")])
            elif h.get("event") == "rollback":
                history.append([h["time"], "rollback", f"{h['from']} -> {h['to']}", h.get("why", ""), "", "", ""])
        gallery = [(r["canvas_path"], f"{r['label']}, not {r['prediction']} (round {r['round']})")
                   for r in rows if r["prediction"] not in (-1, r["label"])][-12:][::-1]
        new, more = self.job.pending()
        st = self.job.status
        lines = [f"**Serving {self.predictor.round}** · {len(rows)} examples collected "
                 f"({len(use)} usable{' — verified only' if self.cfg.verified_only else ''}) · "
                 f"{new} new, {more} more start the next round (threshold {self.job.threshold})"]
        if st["state"] == "running":
            done = f" {st['done']}/{st['total']} steps" if st["total"] else ""
            lines.append(f"**Retraining:** {st['stage']}{done}")
        elif st["stage"]:
            lines.append(f"Last round: {st['stage']}")
        if self.sync is not None:
            s = self.sync.status()
            lines.append(f"Hub: {s['repo']} · last push {s['last_push'] or 'not yet'} · {s['pending']} pending"
                         + (f" · {s['last_error']}" if s["last_error"] else ""))
        else:
            lines.append("Hub: not configured (HF_TOKEN and DADC_DATASET_REPO): flags are kept locally")
        self.attempts.save()
        return {"status": "\n\n".join(lines), "digits": digits, "mer": mer, "accuracy": acc,
                "history": history, "gallery": gallery, "rounds": names, "serving": self.predictor.round}


def _pct(v):
    return f"{v:.2%}" if isinstance(v, (int, float)) else ""


def check_digit(digit):
    """The true digit: an int 0-9 (not a bool, float or string), else a clear error."""
    if digit is None:
        raise gr.Error("Pick the true digit first.")
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
        raise gr.Error(f"Nothing stored: the true digit must be an integer 0-9, got {digit!r}.")
    return int(digit)


class Digit(gr.Radio):
    """gr.Radio of the digits 0-9 whose value is an int; any other value gets a clear message."""

    def get_block_name(self):
        return "radio"

    def preprocess(self, payload):
        return check_digit(payload)


def keepable(img):
    """The canvas as stored next to the 28x28: at most KEEP_CANVAS a side, RGBA."""
    if img is None:
        return None
    img = img.copy() if img.mode in ("RGBA", "RGB", "L", "LA") else img.convert("RGBA")
    img.thumbnail((KEEP_CANVAS, KEEP_CANVAS), reducing_gap=2.0)
    return img


class Attempts:
    """Attempts per round for the model error rate: one per drawing a person got a prediction for
    (not one per stroke of live prediction). Kept in memory, saved to DADC_HOME now and then."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._open = {}
        self._saved = 0.0
        try:
            self._counts = Counter({int(k): v for k, v in json.loads(self.path.read_text()).items()})
        except (OSError, ValueError, AttributeError):
            self._counts = Counter()

    def open(self, session, round_):
        with self._lock:
            if session not in self._open:
                if len(self._open) >= MAX_SESSIONS:
                    self._open.pop(next(iter(self._open)))
                self._open[session] = round_
                self._counts[round_] += 1
        if time.monotonic() - self._saved > 5:
            self.save()

    def close(self, session):
        with self._lock:
            self._open.pop(session, None)

    def counts(self):
        with self._lock:
            return dict(self._counts)

    def save(self):
        with self._lock:
            text = json.dumps({str(k): v for k, v in self._counts.items()})
            self._saved = time.monotonic()
            tmp = self.path.with_name(f".{self.path.name}.{threading.get_ident()}")
            try:
                tmp.write_text(text)
                os.replace(tmp, self.path)
            except OSError:
                pass  # a counter, not data: never fail a request for it


class RateLimit:
    """At most n events per `per` seconds for each key (a sliding window), e.g. flags per session."""

    def __init__(self, n, per):
        self.n, self.per = n, per
        self._lock = threading.Lock()
        self._times = {}  # key -> deque of the monotonic times of its last n events

    def take(self, key):
        """Record one event for key and return 0, or, over the limit, the seconds until the next is
        allowed (and record nothing)."""
        now = time.monotonic()
        with self._lock:
            times = self._times.setdefault(key, deque(maxlen=self.n))
            if len(times) == self.n and now - times[0] < self.per:
                return self.per - (now - times[0])
            times.append(now)
            if len(self._times) > MAX_SESSIONS:  # bounded memory: forget the keys that are quiet now
                self._times = {k: t for k, t in self._times.items() if now - t[-1] < self.per}
            return 0.0


def session_of(request, profile=None):
    """The HF username when logged in with OAuth on a Space, else an anonymous id for this browser
    session (a hash of Gradio's random session hash: nothing that identifies a person)."""
    if profile is not None and getattr(profile, "username", None):
        return str(profile.username)
    raw = getattr(request, "session_hash", None) or "api"
    return "anon-" + hashlib.sha256(raw.encode()).hexdigest()[:12]


class CanvasValue(EditorData):
    """The Sketchpad's value, refusing anything else with a message for the caller: pydantic's own
    error would reach an API caller only as Gradio's generic "the app raised an exception"."""

    @classmethod
    def model_validate(cls, obj, **kwargs):
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError:
            raise gr.Error('Nothing done: the canvas must be a Sketchpad value {"background", "layers", '
                           f'"composite"}} of images, got {type(obj).__name__}.') from None


class Canvas(gr.Sketchpad):
    """gr.Sketchpad that refuses what is not an image, or too large to decode, with a clear message
    before anything is decoded (a 20000x20000 PNG is small on the wire and 1.6 GB in memory)."""

    data_model = CanvasValue

    def get_block_name(self):
        return "imageeditor"

    def preprocess(self, payload):
        if payload is not None and payload.id is None:
            for f in [payload.background, payload.composite, *(payload.layers or [])]:
                if f is None:
                    continue
                try:
                    with Image.open(f.path) as im:  # reads the header only
                        preprocess.check_size(*im.size)
                except preprocess.CanvasError as e:
                    raise gr.Error(f"Nothing done: {e}.") from None
                except Image.DecompressionBombError:  # PIL's own guard, past 179 megapixels
                    raise gr.Error(f"Nothing done: image too large: at most "
                                   f"{preprocess.MAX_PIXELS // 1_000_000} megapixels.") from None
                except (UnidentifiedImageError, OSError, ValueError):
                    raise gr.Error("Nothing done: that file is not an image (send a PNG, JPEG or WebP).") from None
        try:
            return super().preprocess(payload)
        except (UnidentifiedImageError, OSError, ValueError):
            raise gr.Error("Nothing done: that file is not an image (send a PNG, JPEG or WebP).") from None


    def convert_and_format_image(self, file, flatten_on_white=False):
        # Gradio converts every image to RGBA, and PIL clips a 16-bit greyscale image to white on
        # the way: read such images ourselves
        if isinstance(file, FileData):
            with Image.open(file.path) as im:
                if im.mode.startswith("I") or im.mode == "F":
                    return preprocess.eight_bit(im)
        return super().convert_and_format_image(file, flatten_on_white)


# --- the page ------------------------------------------------------------------------------------

INTRO = """# DADC studio: fool the digit model
Draw a digit. If the model gets it wrong, pick the true digit and flag it: every few flags, a new
round of the model is trained on them (with adversarial training) and must pass a gate before it
serves. Can you still fool the next round?"""


def build(settings, seed=ROUND0, round_cfg=None, sync="auto", mnist=None, studio=None):
    """The Blocks app. sync="auto" pushes to the Hub when HF_TOKEN and DADC_DATASET_REPO are set."""
    if studio is None:
        if sync == "auto":
            from .hubsync import HubSync

            sync = lambda store: HubSync.from_settings(settings, store)  # noqa: E731
        studio = Studio(settings, seed, round_cfg, sync=sync, mnist=mnist)
    on_space = bool(os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"))

    # delete_cache: Gradio's copies of uploads and outputs are removed after an hour (bounded disk)
    with gr.Blocks(title="DADC studio", delete_cache=(3600, 3600)) as demo:
        demo.studio = studio
        gr.Markdown(INTRO)
        if on_space:
            gr.LoginButton()  # flags are then credited to your HF username
        with gr.Tabs():
            with gr.Tab("Draw"):
                with gr.Row():
                    with gr.Column(scale=3):
                        canvas = Canvas(label="Draw one digit", canvas_size=(CANVAS, CANVAS), type="pil",
                                        brush=gr.Brush(default_size=20, colors=["#000000"], color_mode="fixed"),
                                        layers=False, transforms=(), elem_id="canvas", height=520)
                        with gr.Row():
                            submit = gr.Button("Submit", variant="primary")
                            gr.ClearButton(canvas, value="Clear")
                    with gr.Column(scale=2):
                        label = gr.Label(num_top_classes=3, label="The model says")
                        seen = gr.Image(label="What the model sees (28x28)", image_mode="L", height=140,
                                        interactive=False, buttons=[])
                        digit = Digit([(str(d), d) for d in range(10)], label="The true digit")
                        flag_btn = gr.Button("Flag: the model got it wrong (or was unsure)", variant="stop")
                        feedback = gr.Markdown()
                        receipt = gr.JSON(visible=False)
                seen_state = gr.State()

            with gr.Tab("Verify"):
                gr.Markdown("Check other people's flags (never your own): is the label right?")
                with gr.Row():
                    v_canvas = gr.Image(label="Their drawing", height=300, interactive=False, buttons=[])
                    with gr.Column():
                        v_question = gr.Markdown("Press *Next* to see an example.")
                        v_id = gr.Textbox(visible=False)
                        v_label = gr.Number(visible=False)
                        with gr.Row():
                            v_yes = gr.Button("Yes, that label is right", variant="primary")
                            v_no = gr.Button("No, it is wrong")
                        v_next = gr.Button("Next")
                        v_thanks = gr.Markdown()
                        v_result = gr.JSON(visible=False)

            with gr.Tab("Dashboard") as dash_tab:
                status = gr.Markdown()
                with gr.Row():
                    per_digit = gr.BarPlot(x="digit", y="examples", color="kind", title="Examples per digit",
                                           sort="x")
                    mer = gr.ScatterPlot(x="round", y="rate", color="kind", title="Model error rate per round",
                                         x_axis_format="d", y_lim=[0, 1])
                with gr.Row():
                    acc = gr.ScatterPlot(x="round", y="accuracy", color="metric", x_axis_format="d",
                                         title="Clean and PGD accuracy per round")
                    gallery = gr.Gallery(label="Recent fooling examples", columns=6, height=260)
                history = gr.Dataframe(headers=["time", "what", "outcome", "why", "clean", "PGD", "seconds"],
                                       label="Every round attempt, and why it passed or failed", wrap=True)
                with gr.Row():
                    rounds = gr.Dropdown(label="Serve an earlier round", choices=[], allow_custom_value=True)
                    rollback_btn = gr.Button("Roll back")
                    retrain_btn = gr.Button("Retrain now")
                refresh = gr.Button("Refresh")
                timer = gr.Timer(3.0, active=False)

        # --- events: Draw ---

        def predict(canvas_value, request: gr.Request, profile: gr.OAuthProfile | None = None):
            value, x = studio.predict(canvas_value, session_of(request, profile))
            return value, x

        def show_seen(x):
            return None if x is None else preprocess.to_image(x).resize((112, 112), Image.NEAREST)

        def live(canvas_value, request: gr.Request, profile: gr.OAuthProfile | None = None):
            value, x = studio.predict(canvas_value, session_of(request, profile))
            return value, show_seen(x)

        canvas.change(live, canvas, [label, seen], api_visibility="private", trigger_mode="always_last",
                      show_progress="hidden", concurrency_limit=None)
        submit.click(predict, canvas, [label, seen_state], api_name="predict", concurrency_limit=None).then(
            show_seen, seen_state, seen, api_visibility="private", show_progress="hidden")

        def flag(canvas_value, true_digit, request: gr.Request, profile: gr.OAuthProfile | None = None):
            return studio.flag(canvas_value, true_digit, session_of(request, profile))

        def after_flag(r):
            return r["message"], None, None, None

        flagged = flag_btn.click(flag, [canvas, digit], receipt, api_name="flag", concurrency_limit=None)
        # only once the flag is stored (success) is the canvas cleared, and in the browser (pure JS,
        # as gr.ClearButton does): a Python event that writes None to the Sketchpad can leave it
        # stuck "processing"
        flagged.success(None, None, canvas, js="() => [null]", api_visibility="private")
        flagged.success(after_flag, receipt, [feedback, digit, label, seen], api_visibility="private")

        # --- events: Verify ---

        def next_example(request: gr.Request, profile: gr.OAuthProfile | None = None):
            ex = studio.next_to_verify(session_of(request, profile))
            if ex is None:
                return None, "Nothing to verify right now: come back later.", "", None, {}
            return ex["canvas"], f"### Is this a **{ex['label']}**?", ex["id"], ex["label"], \
                {"id": ex["id"], "label": ex["label"]}

        def vote(agree):
            def fn(id_, request: gr.Request, profile: gr.OAuthProfile | None = None):
                if not id_:
                    raise gr.Error("Press Next first.")
                r = studio.verify(id_, agree, session_of(request, profile))
                done = " It is now verified." if r["verified"] else ""
                return r, f"Thanks: {r['agree']} agree, {r['disagree']} disagree so far.{done}"
            return fn

        def verify_api(id_: str, agree: bool, request: gr.Request,
                       profile: gr.OAuthProfile | None = None) -> dict:
            return studio.verify(id_, agree, session_of(request, profile))

        next_outputs = [v_canvas, v_question, v_id, v_label, v_result]
        v_next.click(next_example, None, next_outputs, api_name="verify_next", concurrency_limit=None)
        for btn, agree in ((v_yes, True), (v_no, False)):
            btn.click(vote(agree), v_id, [v_result, v_thanks], api_visibility="private").success(
                next_example, None, next_outputs, api_visibility="private")
        gr.api(verify_api, api_name="verify", concurrency_limit=None)

        # --- events: Dashboard ---

        def show_dashboard():
            d = studio.dashboard()
            import pandas as pd

            return (d["status"], pd.DataFrame(d["digits"]),
                    pd.DataFrame(d["mer"], columns=["round", "kind", "rate"]),
                    pd.DataFrame(d["accuracy"], columns=["round", "metric", "accuracy"]),
                    d["gallery"], d["history"] or [[""] * 7],
                    gr.Dropdown(choices=d["rounds"], value=d["serving"]), gr.Timer(active=studio.job.running))

        dash_outputs = [status, per_digit, mer, acc, gallery, history, rounds, timer]
        for trigger in (dash_tab.select, refresh.click):
            trigger(show_dashboard, None, dash_outputs, api_visibility="private")

        def tick():
            d = studio.dashboard()
            return d["status"], gr.Timer(active=studio.job.running)

        timer.tick(tick, None, [status, timer], api_visibility="private", show_progress="hidden")

        def rollback_api(round_name: str) -> dict:
            """Serve an earlier round (e.g. "round-000") from now on."""
            return studio.rollback(round_name)

        gr.api(rollback_api, api_name="rollback")
        rollback_btn.click(rollback_api, rounds, None, api_visibility="private").success(
            show_dashboard, None, dash_outputs, api_visibility="private")

        def retrain_now():
            started = studio.job.run_now()
            return "Retraining started." if started else "A round is already training."

        retrain_btn.click(retrain_now, None, status, api_visibility="private").then(
            lambda: gr.Timer(active=True), None, timer, api_visibility="private")
    return demo


def launch(demo, **kwargs):
    """Launch with the settings this app needs: requests run concurrently (a default Gradio app
    runs one event at a time and serialises every user behind the slowest)."""
    demo.queue(default_concurrency_limit=None, max_size=None)
    return demo.launch(max_threads=64, **kwargs)

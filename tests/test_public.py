"""Safe as a public Space, tried as a hostile visitor would with plain HTTP and no login, against
`python app.py`: admin events refused however they are called, identities a client cannot mint
(new sessions from one address are one visitor), bounded uploads and canvases. The limits that need
no HTTP (anonymous budget, store cap, vote login) run on the Studio itself."""
import hashlib
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from test_app import App, TINY, canvas_file, huge_png, mnist, mnist_into, round0, stored  # noqa: F401

ADDRESS = "203.0.113.7"


@pytest.fixture(scope="module")
def app(round0, tmp_path_factory):  # noqa: F811
    a = App(tmp_path_factory.mktemp("public") / "home", round0, DADC_FLAG_LIMIT="5", DADC_THRESHOLD="1000")
    yield a
    a.stop()


@pytest.fixture(scope="module")
def good(mnist, tmp_path_factory):  # noqa: F811
    return canvas_file(tmp_path_factory.mktemp("canvas") / "g.png", mnist["test_x"][0])


def fresh_session(app, address):
    c = Client(app.url, verbose=False, headers={"X-Forwarded-For": address})
    c.session_hash = uuid.uuid4().hex  # what a script can pick freely
    return c


def rounds_dir(app):
    root = app.home / "rounds"
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "attempts.json"}


def queue_call(app, fn_index, data, session=None):
    """Call an event of the page by its index through Gradio's queue, as a script can, hidden or
    not. Returns (success, output or error message)."""
    session = session or uuid.uuid4().hex
    req = urllib.request.Request(app.url + "/gradio_api/queue/join", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"data": data, "fn_index": fn_index, "session_hash": session,
                                                  "event_data": None}).encode())
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except urllib.error.HTTPError as e:
        return False, e.read().decode()
    with urllib.request.urlopen(f"{app.url}/gradio_api/queue/data?session_hash={session}", timeout=60) as stream:
        for line in stream:
            if line.startswith(b"data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return bool(msg.get("success")), msg.get("output", {})
    raise AssertionError("no answer from the queue")


def test_admin_events_refused_by_name_and_by_index(app):
    before = rounds_dir(app)
    c = fresh_session(app, "203.0.113.50")
    with pytest.raises(AppError, match="Only an admin may roll back"):
        c.predict("round-000", api_name="/rollback")
    config = json.load(urllib.request.urlopen(app.url + "/config", timeout=10))
    names = {d["id"]: next((b["props"].get("value") for b in config["components"]
                            if b["id"] in [t[0] for t in d["targets"]]), None) for d in config["dependencies"]}
    admin = [i for i, label in names.items() if label in ("Roll back", "Retrain now")]
    admin += [d["id"] for d in config["dependencies"] if d.get("api_name") == "rollback"]
    assert len(admin) >= 3  # the two hidden buttons and the API
    for fn_index in admin:
        data = ["round-000"] if names.get(fn_index) != "Retrain now" else []
        ok, out = queue_call(app, fn_index, data)
        assert not ok and "Only an admin" in json.dumps(out), (fn_index, out)
    time.sleep(1)  # a round would have started by now
    assert rounds_dir(app) == before


def test_new_sessions_from_one_address_are_one_visitor(app, good):
    before = len(stored(app.home))
    saved = refused = 0
    for _ in range(20):  # DADC_FLAG_LIMIT=5: a new session per flag does not reset it
        try:
            saved += fresh_session(app, ADDRESS).predict(good, 3, api_name="/flag")["saved"]
        except AppError as e:
            assert "too many flags" in str(e)
            refused += 1
    assert (saved, refused) == (5, 15) and len(stored(app.home)) == before + 5
    assert fresh_session(app, "203.0.113.8").predict(good, 4, api_name="/flag")["saved"]  # someone else can


def test_six_sessions_from_one_address_cast_one_vote_and_none_on_their_own(app, good):
    r = fresh_session(app, "203.0.113.20").predict(good, 5, api_name="/flag")
    for _ in range(6):
        out = fresh_session(app, "203.0.113.21").predict(r["id"], False, api_name="/verify")
    assert (out["agree"], out["disagree"]) == (0, 1)
    with pytest.raises(AppError, match="own"):  # the flagger, from a new session
        fresh_session(app, "203.0.113.20").predict(r["id"], True, api_name="/verify")


def test_a_30_mb_upload_is_refused_before_it_is_read(app):
    import http.client
    from urllib.parse import urlparse

    u = urlparse(app.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/gradio_api/upload")
    conn.putheader("Content-Type", "multipart/form-data; boundary=b0undary")
    conn.putheader("Content-Length", str(30 * 1024 * 1024))
    conn.endheaders()  # no body sent: the answer comes from the declared size alone
    r = conn.getresponse()
    assert r.status == 413 and b"too large" in r.read()
    conn.close()


def test_an_8000px_canvas_gets_a_clear_error_within_a_second(app, tmp_path):
    huge_png(tmp_path / "big.png", side=8000)
    c = fresh_session(app, "203.0.113.30")
    value = {"background": None, "layers": [], "composite": None}
    from gradio_client import handle_file

    value["background"] = handle_file(str(tmp_path / "big.png"))
    t = time.perf_counter()
    with pytest.raises(AppError, match="too large.*4096 px a side"):
        c.predict(value, api_name="/predict")
    assert time.perf_counter() - t < 5  # generous on a shared CI core; typically well under 1 s


# --- limits with no HTTP in them -------------------------------------------------------------------

@pytest.fixture
def studio_for(tmp_path, round0, monkeypatch):  # noqa: F811
    from dadc import config
    from dadc.config import RoundConfig
    from dadc.studio.service import Studio

    def make(**env):
        home = mnist_into(tmp_path / uuid.uuid4().hex)
        monkeypatch.setenv("DADC_HOME", str(home))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return Studio(config.from_env(), round0=round0, round_cfg=RoundConfig(**TINY))
    return make


def canvas_of(mnist, i):  # noqa: F811
    from test_app import draw

    return draw(mnist["test_x"][i], rng=np.random.default_rng(i))


def test_anonymous_budget_then_log_in(studio_for, mnist):  # noqa: F811
    from dadc.studio.service import StudioError, Visitor

    s = studio_for(DADC_FLAG_BUDGET="3", DADC_THRESHOLD="1000")
    for i in range(3):
        s.flag(canvas_of(mnist, i), 1, f"anon-{i}")
    with pytest.raises(StudioError, match="log in to keep flagging"):
        s.flag(canvas_of(mnist, 3), 1, "anon-new")
    assert s.flag(canvas_of(mnist, 3), 1, Visitor("ada", username="ada"))["saved"]  # logged in: not budgeted
    assert s.store.count() == 4


def test_store_cap_refuses_with_nothing_half_written(studio_for, mnist):  # noqa: F811
    from dadc.studio.service import StudioError

    s = studio_for(DADC_MAX_FLAGS="2", DADC_THRESHOLD="1000")
    s.flag(canvas_of(mnist, 0), 1, "a")
    s.flag(canvas_of(mnist, 1), 1, "b")
    files_before = sorted(p.name for p in s.store.dir.rglob("*"))
    with pytest.raises(StudioError, match="collection is full"):
        s.flag(canvas_of(mnist, 2), 1, "c")
    assert s.store.count() == 2 and sorted(p.name for p in s.store.dir.rglob("*")) == files_before


def test_vote_login(studio_for, mnist):  # noqa: F811
    from dadc.studio.service import StudioError, Visitor

    s = studio_for(DADC_VOTE_LOGIN="1", DADC_THRESHOLD="1000")
    r = s.flag(canvas_of(mnist, 0), 1, "anon-a")
    with pytest.raises(StudioError, match="Log in"):
        s.vote(r["id"], True, "anon-b")
    assert s.vote(r["id"], True, Visitor("bea", username="bea"))["agree"] == 1


def test_token_is_scrubbed_before_the_message_is_cut():
    from dadc.hub.sync import HubStatus

    token = "hf_" + "a" * 34
    log = HubStatus(token)
    for cut in range(260, 305):  # wherever the 300-character cut falls, not even part of the token stays
        msg, _ = log.explain(RuntimeError("x" * cut + token), "pushing", "retried")
        assert token[:8] not in msg


def test_page_says_what_is_stored_before_the_first_flag(app):
    config = json.load(urllib.request.urlopen(app.url + "/config", timeout=10))
    texts = " ".join(str(b["props"].get("value")) for b in config["components"] if b.get("type") == "markdown")
    assert "What is kept when you flag" in texts and "CC BY 4.0" in texts and "username" in texts


def file_route(app, path):
    """GET Gradio's file route for an absolute path on the server, as any script can: (status, body)."""
    try:
        with urllib.request.urlopen(f"{app.url}/gradio_api/file={path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_no_file_of_the_flag_store_is_served_only_copies_of_the_pictures_shown(app, good):
    """Issue 25, finding 1: Gradio's file route served every file under DADC_HOME/flags (the app
    passed the store's folder as allowed_paths): the rows with every flagger's id, the votes, the
    replica id, retracted canvases. Now the page gets pixels, and Gradio serves its own copy."""
    flagger, voter = fresh_session(app, "198.51.100.31"), fresh_session(app, "198.51.100.32")
    receipt = flagger.predict(good, 4, api_name="/flag")
    replica = (app.home / "flags" / "replica").read_text().strip()
    folder = app.home / "flags" / "data" / replica
    secrets_ = [folder / "metadata.jsonl", app.home / "flags" / "replica", folder / f"images/{receipt['id']}.png",
                folder / f"images/{receipt['id']}-canvas.png", app.home / "flags" / "README.md",
                app.home / "identity.key", app.home / "rounds" / "CURRENT"]
    flagger.predict(receipt["id"], api_name="/retract")  # a retracted canvas is no more public than any
    for path in secrets_ + [folder / "votes.jsonl"]:
        if path.exists():
            status, body = file_route(app, path)
            assert status in (403, 404) and b"session" not in body, (path, status)
    flagger.predict(good, 5, api_name="/flag")  # one to show
    picture, *_ = voter.predict(api_name="/verify_next")  # the Verify tab still shows a drawing:
    assert picture and Path(picture).stat().st_size > 0  # gradio_client fetched the served copy


@pytest.mark.parametrize("text", ["HF_TOKEN is not set", "a_b#c*d", "<img src=x onerror=alert(1)> & \"q\" 's'",
                                  "[link](http://evil) ![i](j) `code`", "back\\slash", "&#95; &amp;"])
def test_text_from_outside_reads_exactly_as_it_was_on_the_page(text):
    """Issue 25, finding 14: md() escaped its own entities, so every visitor read "HF&#95;TOKEN" on the
    dashboard. What the browser shows (the entities decoded) is the text itself, with no markup left."""
    import html

    from dadc.web.ui import md

    shown = md(text)
    assert html.unescape(shown) == text
    assert not set(shown) & set("<>\"'*_[]`\\") and "&" not in shown.replace("&#", "")


# --- issue 26, finding 8: Gradio's mocked login is no login ----------------------------------------

class _WhoAmI:
    """A stand-in for the Hub's /api/whoami-v2 (all Gradio's mocked login asks of the Hub): the
    token's owner is "tester", the app's only admin."""

    def __enter__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({"name": "tester", "fullname": "Tester", "avatarUrl": "", "type": "user",
                                   "orgs": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def plain_login(app):
    """What a script does: GET /login/huggingface and follow the redirects, keeping the cookies set."""
    import http.client
    from urllib.parse import urljoin, urlparse

    url, cookies = app.url + "/login/huggingface", {}
    for _ in range(4):
        u = urlparse(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""),
                     headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())})
        r = conn.getresponse()
        r.read()
        for header in r.headers.get_all("set-cookie") or []:
            name, _, rest = header.partition("=")
            cookies[name.strip()] = rest.split(";", 1)[0]
        conn.close()
        if r.status not in (301, 302, 303, 307, 308):
            break
        url = urljoin(url, r.headers["location"])
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def test_a_spaces_variables_off_a_space_log_nobody_in_as_the_tokens_owner(round0, tmp_path_factory):  # noqa: F811
    """Finding 8: SPACE_ID and OAUTH_CLIENT_ID set off a real Space (SYSTEM=spaces is what Spaces
    set) made the app add its login button; Gradio then mocks the login with the machine's HF token,
    so a plain GET of /login/huggingface logged an anonymous script in as the token's owner, an
    admin, who may roll back. Now the app is not on a Space there: no login, no admin."""
    with _WhoAmI() as hub:
        a = App(tmp_path_factory.mktemp("mocked-login") / "home", round0, SPACE_ID="tester/dadc",
                OAUTH_CLIENT_ID="not-a-real-client", HF_TOKEN="hf_fake_write_token", HF_ENDPOINT=hub,
                HF_HUB_OFFLINE="0", DADC_ADMINS="tester", DADC_THRESHOLD="1000")
        try:
            before = rounds_dir(a)
            cookie = plain_login(a)
            c = Client(a.url, verbose=False, headers={"Cookie": cookie, "X-Forwarded-For": "203.0.113.60"})
            with pytest.raises(AppError, match="Only an admin may roll back"):
                c.predict("round-000", api_name="/rollback")
            assert rounds_dir(a) == before
        finally:
            a.stop()

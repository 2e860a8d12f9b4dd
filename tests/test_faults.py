"""Faults a real deployment meets, against `python app.py` really launched (test_app.py's helpers):
the process SIGKILLed while many clients flag, a corrupt round on disk, a retraining round that
raises, the Hub down for the whole run until now (tests/fake_hub.py on the app's HF_ENDPOINT)."""
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fake_hub import FakeHub, Repo
from test_app import (App, canvas_file, flag_n, free_port, history, mnist, round0, stored,  # noqa: F401
                      wait_for_attempts)

pytestmark = pytest.mark.slow  # whole processes killed, restarted, a Hub down: 10-20 s each (pytest.ini)

CLIENTS = 16


def test_sigkill_while_flagging_loses_no_acknowledged_flag(tmp_path, round0, mnist):  # noqa: F811
    """16 clients flag in a loop; the app is SIGKILLed mid-stream and restarted on the same
    DADC_HOME: every flag that was acknowledged (saved=True) is there exactly once, nothing torn."""
    home = tmp_path / "home"
    a = App(home, round0, DADC_THRESHOLD="100000")
    value = canvas_file(tmp_path / "c.png", mnist["test_x"][3])
    acked, lock, stop = [], threading.Lock(), threading.Event()
    errors = Counter()

    def one_client(k):
        try:
            c = a.client()
        except Exception as e:  # the kill came before this client connected
            errors[type(e).__name__] += 1
            return
        j = 0
        while not stop.is_set():
            try:
                r = c.predict(value, (k + j) % 10, api_name="/flag")
            except Exception as e:  # the app died under this request: not acknowledged
                errors[type(e).__name__] += 1
                return
            assert r["saved"] is True
            with lock:
                acked.append(r["id"])
            j += 1

    threads = [threading.Thread(target=one_client, args=(k,), daemon=True) for k in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        deadline = time.time() + 90
        while len(acked) < 3 * CLIENTS and time.time() < deadline:  # kill mid-stream, writes in flight
            time.sleep(0.05)
        assert acked, "no flag was acknowledged before the kill"
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(30)
    finally:
        stop.set()
        until = time.time() + 60  # one bound for all (a client stuck on the dead socket is a daemon)
        for t in threads:
            t.join(max(0.1, until - time.time()))
        a.log.close()
    with lock:
        acked_ids = list(acked)
    b = App(home, round0, DADC_THRESHOLD="100000")  # restart on the same home
    try:
        rows = stored(home)
        ids = Counter(r["id"] for r in rows)
        assert all(n == 1 for n in ids.values()), "a flag stored twice"
        missing = [i for i in acked_ids if i not in ids]
        assert not missing, f"{len(missing)} acknowledged flags lost"
        assert len(rows) >= len(acked_ids)  # at most a few stored whose receipt never reached the client
        folder = next((home / "flags" / "data").iterdir())
        assert all((folder / r["file_name"]).exists() for r in rows)
        r = b.client().predict(value, 5, api_name="/flag")  # serving, and appends after the repair
        assert r["saved"] and len(stored(home)) == len(rows) + 1
        print(f"acknowledged {len(acked_ids)}, stored {len(rows)}, client errors at the kill {dict(errors)}")
    finally:
        b.stop()


def corrupt_copy(home, round0, name="round-001"):  # noqa: F811
    dest = home / "rounds" / name
    shutil.copytree(round0, dest)
    weights = dest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated: the header promises more
    return dest


def seed_home(home, round0):  # noqa: F811
    shutil.copytree(round0, home / "rounds" / "round-000")


def test_corrupt_round_that_is_not_current_leaves_serving_alone(tmp_path, round0, mnist):  # noqa: F811
    home = tmp_path / "home"
    seed_home(home, round0)
    corrupt_copy(home, round0)
    (home / "rounds" / "CURRENT").write_text("round-000\n")
    a = App(home, round0)
    try:
        c = a.client()
        r = c.predict(canvas_file(tmp_path / "c.png", mnist["test_x"][0]), 1, api_name="/flag")
        assert r["saved"] and r["round"] == "round-000"
    finally:
        a.stop()


def test_corrupt_newest_round_starts_on_the_last_good_one(tmp_path, round0, mnist):  # noqa: F811
    home = tmp_path / "home"
    seed_home(home, round0)
    corrupt_copy(home, round0)
    (home / "rounds" / "CURRENT").write_text("round-001\n")  # as a promotion leaves it
    a = App(home, round0)
    try:
        r = a.client().predict(canvas_file(tmp_path / "c.png", mnist["test_x"][0]), 1, api_name="/flag")
        assert r["saved"] and r["round"] == "round-000"
    finally:
        a.stop()


def test_a_round_that_raises_keeps_the_old_round_and_records_why(tmp_path, round0, mnist):  # noqa: F811
    """A negative learning rate makes training raise inside the background round: the app keeps
    serving round 0 and history.jsonl says why the round failed."""
    a = App(tmp_path / "home", round0, DADC_ROUND_LR="-1")
    try:
        c = a.client()
        for i in range(3):  # DADC_THRESHOLD=3
            value = canvas_file(tmp_path / f"r{i}.png", mnist["test_x"][i])
            assert c.predict(value, int(mnist["test_y"][i]), api_name="/flag")["saved"]
        [attempt] = wait_for_attempts(a)
        assert attempt["passed"] is False and "the round failed" in attempt["reasons"][0]
        assert "lr" in attempt["reasons"][0]
        assert not (a.home / "rounds" / "round-001").exists()
        r = c.predict(canvas_file(tmp_path / "x.png", mnist["test_x"][4]), 4, api_name="/flag")
        assert r["saved"] and r["round"] == "round-000"
        assert a.proc.poll() is None
    finally:
        a.stop()


# --- the Hub down for the whole run so far, then up ----------------------------------------------

TOKEN = "hf_fake_write_token"  # the one FakeHub accepts
DATASET = "tester/flags"


class DownHub:
    """A Hub that is there but failing: every request on the port answers 503 (counted, so a test
    can see the app kept trying). stop() frees the port for the real (fake) Hub."""

    def __init__(self, port):
        self.port, self.requests = port, []
        down = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                down.requests.append((self.command, self.path))
                body = b'{"error": "Service Unavailable"}'
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = answer

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def hub_app(home, round0, port, **env):  # noqa: F811
    return App(home, round0, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{port}",
               DADC_DATASET_REPO=DATASET, DADC_PUSH_EVERY="0.02", DADC_THRESHOLD="100000", **env)


def hub_rows(hub, repo=DATASET):
    """The flags on the Hub: the parquet shards' rows, and those of the earlier layout's folders
    (metadata.jsonl; earlier_run_on_the_hub seeds one)."""
    if ("dataset", repo) not in hub.repos:
        return []
    return hub.shard_rows(repo) + [json.loads(line) for path, data in hub.files(repo).items()
                                   if path.endswith("metadata.jsonl") for line in data.decode().splitlines()
                                   if line.strip()]


def dashboard_status(app):
    """The dashboard's status text as the page gets it: the page's own (private) `tick` event, run
    through Gradio's queue as the browser runs it (gradio_client cannot call a private event)."""
    config = json.load(urllib.request.urlopen(app.url + "/config", timeout=10))
    dep = next(d for d in config["dependencies"] if d.get("api_name") == "tick")
    session = uuid.uuid4().hex
    join = urllib.request.Request(
        app.url + "/gradio_api/queue/join", headers={"Content-Type": "application/json"},
        data=json.dumps({"data": [], "fn_index": dep["id"], "trigger_id": dep["targets"][0][0],
                         "session_hash": session, "event_data": None}).encode())
    urllib.request.urlopen(join, timeout=10).read()
    with urllib.request.urlopen(f"{app.url}/gradio_api/queue/data?session_hash={session}", timeout=30) as stream:
        for line in stream:
            if line.startswith(b"data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    assert msg.get("success"), msg
                    return msg["output"]["data"][0]
    raise AssertionError("the dashboard's status never came")


def wait_until(cond, timeout, app, what):
    """Poll cond() until true; fail with `what` (a str, or a function for the state at the end)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        assert app.proc.poll() is None, (app.home / "app.log").read_text()[-3000:]
        time.sleep(0.25)
    what = what() if callable(what) else what
    raise AssertionError(f"{what} after {timeout} s; app log: " + (app.home / "app.log").read_text()[-3000:])


@pytest.mark.parametrize("outage", ["refused", "503"])
def test_hub_down_for_the_whole_run_then_up_everything_arrives(tmp_path, round0, mnist, outage):  # noqa: F811
    """The Hub is unreachable from before the app starts (nothing listening on HF_ENDPOINT, or a Hub
    answering 503 to everything): start-up's restore and create_repo fail, yet the app starts and
    flags are acknowledged, kept locally and shown as pending. Then the Hub comes up on the same
    endpoint: with no restart, every acknowledged flag arrives in the dataset repo, exactly once."""
    port = free_port()
    down = DownHub(port) if outage == "503" else None  # "refused": nothing listens on the port
    hub = FakeHub(port=port)
    a = hub_app(tmp_path / "home", round0, port)
    try:
        c = a.client()
        receipts = flag_n(c, mnist, tmp_path, 6)
        assert all(r["saved"] is True for r in receipts)
        ids = sorted(r["id"] for r in receipts)
        assert sorted(r["id"] for r in stored(a.home)) == ids
        # still down: the app keeps trying (503: the attempts are seen) and keeps serving
        if down is not None:
            wait_until(lambda: len(down.requests) >= 4, 30, a, "the app did not retry the Hub")
        else:
            time.sleep(3)  # > two connection attempts at DADC_PUSH_EVERY = 1.2 s
        status = dashboard_status(a)
        assert "last push not yet" in status and "6 pending" in status, status
        assert "connecting to the Hub failed" in status and TOKEN not in status, status
        assert ("503" if down else "cannot reach the Hub") in status, status
        assert c.predict(canvas_file(tmp_path / "p.png", mnist["test_x"][9]), api_name="/predict")["confidences"]
        assert a.proc.poll() is None

        tried = len(down.requests) if down is not None else "?"
        if down is not None:
            down.stop()
        hub.start()  # up, on the endpoint the app was started with
        wait_until(lambda: sorted(r["id"] for r in hub_rows(hub)) == ids, 60, a,
                   lambda: f"the acknowledged flags did not all reach the Hub (it has {len(hub_rows(hub))} of 6)")
        assert hub.repos[("dataset", DATASET)].private  # created now, private by default
        wait_until(lambda: "0 pending" in dashboard_status(a), 20, a, "the dashboard still shows pending flags")
        status = dashboard_status(a)
        assert "last push not yet" not in status and "failed" not in status, status
        more = flag_n(c, mnist, tmp_path, 1, start=6)  # and from now on, as usual
        wait_until(lambda: len(hub_rows(hub)) == 7, 30, a, "a flag after the outage did not reach the Hub")
        assert sorted(r["id"] for r in hub_rows(hub)) == sorted(ids + [more[0]["id"]])
        print(f"outage {outage}: {tried} failed Hub requests seen while down; "
              f"{hub.commits(DATASET)} commits after")
    finally:
        a.stop()
        hub.stop()
        if down is not None:
            down.stop()


def earlier_run_on_the_hub(hub, tmp_path, mnist, n=3):  # noqa: F811
    """The dataset repo as an earlier replica (a Space before its restart) left it: n flags pushed."""
    from dadc.store import FlagStore

    store = FlagStore(tmp_path / "earlier-home")
    ids = [store.append(mnist["test_x"][20 + i], int(mnist["test_y"][20 + i]), prediction=0, confidences=[0.1] * 10,
                        round=0, visitor="anon-earlier") for i in range(n)]
    files = {p.relative_to(store.root).as_posix(): p.read_bytes() for p in store.dir.rglob("*") if p.is_file()}
    repo = hub.repos[("dataset", DATASET)] = Repo(DATASET, "dataset", private=True)
    repo.commits.append((uuid.uuid4().hex + uuid.uuid4().hex[:8], files))
    return ids


@pytest.mark.parametrize("when", [
    "hub-up-at-start",  # the control: what restore() does when it can
    "down-then-up",
    "down-then-up-then-restart",
])
def test_a_fresh_start_gets_the_earlier_flags_from_the_hub(tmp_path, round0, mnist, when):  # noqa: F811
    """A Space restarts on an empty disk; its dataset repo holds an earlier replica's flags. With the
    Hub up, start-up restores them ("hub-up-at-start"). With the Hub down at start (nothing listening
    on HF_ENDPOINT) while people flag, then up: the new flags arrive (as above), and the earlier
    flags must come back into the app too, with no restart ("down-then-up"), or at the latest when
    the app is restarted with the Hub up ("down-then-up-then-restart")."""
    port = free_port()
    hub = FakeHub(port=port)
    earlier = earlier_run_on_the_hub(hub, tmp_path, mnist)
    if when == "hub-up-at-start":
        hub.start()
    home = tmp_path / "home"
    a = hub_app(home, round0, port)
    try:
        receipts = flag_n(a.client(), mnist, tmp_path, 2)
        assert all(r["saved"] for r in receipts)
        if when != "hub-up-at-start":
            hub.start()  # up, on the endpoint the app was started with
        new = {r["id"] for r in receipts}
        wait_until(lambda: new <= {r["id"] for r in hub_rows(hub)}, 60, a, "the new flags did not reach the Hub")
        assert set(earlier) <= {r["id"] for r in hub_rows(hub)}  # the earlier flags are still on the Hub
        if when == "down-then-up-then-restart":
            a.stop()
            a = hub_app(home, round0, port)  # restore() runs before the app serves
        try:
            wait_until(lambda: set(earlier) <= {r["id"] for r in stored(home)}, 8, a,
                       "the earlier flags on the Hub never came back into the app")
        finally:
            print(f"{when}: the app has {len(stored(home))} flags; the Hub has {len(hub_rows(hub))}")
        assert sorted(r["id"] for r in stored(home)) == sorted(earlier + list(new))
    finally:
        a.stop()
        hub.stop()

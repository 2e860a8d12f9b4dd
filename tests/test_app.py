"""The app as users and scripts meet it: `python app.py` really launched on a free port, called with
gradio_client over HTTP. Real files under a tmp DADC_HOME, a real (small) round 0, real retraining."""
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from dadc.synth.canvas import paste_mnist as draw
from test_rounds import TINY, mnist_into, train_round0

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ADDRESSES = iter(f"198.51.{n // 250}.{n % 250 + 1}" for n in range(60_000))  # documentation range


def next_address():
    return next(_ADDRESSES)


class App:
    """`python app.py` in a subprocess, on its own DADC_HOME and port; stopped at the end."""

    def __init__(self, home, round0, **env):
        self.home = Path(home)
        mnist_into(self.home)
        dest = self.home / "rounds" / "round-000"
        if not dest.exists():  # the Registry seeds from models/round-000 only when it has no rounds
            dest.mkdir(parents=True)
            for f in round0.iterdir():
                (dest / f.name).write_bytes(f.read_bytes())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, "DADC_HOME": str(self.home), "GRADIO_SERVER_NAME": "127.0.0.1",
                "GRADIO_SERVER_PORT": str(self.port), "PYTHONPATH": str(ROOT), "DADC_THRESHOLD": "3",
                **{f"DADC_ROUND_{k.upper()}": str(v) for k, v in TINY.items()}, **env}
        full.pop("GRADIO_TEMP_DIR", None)
        self.log = open(self.home / "app.log", "w")
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, (self.home / "app.log").read_text()
            try:
                urllib.request.urlopen(self.url + "/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the app did not start: " + (self.home / "app.log").read_text())

    def client(self, address=None):
        """A visitor: each client comes from its own address unless one is given. The app knows a
        visitor by address (X-Forwarded-For, which the server trusts from loopback as from a Space's
        proxy), never by the session id a client picks."""
        return Client(self.url, verbose=False, headers={"X-Forwarded-For": address or next_address()})

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def round0(tmp_path_factory):
    return train_round0(tmp_path_factory.mktemp("round0") / "round-000")


@pytest.fixture(scope="module")
def mnist(round0):
    from dadc.model import mnist as data

    return data.fetch(round0.parent / "mnist-home", log=lambda m: None)


@pytest.fixture(scope="module")
def app(tmp_path_factory, round0):
    a = App(tmp_path_factory.mktemp("home"), round0, DADC_ROUND_CLEAN_DROP="1", DADC_ROUND_ROBUST_DROP="1")
    yield a
    a.stop()


def canvas_file(path, digit28, **kw):
    draw(digit28, **kw).save(path)
    return {"background": handle_file(str(path)), "layers": [], "composite": None}


def stored(home):
    rows = []
    for f in (Path(home) / "flags" / "data").glob("*/metadata.jsonl"):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def test_predict_reads_drawn_digits_and_refuses_to_guess_on_blank(app, mnist, tmp_path):
    c = app.client()
    right = 0
    for i in range(10):
        value = canvas_file(tmp_path / f"{i}.png", mnist["test_x"][i], size=(448, 448), height=200 + 20 * i,
                            fmt=["RGBA", "layer", "RGB", "L"][i % 4], rng=np.random.default_rng(i))
        out = c.predict(value, api_name="/predict")
        assert len(out["confidences"]) == 3 and out["label"] == out["confidences"][0]["label"]
        assert sum(x["confidence"] for x in out["confidences"]) <= 1.0001
        right += out["label"] == str(mnist["test_y"][i])
    assert right >= 8  # a small round 0: most, not all
    blank = c.predict({"background": None, "layers": [], "composite": None}, api_name="/predict")
    assert blank["label"] == "draw a digit" and not blank.get("confidences")


def test_flag_stores_the_example_with_its_receipt(app, mnist, tmp_path):
    c = app.client()
    value = canvas_file(tmp_path / "f.png", mnist["test_x"][0], size=(600, 500), height=300)
    before = len(stored(app.home))
    r = c.predict(value, 7 if mnist["test_y"][0] != 7 else 1, api_name="/flag")
    assert r["saved"] is True and isinstance(r["id"], str) and r["round"] == "round-000"
    assert r["fooled"] == (r["prediction"] != r["label"]) and "round 0" in r["message"]
    rows = stored(app.home)
    assert len(rows) == before + 1 and rows[-1]["id"] == r["id"] and rows[-1]["label"] == r["label"]
    folder = next((app.home / "flags" / "data").iterdir())
    assert (folder / rows[-1]["file_name"]).exists() and (folder / rows[-1]["canvas_file_name"]).exists()
    assert rows[-1]["session"].startswith("anon-") and len(rows[-1]["confidences"]) == 10


def huge_png(path, side=20000):
    """A valid 20000x20000 greyscale PNG that is small on disk (built row by row, never in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z, row, parts = zlib.compressobj(9), b"\x00" + b"\xff" * side, []
    for _ in range(side):
        parts.append(z.compress(row))
    parts.append(z.flush())
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                           + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_bad_input_gets_a_clear_message_and_stores_nothing(app, mnist, tmp_path):
    c = app.client()
    good = canvas_file(tmp_path / "g.png", mnist["test_x"][1])
    before = len(stored(app.home))
    for digit in (11, -1, "7", 2.5, True, None):
        with pytest.raises(AppError, match="digit"):
            c.predict(good, digit, api_name="/flag")
    (tmp_path / "junk.png").write_bytes(b"these bytes are not an image")
    junk = {"background": handle_file(str(tmp_path / "junk.png")), "layers": [], "composite": None}
    with pytest.raises(AppError, match="not an image"):
        c.predict(junk, api_name="/predict")
    with pytest.raises(AppError, match="not an image"):
        c.predict(junk, 3, api_name="/flag")
    huge_png(tmp_path / "huge.png")
    huge = {"background": handle_file(str(tmp_path / "huge.png")), "layers": [], "composite": None}
    with pytest.raises(AppError, match="too large"):
        c.predict(huge, api_name="/predict")
    with pytest.raises(AppError, match="draw a digit"):
        c.predict({"background": None, "layers": [], "composite": None}, 3, api_name="/flag")
    from PIL import Image
    Image.new("RGBA", (448, 448), (0, 0, 0, 255)).save(tmp_path / "ink.png")
    ink = {"background": handle_file(str(tmp_path / "ink.png")), "layers": [], "composite": None}
    assert "covered in ink" in c.predict(ink, api_name="/predict")["label"]
    with pytest.raises(AppError, match="covered in ink"):
        c.predict(ink, 3, api_name="/flag")
    assert len(stored(app.home)) == before
    assert app.proc.poll() is None  # still serving
    assert c.predict(good, api_name="/predict")["confidences"]


def test_verify_shows_others_examples_never_your_own(app, mnist, tmp_path):
    alice, bob = app.client(), app.client()
    r = alice.predict(canvas_file(tmp_path / "a.png", mnist["test_x"][2]), int(mnist["test_y"][2]), api_name="/flag")
    seen = set()
    for _ in range(20):  # bob goes through everything there is to verify
        *_, ex = bob.predict(api_name="/verify_next")
        if not ex:
            break
        assert set(ex) == {"id", "label"}  # no server paths leak
        seen.add(ex["id"])
        out = bob.predict(ex["id"], True, api_name="/verify")
        assert out["agree"] >= 1
    assert r["id"] in seen
    for _ in range(5):
        *_, ex = alice.predict(api_name="/verify_next")
        assert not ex or ex["id"] != r["id"]
        if ex:
            alice.predict(ex["id"], False, api_name="/verify")
    with pytest.raises(AppError, match="own"):
        alice.predict(r["id"], True, api_name="/verify")
    votes = [json.loads(line) for f in (app.home / "flags" / "data").glob("*/votes.jsonl")
             for line in f.read_text().splitlines()]
    assert any(v["id"] == r["id"] and v["agree"] for v in votes)


def history(home):
    path = Path(home) / "rounds" / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_attempts(app, n=1, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [h for h in history(app.home) if h.get("event") == "attempt"]
        if len(done) >= n:
            return done
        assert app.proc.poll() is None, (app.home / "app.log").read_text()
        time.sleep(0.5)
    raise AssertionError(f"no round attempt after {timeout} s: " + (app.home / "app.log").read_text()[-2000:])


def flag_n(client, mnist, tmp_path, n, start=0):
    out = []
    for i in range(start, start + n):
        value = canvas_file(tmp_path / f"r{i}.png", mnist["test_x"][i], rng=np.random.default_rng(i))
        out.append(client.predict(value, int((mnist["test_y"][i] + 1) % 10), api_name="/flag"))  # a wrong label
    return out


@pytest.mark.slow
def test_threshold_promotes_a_round_then_rollback_serves_the_old_one(tmp_path, round0, mnist):
    a = App(tmp_path / "home", round0, DADC_ROUND_CLEAN_DROP="1", DADC_ROUND_ROBUST_DROP="1")
    try:
        c = a.client()
        receipts = flag_n(c, mnist, tmp_path, 3)  # DADC_THRESHOLD=3
        assert "more until the next round" in receipts[0]["message"]
        [attempt] = wait_for_attempts(a)
        assert attempt["passed"] and attempt["round"] == "round-001" and attempt["claimed"] == 3
        assert (a.home / "rounds" / "round-001" / "model.safetensors").exists()
        assert flag_n(c, mnist, tmp_path, 1, start=3)[0]["round"] == "round-001"  # hot-swapped, no restart
        # rollback is for admins (DADC_ADMINS, logged in): an anonymous call changes nothing
        for name in ("round-000", "round-042"):
            with pytest.raises(AppError, match="Only an admin may roll back"):
                c.predict(name, api_name="/rollback")
        assert (a.home / "rounds" / "CURRENT").read_text().strip() == "round-001"
        assert not any(h["event"] == "rollback" for h in history(a.home))
        assert flag_n(c, mnist, tmp_path, 1, start=4)[0]["round"] == "round-001"
    finally:
        a.stop()


@pytest.mark.slow
def test_gate_rejection_keeps_the_round_and_says_why(tmp_path, round0, mnist):
    a = App(tmp_path / "home", round0, DADC_ROUND_CLEAN_DROP="-1")  # no candidate can pass
    try:
        c = a.client()
        flag_n(c, mnist, tmp_path, 3)
        [attempt] = wait_for_attempts(a)
        assert not attempt["passed"] and "clean accuracy" in attempt["reasons"][0]
        assert not (a.home / "rounds" / "round-001").exists()
        assert flag_n(c, mnist, tmp_path, 1, start=3)[0]["round"] == "round-000"
    finally:
        a.stop()


@pytest.mark.slow
def test_many_clients_flagging_at_once(tmp_path, round0, mnist):
    """16 clients x 3 flags at the same moment: every flag stored exactly once, and one round per
    threshold crossing (20 and 40 of 48: exactly two rounds)."""
    from concurrent.futures import ThreadPoolExecutor

    a = App(tmp_path / "home", round0, DADC_THRESHOLD="20", DADC_ROUND_CLEAN_DROP="1", DADC_ROUND_ROBUST_DROP="1")
    try:
        value = canvas_file(tmp_path / "c.png", mnist["test_x"][5])

        def one_client(k):
            c = a.client()
            return [c.predict(value, (k + j) % 10, api_name="/flag")["id"] for j in range(3)]
        with ThreadPoolExecutor(16) as pool:
            ids = [i for got in pool.map(one_client, range(16)) for i in got]
        rows = stored(a.home)
        assert len(ids) == len(set(ids)) == 48 and sorted(r["id"] for r in rows) == sorted(ids)
        attempts = wait_for_attempts(a, 2)
        # the second starts at the crossing (40), or, if the first is still training then, right
        # after it with everything that came in meanwhile: never lost, never twice
        assert attempts[0]["claimed"] == 20 and 40 <= attempts[1]["claimed"] <= 48
        time.sleep(1)
        assert len([h for h in history(a.home) if h.get("event") == "attempt"]) == 2
    finally:
        a.stop()


def test_dashboard_counts_rates_rounds_and_gallery(tmp_path, round0, mnist, monkeypatch):
    """The dashboard's numbers, in-process (the same Studio the page's events call)."""
    from dadc import config
    from dadc.web import ui
    from dadc.config import RoundConfig
    from dadc.studio.service import Studio

    home = mnist_into(tmp_path / "home")
    monkeypatch.setenv("DADC_HOME", str(home))
    monkeypatch.setenv("DADC_THRESHOLD", "3")
    monkeypatch.setenv("DADC_ADMINS", "ada")
    studio = Studio(config.from_env(), round0=round0, round_cfg=RoundConfig(**TINY, clean_drop=1, robust_drop=1))
    canvases = [draw(mnist["test_x"][i], rng=np.random.default_rng(i)) for i in range(4)]
    for i, c in enumerate(canvases):  # four drawings: four attempts, three flagged as fooling it
        studio.predict(c, f"s{i}")
        studio.predict(c, f"s{i}")  # live prediction while drawing: still one attempt
    receipts = [studio.flag(c, int((mnist["test_y"][i] + 1) % 10), f"s{i}") for i, c in enumerate(canvases[:3])]
    assert all(r["fooled"] or r["prediction"] == r["label"] for r in receipts)
    assert studio.job.wait(120)
    studio.vote(receipts[0]["id"], True, "someone")
    studio.vote(receipts[0]["id"], True, "someone-else")  # votes=2: verified
    d = studio.dashboard()
    counts = {(row["digit"], row["kind"]): row["examples"] for row in d["digits"]}
    assert sum(v for (_, k), v in counts.items() if k == "collected") == 3
    assert sum(v for (_, k), v in counts.items() if k == "verified") == 1
    fooled = sum(r["fooled"] for r in receipts)
    mer = {row["kind"]: row["rate"] for row in d["mer"] if row["round"] == 0}
    assert mer["MER (fooled / attempts)"] == pytest.approx(fooled / 4)
    # one protocol for every round, the gate's: round 0's from the reference round 1 was gated against
    assert {row["round"] for row in d["accuracy"]} == {0, 1} and "gate's protocol" in d["protocol"]
    round1 = studio.registry.metrics("round-001")
    reference = round1["reference"]
    assert d["history"][0][4:6] == [f"{round1['val_clean_acc']:.2%}", f"{round1['val_robust_acc']:.2%}"]
    assert {row["metric"]: row["accuracy"] for row in d["accuracy"] if row["round"] == 0} == {
        "clean": reference["val_clean_acc"], f"PGD-{studio.cfg.robust_steps}, ε {studio.cfg.eps:g}": reference["val_robust_acc"]}
    assert d["serving"] == "round-001" and d["rounds"] == ["round-000", "round-001"]
    assert "promoted round-001" in d["history"][0][2] and "Serving round-001" in d["status"]
    assert len(d["gallery"]) == fooled and all(Path(p).exists() for p, _ in d["gallery"])
    demo = ui.build(None, studio=studio)  # the page's own dashboard event turns it into Gradio values
    fn = next(f.fn for f in demo.fns.values() if f.name == "show_dashboard")
    shown = dict(zip(ui.dashboard_values(d), fn().values()))  # by part name, in dashboard_values' order
    assert len(shown["per_digit"]) == 20 and len(shown["history"].value["data"]) == 1
    assert len(shown["acc"].value["data"]) == len(d["accuracy"]) >= 4 and shown["acc"].visible
    assert shown["gallery"].count("<img") == fooled
    # an admin's rollback swaps the served round at once; anyone else's is refused
    from dadc.studio.service import StudioError, Visitor

    with pytest.raises(StudioError, match="Only an admin"):
        studio.rollback("round-000", Visitor("mallory", username="mallory"))
    admin = Visitor("ada", username="ada")
    assert studio.rollback("round-000", admin) == {"serving": "round-000"} and studio.predictor.round == "round-000"
    assert studio.dashboard(admin)["admin"] and not studio.dashboard()["admin"]


@pytest.mark.slow
def test_hub_sync_pushes_flags_and_rounds_and_never_shows_the_token(tmp_path, round0, mnist, fake_hub):
    """With HF_TOKEN and the repos set, the app pushes flags (and the promoted round) to the Hub
    (the local fake from conftest, through the real huggingface_hub client); the dashboard says so."""
    token = "hf_fake_write_token"
    a = App(tmp_path / "home", round0, HF_TOKEN=token, HF_HUB_OFFLINE="0", DADC_DATASET_REPO="tester/flags",
            DADC_MODEL_REPO="tester/rounds", DADC_PUSH_EVERY="0.02", DADC_ROUND_CLEAN_DROP="1",
            DADC_ROUND_ROBUST_DROP="1")
    try:
        c = a.client()
        receipts = flag_n(c, mnist, tmp_path, 3)
        assert all(token not in json.dumps(r) for r in receipts)
        [attempt] = wait_for_attempts(a)
        assert attempt["passed"]
        deadline = time.time() + 60
        while time.time() < deadline:
            rows = fake_hub.shard_rows("tester/flags")  # the flags' parquet shards (dadc/hub_layout.py)
            pushed_round = ("model", "tester/rounds") in fake_hub.repos and \
                "rounds/round-001/model.safetensors" in fake_hub.files("tester/rounds", "model")
            if len(rows) == 3 and pushed_round:
                break
            time.sleep(0.5)
        assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in receipts)
        assert pushed_round
        assert token not in (a.home / "app.log").read_text()
    finally:
        a.stop()

"""Issue 25, finding 14 (first half): with DADC_HOME full, the live prediction failed with a null
error (its 28x28 image could not be copied into Gradio's cache) and a nickname with a generic one.
The app runs on a small tmpfs that the test fills: every answer is the prediction or a clear
message, and once there is room again everything works. Skips where tmpfs cannot be mounted (not
root), except under CI."""
import base64
import io
import json
import os
import subprocess
import urllib.request

import pytest
from PIL import Image

from test_app import App, mnist, round0  # noqa: F401 (fixtures)
from test_draw_ux import private_call
from test_public import queue_call


@pytest.fixture
def small_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(home)], capture_output=True, text=True)
    if r.returncode:
        if os.environ.get("CI"):
            pytest.fail(f"CI: cannot mount a tmpfs for the full-disk test: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield home
    subprocess.run(["umount", "-l", str(home)], capture_output=True)


def fill(folder):
    """Write zeros into `folder` until its file system is full; the filler's path."""
    path = folder / "filler"
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass
    return path


def drawing():
    img = Image.new("L", (448, 448), 255)
    img.paste(0, (210, 100, 240, 350))  # a "1"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def nickname_event(app):
    """The queue index of the leaderboard's "Save" (the nickname), as any client can find it."""
    config = json.load(urllib.request.urlopen(app.url + "/config", timeout=30))
    save = next(b["id"] for b in config["components"] if b.get("props", {}).get("value") == "Save")
    return next(d["id"] for d in config["dependencies"] if save in [t[0] for t in d["targets"]])


@pytest.mark.slow
def test_a_full_home_gives_answers_or_clear_messages_and_recovers(small_home, round0):  # noqa: F811
    app = App(small_home, round0)
    try:
        filler = fill(small_home)
        ok, out = private_call(app, "dadc.latest()", [drawing(), 1])  # the page's live prediction
        assert ok, out
        assert out["data"][0]["label"] == "1" and out["data"][1] is None  # the answer; no room for the 28x28
        ok, out = queue_call(app, nickname_event(app), ["Zed"])
        assert not ok and "could not be written" in json.dumps(out), out
        filler.unlink()  # room again
        ok, out = private_call(app, "dadc.latest()", [drawing(), 2])
        assert ok and out["data"][1] is not None  # the 28x28 shown again
        ok, out = queue_call(app, nickname_event(app), ["Zed"])
        assert ok, out
    finally:
        app.stop()

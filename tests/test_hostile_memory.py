"""Hostile canvases against `python app.py`, over raw HTTP (security audit, findings 2 and 11).

Finding 2: a 4096x4096 PNG is ~60 KB on the wire and 64 MiB decoded as RGBA, and Gradio decoded
every image of a Sketchpad value (background, composite, each layer), for any number of requests
at once, and glibc kept the freed pages: 8 such requests took the app from ~0.4 to ~3.9 GiB for
good. Now a value's images are bounded in pixels in all (read from their headers), only the image
the app reads is decoded, box-reduced band by band, /predict and /flag run a few at a time, and
the pages go back to the system; the same through the blob route the browser uses. The app's
memory is read from /proc/<pid>/status (VmRSS; VmHWM, reset before a burst, for the peak).

Finding 11: a drawing PNG stuffed with zTXt chunks made the light events inflate ~60 MB each time.
Now the chunk list is walked before PIL opens the PNG; the CPU the server spends is read from
/proc/<pid>/stat.

The PNGs and the requests are benchmarks/bench_hostile_memory.py's, which prints the figures."""
import json
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from test_app import App, round0  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_hostile_memory as bench  # noqa: E402

GIB = 1 << 30
EVERY_SLOT = {"background": 1, "composite": 1, "layers": 4}  # 6 x 4096^2: 100 Mpx, 384 MiB as RGBA
PAGE_SLOTS = {"background": 1, "composite": 1, "layers": 1}  # what the page fills, at 4096 px
PLAIN_ANCILLARY = [(b"sRGB", b"\x00"), (b"gAMA", b"\x00\x00\xb1\x8f"), (b"pHYs", b"\x00" * 8 + b"\x01")]


@pytest.fixture(scope="module")
def app(round0, tmp_path_factory):  # noqa: F811
    a = App(tmp_path_factory.mktemp("hostile") / "home", round0, DADC_THRESHOLD="100000")  # no training
    yield a
    a.stop()


@pytest.fixture(scope="module")
def hostile(app):
    """The 4096 px PNG uploaded once (its FileData is sent in every slot), and a normal canvas."""
    return (bench.upload(app.url, bench.hostile_png(), "h.png"),
            bench.canvas_value(bench.upload(app.url, bench.drawing_png(), "d.png"), {"background": 1}))


def rss(app):
    return bench.proc_status(app.proc.pid)["VmRSS"]


def warm(app, normal):
    for _ in range(2):
        assert bench.call(app.url, "predict", [normal])[0]
    time.sleep(1)


def test_a_value_over_the_pixel_budget_is_refused_before_decoding(app, hostile):
    fd, normal = hostile
    warm(app, normal)
    idle = rss(app)
    t = time.monotonic()
    ok, payload = bench.call(app.url, "predict", [bench.canvas_value(fd, EVERY_SLOT)])
    assert not ok and "100.7 Mpx" in payload and "at most" in payload, payload
    assert time.monotonic() - t < 5
    assert rss(app) - idle < 64 << 20  # less than one of its six images decoded
    assert bench.call(app.url, "predict", [normal])[0]


def test_the_blob_route_is_bounded_the_same_way(app):
    """The browser's way to send a Sketchpad value: blobs posted one by one, then the value's id."""
    config = json.load(urllib.request.urlopen(app.url + "/config", timeout=30))
    canvas = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "canvas")
    png = bench.hostile_png()

    def blob(blob_id, kind, index=None):
        r = httpx.post(f"{app.url}/gradio_api/component_server/", timeout=60, data={
            "component_id": str(canvas), "session_hash": "s1", "fn_name": "accept_blobs", "type": kind,
            "id": blob_id, "index": "null" if index is None else str(index)},
            files={"file": ("blob.png", png)})
        assert r.status_code == 200, r.text

    for blob_id, layers in (("all", 4), ("page", 1)):
        blob(blob_id, "background")
        blob(blob_id, "composite")
        for i in range(layers):
            blob(blob_id, "layer", i)
    idle = rss(app)
    value = {"id": "all", "background": None, "layers": [], "composite": None}
    ok, payload = bench.call(app.url, "predict", [value])
    assert not ok and "100.7 Mpx" in payload, payload
    ok, payload = bench.call(app.url, "predict", [dict(value, id="page")])
    assert ok and '"label": "1"' in payload, payload  # the composite's bar, read
    assert rss(app) - idle < 256 << 20


@pytest.mark.slow
def test_8_hostile_4096px_canvases_at_once_stay_under_1_gib_and_memory_comes_back(app, hostile):
    fd, normal = hostile
    warm(app, normal)
    idle = rss(app)
    peak, _, answers = bench.hostile_burst(app.url, app.proc.pid, fd, EVERY_SLOT, 8)
    assert peak - idle < GIB, f"peak {peak >> 20} MiB, idle {idle >> 20} MiB"
    assert all(not ok and "Mpx" in payload for ok, payload in answers), answers
    # within the budget: the page's three slots, each 4096 px; one image read, and answered
    peak, _, answers = bench.hostile_burst(app.url, app.proc.pid, fd, PAGE_SLOTS, 8)
    assert peak - idle < GIB, f"peak {peak >> 20} MiB, idle {idle >> 20} MiB"
    assert all(ok for ok, _ in answers), answers
    time.sleep(5)  # the freed pages go back to the system
    assert rss(app) - idle < 384 << 20, f"RSS {rss(app) >> 20} MiB, idle {idle >> 20} MiB"
    ok, payload = bench.call(app.url, "predict", [normal])
    assert ok and "confidences" in payload, payload
    assert app.proc.poll() is None


def cpu_ms_per_call(app, marker, data, n):
    before = bench.cpu_s(app.proc.pid)
    answers = [bench.light_call(app.url, data, marker=marker) for _ in range(n)]
    return (bench.cpu_s(app.proc.pid) - before) * 1e3 / n, answers


def with_chunks(png, chunks):
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + b"".join(bench._chunk(k, d) for k, d in chunks) + png[ihdr_end:]


def test_a_png_with_many_ztxt_chunks_is_refused_by_the_light_events_at_little_cost(app):
    plain = bench.data_url(bench.drawing_png())
    ztxt = bench.data_url(bench.ztxt_png(63))  # 63 x 1 MB of zeros, ~65 KB in all
    colour = bench.data_url(with_chunks(bench.drawing_png(), PLAIN_ANCILLARY))
    bench.light_call(app.url, [plain, 1])
    plain_ms, answers = cpu_ms_per_call(app, "dadc.latest()", [plain, 1], 10)
    assert all(ok for ok, _ in answers)
    t = time.monotonic()
    ztxt_ms, answers = cpu_ms_per_call(app, "dadc.latest()", [ztxt, 1], 10)
    assert time.monotonic() - t < 20
    # cheaper than a plain drawing (refused before PIL opens it); the old code spent ~60 ms more
    assert ztxt_ms < plain_ms + 20, f"server CPU per request: {ztxt_ms:.0f} ms, a plain drawing {plain_ms:.0f} ms"
    for ok, out in answers:
        assert not ok and "more than 8 PNG metadata chunks" in out["error"], out
    ok, out = bench.light_call(app.url, [ztxt, 3], marker="dadc.snapshot(), d")
    assert not ok and "more than 8 PNG metadata chunks" in out["error"], out
    ok, out = bench.light_call(app.url, [colour, 1])  # a few colour chunks, as a browser may write
    assert ok and "confidences" in str(out), out

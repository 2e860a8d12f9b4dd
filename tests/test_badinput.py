"""Bad input through the API of a really launched app (gradio_client over HTTP): every case gets a
clear error or a correct answer, nothing is stored that should not be, and the app keeps serving.
The app and its launch helpers are test_app.py's (one app for the whole file)."""
import io

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from test_app import App, canvas_file, huge_png, mnist, round0, stored  # noqa: F401 (fixtures)

BLANK = {"background": None, "layers": [], "composite": None}


@pytest.fixture(scope="module")
def app(tmp_path_factory, round0):  # noqa: F811
    a = App(tmp_path_factory.mktemp("badhome"), round0, DADC_THRESHOLD="100000",  # no round starts here
            DADC_FLAG_LIMIT="20")
    yield a
    a.stop()


@pytest.fixture(scope="module")
def client(app):
    return app.client()


@pytest.fixture(scope="module")
def good(mnist, tmp_path_factory):  # noqa: F811
    return canvas_file(tmp_path_factory.mktemp("good") / "g.png", mnist["test_x"][0])


def as_canvas(path, key="background"):
    value = dict(BLANK)
    if key == "layers":
        value["layers"] = [handle_file(str(path))]
    else:
        value[key] = handle_file(str(path))
    return value


def img_file(tmp_path, name, img, **save):
    path = tmp_path / name
    img.save(path, **save)
    return path


def digit_image(mnist, mode, size=448):  # noqa: F811
    """MNIST test digit 0 (a 7) as dark ink on white, in the given PIL mode."""
    d = Image.fromarray(255 - mnist["test_x"][0]).resize((size // 2, size // 2), Image.BILINEAR)
    base = Image.new("L", (size, size), 255)
    base.paste(d, (size // 4, size // 4))
    return base.convert(mode)


def check_unchanged(app, before):
    assert len(stored(app.home)) == before, "a bad input was stored"
    assert app.proc.poll() is None, (app.home / "app.log").read_text()[-3000:]


# --- the true digit ------------------------------------------------------------------------------

@pytest.mark.parametrize("digit", [-1, 10, 11, "7", None, 2.5, True, [7], {"d": 7}])
def test_bad_digit_is_refused(app, client, good, digit):
    before = len(stored(app.home))
    with pytest.raises(AppError, match="digit"):
        client.predict(good, digit, api_name="/flag")
    check_unchanged(app, before)


# --- canvases that hold no digit ----------------------------------------------------------------

def test_empty_canvas(app, client):
    before = len(stored(app.home))
    assert client.predict(BLANK, api_name="/predict")["label"] == "draw a digit"
    with pytest.raises(AppError, match="draw a digit"):
        client.predict(BLANK, 3, api_name="/flag")
    check_unchanged(app, before)


@pytest.mark.parametrize("name,img,expect", [
    ("white", Image.new("RGB", (448, 448), "white"), "draw a digit"),
    ("transparent", Image.new("RGBA", (448, 448), (0, 0, 0, 0)), "draw a digit"),
    ("all-ink", Image.new("RGBA", (448, 448), (0, 0, 0, 255)), "covered in ink"),
    ("all-ink-L", Image.new("L", (300, 200), 0), "covered in ink"),
    ("1x1-white", Image.new("RGB", (1, 1), "white"), "draw a digit"),
    ("1x1-black", Image.new("RGB", (1, 1), "black"), "covered in ink"),
])
def test_canvas_with_no_digit(app, client, tmp_path, name, img, expect):
    before = len(stored(app.home))
    value = as_canvas(img_file(tmp_path, f"{name}.png", img))
    assert expect in client.predict(value, api_name="/predict")["label"]
    with pytest.raises(AppError, match=expect):
        client.predict(value, 3, api_name="/flag")
    check_unchanged(app, before)


# --- files that are not (whole) images ------------------------------------------------------------

def test_not_an_image(app, client, tmp_path):
    before = len(stored(app.home))
    for name, data in (("junk.png", b"these bytes are not an image"), ("empty.png", b""),
                       ("zeros.png", bytes(4096)), ("text.txt", b"7\n")):
        (tmp_path / name).write_bytes(data)
        value = as_canvas(tmp_path / name)
        with pytest.raises(AppError, match="not an image"):
            client.predict(value, api_name="/predict")
        with pytest.raises(AppError, match="not an image"):
            client.predict(value, 3, api_name="/flag")
    check_unchanged(app, before)


def test_truncated_png(app, client, tmp_path, mnist):  # noqa: F811
    before = len(stored(app.home))
    buf = io.BytesIO()
    digit_image(mnist, "RGB").save(buf, format="PNG")
    data = buf.getvalue()
    for cut in (len(data) // 2, 40):  # a valid header, then the pixels end early
        (tmp_path / "t.png").write_bytes(data[:cut])
        value = as_canvas(tmp_path / "t.png")
        with pytest.raises(AppError, match="not an image"):
            client.predict(value, api_name="/predict")
        with pytest.raises(AppError, match="not an image"):
            client.predict(value, 3, api_name="/flag")
    check_unchanged(app, before)


def test_too_large(app, client, tmp_path):
    before = len(stored(app.home))
    huge_png(tmp_path / "huge.png")  # 20000x20000, small on disk
    value = as_canvas(tmp_path / "huge.png")
    with pytest.raises(AppError, match="too large"):
        client.predict(value, api_name="/predict")
    with pytest.raises(AppError, match="too large"):
        client.predict(value, 3, api_name="/flag")
    check_unchanged(app, before)


# --- real digits in unusual shapes and modes: a correct answer ---------------------------------------

@pytest.mark.parametrize("mode,fmt", [("CMYK", "JPEG"), ("I;16", "PNG"), ("P", "PNG"), ("LA", "PNG"),
                                      ("L", "PNG"), ("RGB", "WEBP"), ("1", "PNG"), ("I", "TIFF")])
def test_odd_modes_read_the_digit(app, client, tmp_path, mnist, mode, fmt):  # noqa: F811
    img = digit_image(mnist, "L")
    img = img.convert("I").point(lambda v: v * 256).convert("I;16") if mode == "I;16" else img.convert(mode)
    path = img_file(tmp_path, f"d.{fmt.lower()}", img, format=fmt)
    out = client.predict(as_canvas(path), api_name="/predict")
    assert out["label"] == str(mnist["test_y"][0]), (mode, out)


def test_large_image_is_read(app, client, tmp_path, mnist):  # noqa: F811
    path = img_file(tmp_path, "big.png", digit_image(mnist, "L", size=4000))  # 16 Mpx: under the limit
    out = client.predict(as_canvas(path), api_name="/predict")
    assert out["label"] == str(mnist["test_y"][0])


@pytest.mark.parametrize("key", ["composite", "layers"])
def test_other_canvas_fields(app, client, tmp_path, mnist, key):  # noqa: F811
    path = img_file(tmp_path, "d.png", digit_image(mnist, "RGBA"))
    out = client.predict(as_canvas(path, key), api_name="/predict")
    assert out["label"] == str(mnist["test_y"][0])


def test_extra_fields_in_the_canvas_are_ignored(app, client, good, mnist):  # noqa: F811
    before = len(stored(app.home))
    value = {**good, "extra": "x" * 1000, "id": None, "meta": {"a": 1}}
    try:
        out = client.predict(value, api_name="/predict")
    except AppError as e:  # a clear refusal is fine too
        assert str(e)
    else:
        assert out["label"] == str(mnist["test_y"][0])
    check_unchanged(app, before)


@pytest.mark.parametrize("value", ["a string", 7, [1, 2, 3], {"background": "/etc/passwd", "layers": [],
                                                              "composite": None}])
def test_canvas_of_the_wrong_type(app, client, value):
    before = len(stored(app.home))
    for args, api in (((value, 3), "/flag"), ((value,), "/predict")):
        with pytest.raises(AppError, match=r"Nothing done: the canvas must be a Sketchpad value "
                                           r'\{"background", "layers", "composite"\} of images, got '):
            client.predict(*args, api_name=api)
    check_unchanged(app, before)


def test_a_path_on_the_server_is_never_read(app, tmp_path, mnist):  # noqa: F811
    """Raw HTTP (gradio_client would upload a local path itself): a canvas naming a real image on
    the server's disk, outside Gradio's upload cache, is refused and nothing is stored."""
    import json
    import urllib.request

    secret = img_file(tmp_path, "on-the-server.png", digit_image(mnist, "RGB"))
    before = len(stored(app.home))
    for api, data in (("flag", [3]), ("predict", [])):
        value = {"background": {"path": str(secret), "meta": {"_type": "gradio.FileData"}},
                 "layers": [], "composite": None}
        req = urllib.request.Request(f"{app.url}/gradio_api/call/{api}", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"data": [value, *data]}).encode())
        event = json.loads(urllib.request.urlopen(req, timeout=60).read())["event_id"]
        out = urllib.request.urlopen(f"{app.url}/gradio_api/call/{api}/{event}", timeout=60).read().decode()
        assert out.startswith("event: error"), out[:300]
    check_unchanged(app, before)


# --- sessions -------------------------------------------------------------------------------------

def test_huge_session_id_is_hashed(app, good, mnist):  # noqa: F811
    c = app.client()
    # 6000 characters: as long as gradio_client can still put it in the result URL's query (at
    # 100,000 the server stores the flag but httpx refuses the URL that would fetch the receipt)
    c.session_hash = "s" * 6000
    before = len(stored(app.home))
    r = c.predict(good, 3, api_name="/flag")
    assert r["saved"] is True
    rows = stored(app.home)
    assert len(rows) == before + 1 and rows[-1]["id"] == r["id"]
    assert rows[-1]["session"].startswith("anon-") and len(rows[-1]["session"]) < 64
    assert app.proc.poll() is None


def test_flood_from_one_session_is_rate_limited(app, good):
    """DADC_FLAG_LIMIT (20 here) flags a minute from one session are stored; the rest of a flood gets
    a clear message and nothing is stored; other sessions are not held back."""
    c = app.client()
    before = len(stored(app.home))
    ids = [c.predict(good, i % 10, api_name="/flag")["id"] for i in range(20)]
    for _ in range(5):
        with pytest.raises(AppError, match=r"too many flags from this session \(at most 20 a minute\)\. "
                                           r"Try again in \d+ s"):
            c.predict(good, 1, api_name="/flag")
    rows = stored(app.home)
    assert len(rows) == before + 20 and sorted(r["id"] for r in rows[before:]) == sorted(ids)
    assert app.client().predict(good, 2, api_name="/flag")["saved"] is True
    assert len(stored(app.home)) == before + 21


def test_still_serving_after_everything(app, client, good, mnist):  # noqa: F811
    assert client.predict(good, api_name="/predict")["label"] == str(mnist["test_y"][0])

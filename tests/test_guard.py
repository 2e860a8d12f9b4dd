"""dadc.web.bounds and dadc.web.identity against a real Gradio server, through raw HTTP (issue 11, parts 2 and 3).

One small app (a bounded Sketchpad, a function reading it, one returning the caller's identity)
is launched once for the module with bounds.install(); every request goes over a socket."""
import io
import socket
import time

import gradio as gr
import httpx
import pytest
from PIL import Image

from dadc.web import bounds, identity

SECRET = b"test-home-secret"
TTL = 1.0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(w, h):
    buf = io.BytesIO()
    Image.new("L", (w, h), 255).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def app():
    with gr.Blocks() as demo:
        pad = bounds.BoundedSketchpad()
        out = gr.Textbox()
        who = gr.Textbox()

        def size(value):
            c = value["composite"]
            return "none" if c is None else f"{c.shape[1]}x{c.shape[0]}"

        def whoami(request: gr.Request):
            return "|".join([identity.client_identity(request, SECRET, 0),
                             identity.client_identity(request, SECRET, 1),
                             request.session_hash or ""])

        gr.Button("size").click(size, pad, out, api_name="size")
        gr.Button("who").click(whoami, None, who, api_name="whoami")
    kwargs = bounds.install(demo, blob_ttl_s=TTL)
    port = _free_port()
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port,
                        quiet=True, **kwargs)
    try:
        yield pad, f"http://127.0.0.1:{port}/gradio_api"
    finally:
        demo.close()


def _blob(base, pad, *, index=None, kind="layer", data=b"x", blob_id="abc", client=httpx):
    return client.post(f"{base}/component_server/", timeout=60, data={
        "component_id": str(pad._id), "session_hash": "s1", "fn_name": "accept_blobs",
        "type": kind, "id": blob_id, "index": "null" if index is None else str(index)},
        files={"file": ("blob.png", data)})


def _call(base, api_name, data, session_hash, client=httpx):
    r = client.post(f"{base}/call/{api_name}", json={"data": data, "session_hash": session_hash},
                    timeout=60)
    r.raise_for_status()
    r = client.get(f"{base}/call/{api_name}/{r.json()['event_id']}", timeout=60)
    event, _, payload = r.text.partition("\ndata: ")
    return event.strip(), payload.strip()


# --- bounded bodies -------------------------------------------------------------------------------

def test_30mb_upload_is_refused(app):
    _, base = app
    t = time.monotonic()
    r = httpx.post(f"{base}/upload", files={"files": ("big.bin", b"\0" * (30 << 20))}, timeout=60)
    assert r.status_code == 413, r.text
    assert "too large" in r.text
    assert time.monotonic() - t < 10


def test_streamed_body_without_content_length_is_refused(app):
    """A chunked body declares no size: it is counted as read, and cut past the limit."""
    _, base = app

    def chunks():
        for _ in range(12):
            yield b"\0" * (1 << 20)

    r = httpx.post(f"{base}/queue/join", content=chunks(), timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text


def test_small_upload_still_works(app):
    _, base = app
    r = httpx.post(f"{base}/upload", files={"files": ("d.png", _png(28, 28))}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()[0].endswith("d.png")


# --- the blob route -------------------------------------------------------------------------------

def test_blob_route_refuses_an_oversize_body(app):
    pad, base = app
    r = _blob(base, pad, index=0, data=b"\0" * (6 << 20), blob_id="big")
    assert r.status_code == 413, r.text
    assert "big" not in pad.blob_storage


def test_blob_route_refuses_an_absurd_layer_index(app):
    pad, base = app
    r = _blob(base, pad, index=10**7, blob_id="absurd")
    assert r.status_code == 422, r.text
    assert "absurd" not in pad.blob_storage


def test_blob_route_refuses_too_many_layers(app):
    pad, base = app
    for i in range(bounds.MAX_LAYERS):
        assert _blob(base, pad, index=i, blob_id="many").status_code == 200
    r = _blob(base, pad, index=bounds.MAX_LAYERS, blob_id="many")
    assert r.status_code == 422, r.text
    assert len(pad.blob_storage["many"].layers) == bounds.MAX_LAYERS


def test_blob_route_refuses_bad_fields(app):
    pad, base = app
    assert _blob(base, pad, kind="bogus", blob_id="t").status_code == 422
    assert _blob(base, pad, index="1" * 5000, blob_id="t").status_code == 422
    assert _blob(base, pad, index=0, blob_id="x" * 1000).status_code == 422
    assert "t" not in pad.blob_storage


def test_unused_blobs_are_freed_after_their_lifetime(app):
    pad, base = app
    assert _blob(base, pad, index=0, blob_id="stale").status_code == 200
    assert "stale" in pad.blob_storage
    deadline = time.monotonic() + TTL * 5
    while "stale" in pad.blob_storage and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "stale" not in pad.blob_storage


def test_blobs_reach_the_function_and_an_8000px_blob_is_refused_before_decoding(app):
    pad, base = app
    assert _blob(base, pad, kind="composite", data=_png(28, 28), blob_id="ok").status_code == 200
    value = {"id": "ok", "background": None, "layers": [], "composite": None}
    assert _call(base, "size", [value], "s-ok") == ("event: complete", '["28x28"]')
    assert "ok" not in pad.blob_storage  # used by its event: freed

    huge = _png(8000, 8000)  # ~80 KB on the wire, 64 Mpx decoded
    assert len(huge) < bounds.MAX_BODY
    assert _blob(base, pad, kind="composite", data=huge, blob_id="huge").status_code == 200
    t = time.monotonic()
    value = {"id": "huge", "background": None, "layers": [], "composite": None}
    event, payload = _call(base, "size", [value], "s-huge")
    assert time.monotonic() - t < 1.0
    assert event == "event: error" and "8000x8000" in payload, payload
    assert "huge" not in pad.blob_storage


# --- identity -------------------------------------------------------------------------------------

def _client_from(address):
    """An HTTP client whose connections leave from `address` (any 127.x works on Linux)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60)


def _whoami(base, session_hash, address, xff=None):
    """(id with hops=0, id with hops=1, session hash) for a call from `address`."""
    with _client_from(address) as c:
        if xff is not None:
            c.headers["x-forwarded-for"] = xff
        event, payload = _call(base, "whoami", [], session_hash, client=c)
    assert event == "event: complete", payload
    return payload.strip('["]').split("|")


def test_identity_is_the_address_not_the_session(app):
    _, base = app
    first, second = _whoami(base, "session-1", "127.0.0.2"), _whoami(base, "session-2", "127.0.0.2")
    assert (first[2], second[2]) == ("session-1", "session-2")
    assert first[0] == second[0] and first[0].startswith("anon-") and len(first[0]) == 17
    assert _whoami(base, "session-1", "127.0.0.3")[0] != first[0]  # another address, another id


def test_proxy_header_ignored_when_no_proxy_is_trusted_and_honoured_per_hop(app):
    """From 127.0.0.2 (not one of uvicorn's trusted hosts) a forged X-Forwarded-For changes
    nothing with hops=0; with hops=1 the right-most entry, the one a trusted proxy appended,
    is used and entries to its left (the client's own) are not."""
    _, base = app
    plain = _whoami(base, "s", "127.0.0.2")
    forged = _whoami(base, "s", "127.0.0.2", "203.0.113.7")
    chained = _whoami(base, "s", "127.0.0.2", "198.51.100.1, 203.0.113.7")
    assert forged[0] == plain[0]    # hops=0: the header is ignored
    assert forged[1] != plain[1]    # hops=1: honoured...
    assert chained[1] == forged[1]  # ...its right-most entry only


def test_client_identity_unit():
    class Req:
        def __init__(self, host, xff=None):
            self.client = type("C", (), {"host": host})()
            self.headers = {"x-forwarded-for": xff} if xff else {}

    a = identity.client_identity(Req("198.51.100.9"), SECRET)
    assert a == identity.client_identity(Req("198.51.100.9", "1.2.3.4"), SECRET)
    assert a != identity.client_identity(Req("198.51.100.9"), b"another-home")  # salted per home
    # IPv6: one /64 is one identity; IPv4-mapped is the IPv4 address
    assert (identity.client_identity(Req("2001:db8::1"), SECRET)
            == identity.client_identity(Req("2001:db8::ffff"), SECRET))
    assert identity.client_identity(Req("::ffff:198.51.100.9"), SECRET) == a
    # too few entries for the hops: the peer, not the client's entry
    assert identity.client_identity(Req("198.51.100.9", "1.2.3.4"), SECRET, 2) == a


def test_trusted_proxy_hops_default_one_on_a_space_only(monkeypatch):
    from dadc import config

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("SYSTEM", raising=False)
    monkeypatch.delenv("DADC_TRUSTED_PROXY_HOPS", raising=False)
    assert config.from_env().proxy_hops == 0
    monkeypatch.setenv("SPACE_ID", "u/s")
    monkeypatch.setenv("SYSTEM", "spaces")  # a real Space sets both (issue 25, finding 8)
    assert config.from_env().proxy_hops == 1
    monkeypatch.setenv("DADC_TRUSTED_PROXY_HOPS", "0")
    assert config.from_env().proxy_hops == 0


def test_install_refuses_an_unbounded_editor():
    with gr.Blocks() as demo:
        gr.Sketchpad()
    with pytest.raises(TypeError, match="unbounded"):
        bounds.install(demo)


def test_home_secret_is_made_once(tmp_path):
    path = tmp_path / "home" / "identity.key"
    first = identity.home_secret(path)
    assert len(first) == 32 and identity.home_secret(path) == first
    assert path.stat().st_mode & 0o777 == 0o600

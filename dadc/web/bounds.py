"""Bounded input for a public Gradio app: what a client may send (body size, Sketchpad blobs).

What Gradio 6.31 leaves open (read in its source), and what this module does about it:

- `launch(max_file_size=...)` bounds each *file part* of a multipart body (/gradio_api/upload and
  the multipart form of /gradio_api/component_server), and is unlimited when unset. It does not
  bound the body: a multipart body may carry 1000 files and 1000 form fields whose text is held
  in memory without limit, and JSON bodies (/gradio_api/queue/join, /call/*, the JSON form of
  /component_server) are read whole. `BodyLimit` caps every request body on every route, by
  Content-Length and by counting a streamed (chunked) body, with a 413.
- The ImageEditor/Sketchpad blob route (POST /gradio_api/component_server, fn_name
  "accept_blobs") keeps blobs in a dict on the component (`blob_storage`), keyed by an id the
  client chooses, grows a list to any layer index it is sent (index 10**7: 80 MB of None), and
  frees a set only when an event uses its id. `BoundedBlobs` validates type, id and layer index,
  caps the size of each blob and of all pending blobs, and frees sets not used within a lifetime;
  at preprocess it refuses too many layers, images over `MAX_SIDE` px a side and values whose
  images hold over `MAX_PIXELS` in all, reading only their headers, before Gradio decodes them.
- ImageEditor.preprocess decodes every image of a value (background, composite, each layer) to
  the editor's image_mode, RGBA by default: a 4096x4096 PNG of 60 KB costs 64 MiB in each slot.
  `BoundedBlobs.images_read` lets an editor say which images its app reads; Gradio is handed only
  those. The heavy events (those that decode a Sketchpad value) run at most `HEAVY_CONCURRENCY`
  at a time, sharing `HEAVY` as their concurrency_id (ui.py wires them).

Wiring (build() returns the gr.Blocks; ui.launch() calls demo.queue(...).launch(...)):

    demo = build(...)
    kwargs = bounds.install(demo)            # after build, before launch; returns launch() kwargs
    demo.queue(...).launch(max_threads=64, **kwargs, ...)

"""

from __future__ import annotations

import io
import logging
import threading
import time
import weakref

import gradio as gr
from fastapi import HTTPException
from gradio.components.base import server
from gradio.components.image_editor import EditorDataBlobs
from PIL import Image
from starlette.middleware import Middleware

MB = 1024 * 1024
MAX_UPLOAD = "4mb"           # launch(max_file_size=...): one uploaded file (Gradio's own check)
MAX_BODY = 4 * MB + 64 * 1024  # any request body, any route: one file plus the multipart overhead
MAX_LAYERS = 4               # layers of one canvas (the page draws on one)
MAX_SIDE = 4096              # px, either side of any image of a canvas
MAX_PIXELS = 3 * MAX_SIDE * MAX_SIDE  # all images of one value: what the page sends (background,
#                              composite, one layer) at the largest side; every slot filled is twice that
HEAVY = "heavy"              # the concurrency_id of the events that decode a Sketchpad value
HEAVY_CONCURRENCY = 2        # of them at a time: a Space has 2 vCPUs, more only hold more memory at once
BLOB_TTL_S = 60.0            # blobs not used by an event within this are freed
MAX_PENDING_BYTES = 64 * MB  # all blobs waiting for their event, all editors together
MAX_PENDING_SETS = 256       # ids waiting for their event, all editors together
MAX_ID_LEN = 64              # the browser sends ~11 characters

log = logging.getLogger("dadc.web")


def refused(message: str) -> gr.Error:
    """The gr.Error for a request the app refuses (a visitor's mistake, bad input): shown to the
    caller as it is, and one line in the log at most (INFO). Gradio prints the traceback of every
    gr.Error unless it is made with print_exception=False (its documented switch, gr.Error's
    parameter): a refusal is not a fault of the server, and a traceback per mistake buries the real ones."""
    log.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


# --- bodies ---------------------------------------------------------------------------------------

class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `max_body` bytes gets a 413 with a plain message.

    A declared Content-Length over the limit is refused before a byte is read. A body without one
    (chunked) is counted as the app reads it; past the limit the read raises, and whatever
    response the app then tries to send (some routes turn any read error into a 400) is replaced
    by the 413, so the status is the same on every route."""

    def __init__(self, app, max_body: int = MAX_BODY):
        self.app, self.max_body = app, max_body
        self.message = (f"Request body too large: at most {max_body} bytes "
                        f"({max_body / MB:.1f} MB).").encode()

    async def _refuse(self, send):
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(self.message)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": self.message})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_body + 1
                if declared > self.max_body:
                    return await self._refuse(send)
        seen = 0
        over = False
        started = False

        async def counted_receive():
            nonlocal seen, over
            if over:  # the app caught our error and reads on: stop it again
                raise _TooLarge()
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    over = True
                    raise _TooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            if over:  # the app answers a body we cut: answer 413 instead, once
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(send)


# --- the blob route -------------------------------------------------------------------------------

_LOCK = threading.Lock()
_EDITORS: weakref.WeakSet = weakref.WeakSet()  # every editor holding blobs, for the sweeper
_sweeper: threading.Thread | None = None


def _refuse(status: int, detail: str):
    raise HTTPException(status_code=status, detail=detail)


_NO_BLOBS = EditorDataBlobs(background=None, layers=[], composite=None)


def _blob_bytes(blobs: EditorDataBlobs) -> int:
    return sum(len(b) for b in [blobs.background, blobs.composite, *blobs.layers] if b)


def _sweep(now: float) -> None:
    """Free every blob set not written to for its editor's `blob_ttl_s`. Caller holds _LOCK."""
    for editor in list(_EDITORS):
        born = editor.__dict__.setdefault("_blob_born", {})
        for blob_id in list(editor.blob_storage):
            if now - born.get(blob_id, 0.0) > editor.blob_ttl_s:
                editor.blob_storage.pop(blob_id, None)
        for blob_id in list(born):  # ids an event used (Gradio popped them) or swept
            if blob_id not in editor.blob_storage:
                del born[blob_id]


def _evict_to_caps() -> None:
    """Free the oldest sets until all pending blobs fit MAX_PENDING_*. Caller holds _LOCK.
    A browser's blobs wait milliseconds for their event, so the oldest are the abandoned ones."""
    pending = sorted((editor._blob_born.get(i, 0.0), id(editor), i, editor)
                     for editor in list(_EDITORS) for i in list(editor.blob_storage))
    total = sum(_blob_bytes(e.blob_storage.get(i) or _NO_BLOBS) for _, _, i, e in pending)
    while pending and (len(pending) > MAX_PENDING_SETS or total > MAX_PENDING_BYTES):
        _, _, blob_id, editor = pending.pop(0)
        blobs = editor.blob_storage.pop(blob_id, None)
        editor._blob_born.pop(blob_id, None)
        total -= _blob_bytes(blobs) if blobs else 0


def _sweep_forever() -> None:
    while True:
        with _LOCK:
            ttls = [e.blob_ttl_s for e in list(_EDITORS)] or [BLOB_TTL_S]
            _sweep(time.monotonic())
        time.sleep(min(max(min(ttls) / 4, 0.05), 30.0))


def _start_sweeper() -> None:
    global _sweeper
    if _sweeper is None:
        _sweeper = threading.Thread(target=_sweep_forever, name="dadc-blob-sweeper", daemon=True)
        _sweeper.start()


class BoundedBlobs:
    """Mixin for gr.ImageEditor / gr.Sketchpad subclasses, put first:
    `class Canvas(bounds.BoundedBlobs, gr.Sketchpad)`. The class attributes are the bounds;
    install() checks every editor of the app has the mixin and may set them per editor (a copy
    Gradio makes for one session gets the class values)."""

    blob_ttl_s = BLOB_TTL_S
    max_layers = MAX_LAYERS
    max_side = MAX_SIDE
    max_pixels = MAX_PIXELS
    max_blob_bytes = MAX_BODY

    def get_block_name(self):
        # the frontend component: Sketchpad and the other templates are "imageeditor", and
        # Gradio would derive "boundedblobs" or "sketchpad" from a subclass
        return "imageeditor"

    def check_image_size(self, width: int, height: int, what: str) -> None:
        """Raise gr.Error for an image too large to decode. Override to change the rule."""
        if width > self.max_side or height > self.max_side:
            raise refused(f"Nothing done: the {what} is {width}x{height} px; "
                           f"at most {self.max_side} px a side.")

    def images_read(self, background, layers: list, composite):
        """The images of one value the app reads, as (background, layers, composite), the others
        None (layers: left out): only these are decoded. Every image was checked (headers) before.
        Default: all of them, as Gradio does. Override to decode less (components.Canvas)."""
        return background, layers, composite

    def _check_image(self, source, what: str) -> int:
        """check_image_size from the image's header alone (PIL decodes no pixel here); returns its
        pixels."""
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                width, height = im.size
        except Image.DecompressionBombError:  # PIL's own guard, past 2x its 89 Mpx limit
            width = height = 1 << 20
        except Exception:
            raise refused(f"Nothing done: the {what} is not an image "
                           "(send a PNG, JPEG or WebP).") from None
        self.check_image_size(width, height, what)
        return width * height

    def _check_value(self, background, layers, composite) -> None:
        """Every image of one value by its header (blob bytes or FileData), and their pixels in all."""
        images = [("background", background), ("composite", composite)]
        images += [(f"layer {i}", f) for i, f in enumerate(layers or [])]
        pixels = 0
        for what, f in images:
            source = f if isinstance(f, bytes) else getattr(f, "path", None)
            if source:
                pixels += self._check_image(source, what)
        if pixels > self.max_pixels:
            raise refused(f"Nothing done: the canvas's images hold {pixels / 1e6:.1f} Mpx in all; "
                           f"at most {self.max_pixels / 1e6:.1f} Mpx.")

    @server
    def accept_blobs(self, data):
        # Gradio passes a DataWithFiles: .data = the form's text fields, .files = [(name, bytes)].
        # Its own accept_blobs is replaced, not called: it trusts index, type and id as sent.
        fields = getattr(data, "data", None)
        files = getattr(data, "files", None)
        if not isinstance(fields, dict) or not files:
            _refuse(422, "accept_blobs takes a multipart form: type, id, index and one file.")
        kind, blob_id, raw = fields.get("type"), fields.get("id"), fields.get("index")
        if kind not in ("background", "composite", "layer"):
            _refuse(422, "type must be background, composite or layer.")
        if not isinstance(blob_id, str) or not 0 < len(blob_id) <= MAX_ID_LEN:
            _refuse(422, f"id must be 1 to {MAX_ID_LEN} characters.")
        index = None
        if kind == "layer":
            raw = str(raw)
            ok = raw.isascii() and raw.isdigit() and len(raw) <= 4  # "²".isdigit() too
            if not (ok and int(raw) < self.max_layers):
                _refuse(422, f"layer index must be 0 to {self.max_layers - 1}.")
            index = int(raw)
        blob = files[0][1]
        if len(blob) > self.max_blob_bytes:
            _refuse(413, f"Blob too large: at most {self.max_blob_bytes} bytes.")
        with _LOCK:
            now = time.monotonic()
            _EDITORS.add(self)
            _sweep(now)
            current = self.blob_storage.get(blob_id) or EditorDataBlobs(
                background=None, layers=[], composite=None)
            if index is not None:
                current.layers.extend([None] * (index + 1 - len(current.layers)))
                current.layers[index] = blob
            elif kind == "background":
                current.background = blob
            else:
                current.composite = blob
            self.blob_storage[blob_id] = current
            self.__dict__.setdefault("_blob_born", {})[blob_id] = now
            _evict_to_caps()
        _start_sweeper()

    def preprocess(self, payload):
        if payload is not None and payload.id is not None:
            with _LOCK:
                blobs = self.blob_storage.get(payload.id)
            if blobs is not None:
                try:
                    self._check_value(blobs.background, blobs.layers, blobs.composite)
                except gr.Error:
                    self.blob_storage.pop(payload.id, None)  # refused: free it now
                    raise
                read = self.images_read(blobs.background, list(blobs.layers), blobs.composite)
                with _LOCK:  # Gradio reads the set by its id, and frees it
                    self.blob_storage[payload.id] = EditorDataBlobs(
                        background=read[0], layers=read[1], composite=read[2])
        elif payload is not None:
            if len(payload.layers or []) > self.max_layers:
                raise refused(f"Nothing done: at most {self.max_layers} layers.")
            self._check_value(payload.background, payload.layers, payload.composite)
            read = self.images_read(payload.background, list(payload.layers or []), payload.composite)
            payload = payload.model_copy(update=dict(background=read[0], layers=read[1],
                                                     composite=read[2]))
        return super().preprocess(payload)


class BoundedSketchpad(BoundedBlobs, gr.Sketchpad):
    """gr.Sketchpad with the bounded blob route. (Gradio writes a .pyi next to a module that
    subclasses a component: dadc/web/bounds.pyi, git-ignored.)"""


def bound_editors(demo: gr.Blocks, **bounds) -> list:
    """Check that every ImageEditor/Sketchpad of `demo` is a BoundedBlobs (TypeError naming the
    first that is not: an unbounded editor is an open blob route) and set `bounds` (blob_ttl_s,
    max_layers, max_side, max_pixels, max_blob_bytes) on each. Returns the editors.

    Why not swap an editor's class at run time: CPython refuses `editor.__class__ = Bounded`
    ("object layout differs": the mixin becomes the new class's layout base), and methods patched
    onto the instance are lost when Gradio rebuilds a component for a session
    (`block.__class__(**kwargs)` on a prop update). A class with the mixin has neither problem."""
    editors = [b for b in demo.blocks.values() if isinstance(b, gr.ImageEditor)]
    for editor in editors:
        if not isinstance(editor, BoundedBlobs):
            raise TypeError(f"{type(editor).__name__} (component {editor._id}) has an unbounded "
                            "blob route: give its class the mixin, "
                            "`class X(bounds.BoundedBlobs, gr.Sketchpad)`")
        for key, value in bounds.items():
            if key not in ("blob_ttl_s", "max_layers", "max_side", "max_pixels", "max_blob_bytes"):
                raise TypeError(f"unknown bound {key!r}")
            setattr(editor, key, value)
    return editors


def install(demo: gr.Blocks, *, max_upload: str | int = MAX_UPLOAD, max_body: int = MAX_BODY,
            app_kwargs: dict | None = None, **bounds) -> dict:
    """Bound every input route of `demo`. Call after the Blocks is built (all its components
    exist) and before launch(), and pass what it returns to launch():

        demo.queue(...).launch(max_threads=64, **bounds.install(demo))

    It checks every ImageEditor/Sketchpad of the app is a BoundedBlobs and sets `bounds` on
    them (bound_editors), and returns max_file_size and app_kwargs adding BodyLimit: launch()
    builds a new FastAPI app each time and Starlette takes no middleware once an app has
    served, so the middleware must go in through launch(app_kwargs=...). Merge your own
    app_kwargs by passing them here. (With GRADIO_NUM_WORKERS set, Gradio serves /upload from
    separate worker processes where only max_file_size applies: leave it unset.)"""
    bound_editors(demo, **bounds)
    app_kwargs = dict(app_kwargs or {})
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []),
                                Middleware(BodyLimit, max_body=max_body)]
    return {"max_file_size": max_upload, "app_kwargs": app_kwargs}

"""The app's own Gradio components: the Sketchpad and the digit picker, each refusing bad input
from any caller (the page or a raw API client) with a clear message, before anything is decoded."""
import ctypes
import ctypes.util
import io
import threading

import gradio as gr
from gradio.components.image_editor import EditorData
from gradio.data_classes import FileData
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from . import bounds
from .. import preprocess
from ..studio.service import StudioError, check_digit


class Digit(gr.Radio):
    """gr.Radio of the digits 0-9 whose value is an int; any other value gets a clear message."""

    def get_block_name(self):
        # Gradio (6.31) picks the browser component by the block name, which it derives from the
        # class name ("digit": no such component); a subclass of a built-in names its parent's
        return "radio"

    def preprocess(self, payload):
        try:
            return check_digit(payload)
        except StudioError as e:
            raise bounds.refused(str(e)) from None


class CanvasValue(EditorData):
    """The Sketchpad's value, refusing anything else with a message for the caller: pydantic's own
    error would reach an API caller only as Gradio's generic "the app raised an exception"."""

    @classmethod
    def model_validate(cls, obj, **kwargs):
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError:
            raise bounds.refused('Nothing done: the canvas must be a Sketchpad value {"background", "layers", '
                           f'"composite"}} of images, got {type(obj).__name__}.') from None


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()
TRIM_AGAIN_S = 2.0
_LATER_LOCK = threading.Lock()
_later = None


def give_back_memory():
    """Hand the heap's free pages back to the system after a large image was decoded and freed.

    Why: glibc serves each thread from one of up to 8 arenas per core, and once a 16 MiB block
    (PIL allocates images in such blocks) was freed, its dynamic mmap threshold rises and later
    blocks come from those arenas, which keep their freed pages: without this, bursts of 8
    hostile 4096 px canvases, each decoded on whichever of Gradio's threads ran it, left the app
    +190, +270, then +440 MiB larger for good. malloc_trim(0) is glibc's documented call for
    exactly this (malloc_trim(3): since glibc 2.8 it frees the whole free pages of every arena,
    not only the top of the main heap); it takes about a millisecond, paid only after a large
    image, now and once more TRIM_AGAIN_S later, when the event has freed what it made of it.
    MALLOC_ARENA_MAX would not do: glibc reads it once, at process start (app.py is too late),
    and fewer arenas still keep their free pages. A no-op where the C library is not glibc."""
    global _later
    if _TRIM is None:
        return
    _TRIM(0)
    with _LATER_LOCK:
        if _later is None or not _later.is_alive():
            _later = threading.Timer(TRIM_AGAIN_S, _TRIM, (0,))
            _later.daemon = True
            _later.start()


class Canvas(bounds.BoundedBlobs, gr.Sketchpad):
    """gr.Sketchpad that refuses what is not an image, or too large to decode, with a clear message
    before anything is decoded (a 20000x20000 PNG is small on the wire and 1.6 GB in memory), and
    whose blob upload route is bounded (bounds.BoundedBlobs). Of a value it decodes only the image
    the app reads (preprocess.pick), box-reduced to preprocess.MAX_SIDE as it is decoded."""

    data_model = CanvasValue

    def check_image_size(self, width, height, what):
        try:
            preprocess.check_size(width, height)
        except preprocess.CanvasError as e:
            raise bounds.refused(f"Nothing done: {e}.") from None

    def images_read(self, background, layers, composite):
        # preprocess.pick reads the composite, else the background, else the top layer: the others
        # are never read, so never decoded (each one 64 MiB as RGBA at 4096 px)
        if composite is not None:
            return None, [], composite
        if background is not None:
            return background, [], None
        return None, [layer for layer in layers if layer is not None][-1:], None

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:  # a ValueError too: already the message for the caller
            raise
        except (UnidentifiedImageError, OSError, ValueError):
            raise bounds.refused("Nothing done: that file is not an image (send a PNG, JPEG or WebP).") from None

    def convert_and_format_image(self, file, flatten_on_white=False):
        # An ImageEditor internal (Gradio 6.31), not a documented hook: preprocess() calls it for
        # each image it decodes. Gradio converts the whole image to RGBA (at 4096 px a second
        # 64 MiB next to the decoded one), and PIL clips a 16-bit greyscale image to white on the
        # way. Here preprocess.bounded makes, band by band, the pixels to_mnist would start from:
        # 16-bit and float images as 8-bit "L" (eight_bit), box-reduced to preprocess.MAX_SIDE;
        # then RGBA as Gradio gives it (flatten_on_white does nothing in RGBA mode).
        if file is None or (self.type, self.image_mode) != ("pil", "RGBA"):
            return super().convert_and_format_image(file, flatten_on_white)
        im = Image.open(file.path if isinstance(file, FileData) else io.BytesIO(file))
        try:
            im.load()
            wide = im.mode.startswith("I") or im.mode == "F"  # 16 or 32 bits: "L", as before
            img = preprocess.bounded(im)
            img = img if wide else img.convert("RGBA")
        finally:
            im.close()  # frees the decoded pixels now (a `with` block closes only the file)
        if im.width * im.height > preprocess.MAX_SIDE ** 2:
            give_back_memory()  # and their pages go back to the system
        return img

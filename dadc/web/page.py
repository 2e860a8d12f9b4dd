"""The Draw tab's browser side and what it sends.

The Gradio Sketchpad stays the drawing surface, but its value is slow to travel: each stroke
uploads its layer, background and composite and then joins the queue (about 11 HTTP requests,
~1 s from mouse-up to prediction). page.js instead reads the drawing straight from the editor
in the browser, as the same 448x448 PNG the Sketchpad would send as its composite, and sends that
one string to a light event: the prediction shows ~0.2 s after mouse-up, and a flag sends the
very same PNG, so it stores exactly the prediction the visitor saw. page.js also makes the brush
ready (on load, after a flag, after Clear) and adds the keys (0-9, Enter, Backspace, Escape);
page.css fits the canvas and the top prediction on a phone's first screen.

snapshot() is the only way that string gets in, and it is public (any client can send one):
bounded in length, a PNG of exactly the canvas's size with a few chunks, decoded only after its
header and its list of chunks say so.
"""
import base64
import binascii
import io
import struct
from pathlib import Path

from PIL import Image

from ..preprocess import CanvasError

HERE = Path(__file__).parent
PREFIX = "data:image/png;base64,"
SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A browser's canvas PNG is IHDR, IDAT (libpng writes 8 KiB each: ~100 at most for a 448 px
# canvas stored raw), IEND, and at most a few colour chunks (sRGB, gAMA, pHYs, a small iCCP). PIL
# inflates text and profile chunks as it opens a PNG: 63 zTXt chunks of 1 KB each took ~60 MB and
# 4x a drawing's CPU, every time. Ancillary chunks (metadata: a lower-case first letter) beyond
# these bounds are refused before PIL sees the PNG.
MAX_ANCILLARY = 8           # chunks
MAX_ANCILLARY_BYTES = 16384  # their data, in all
MAX_CHUNKS = 1024           # all chunks (each one costs PIL a Python call)


def head(canvas):
    """The <head> addition: page.css and page.js (told the canvas size). The CSS goes in as it is:
    Gradio's css= would prefix every rule inside a @media with its .contain, where the page's
    margins are not."""
    js = (HERE / "page.js").read_text().replace("__CANVAS__", str(int(canvas)))
    return f"<style>\n{(HERE / 'page.css').read_text()}</style>\n<script>\n{js}</script>"


def max_length(canvas):
    """The longest snapshot accepted, in characters: a PNG of the canvas stored with no compression
    at all (its RGBA rows, plus far less than 64 KB of framing), in base64. A drawing is ~10 KB."""
    return len(PREFIX) + 4 * ((canvas * (canvas * 4 + 1) + 65536) // 3 + 1)


def check_chunks(data):
    """Walk a PNG's chunk list (lengths and names only, nothing inflated) and raise CanvasError for
    one that is not a well-formed list, or carries more metadata than a canvas has."""
    if not data.startswith(SIGNATURE):
        raise CanvasError("not a drawing: not a readable PNG")
    at, chunks, ancillary, extra = len(SIGNATURE), 0, 0, 0
    while True:
        length, kind = struct.unpack_from(">I4s", data, at) if at + 12 <= len(data) else (0, b"")
        at += 12 + length
        if at > len(data):  # cut short, or a length that runs past the end
            raise CanvasError("not a drawing: not a readable PNG")
        chunks += 1
        if kind[0] & 0x20:  # ancillary: lower-case first letter
            ancillary, extra = ancillary + 1, extra + length
        if ancillary > MAX_ANCILLARY:
            raise CanvasError(f"not a drawing: more than {MAX_ANCILLARY} PNG metadata chunks")
        if extra > MAX_ANCILLARY_BYTES:
            raise CanvasError(f"not a drawing: more than {MAX_ANCILLARY_BYTES} bytes of PNG metadata")
        if chunks > MAX_CHUNKS:
            raise CanvasError(f"not a drawing: more than {MAX_CHUNKS} PNG chunks")
        if kind == b"IEND":
            return


def snapshot(text, canvas):
    """The page's drawing: a data URL of a PNG exactly canvas x canvas, as a PIL image. Anything
    else raises CanvasError (a message for the caller) before more than its header is decoded."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise CanvasError("not a drawing: expected a data:image/png;base64 URL")
    if len(text) > max_length(canvas):
        raise CanvasError("not a drawing: too long")
    try:
        data = base64.b64decode(text[len(PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise CanvasError("not a drawing: bad base64") from None
    check_chunks(data)
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
        if img.size != (canvas, canvas):
            raise CanvasError(f"not a drawing: {img.size[0]}x{img.size[1]}, the canvas is {canvas}x{canvas}")
        img.load()
    except CanvasError:
        raise
    except Exception:  # PIL raises many kinds (OSError, SyntaxError, ValueError, ...) on a broken PNG
        raise CanvasError("not a drawing: not a readable PNG") from None
    return img

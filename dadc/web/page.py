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
bounded in length, a PNG of exactly the canvas's size, decoded only after its header says so.
"""
import base64
import binascii
import io
from pathlib import Path

from PIL import Image

from ..preprocess import CanvasError

HERE = Path(__file__).parent
PREFIX = "data:image/png;base64,"


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

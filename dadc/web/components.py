"""The app's own Gradio components: the Sketchpad and the digit picker, each refusing bad input
from any caller (the page or a raw API client) with a clear message, before anything is decoded."""
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
            raise gr.Error(str(e)) from None


class CanvasValue(EditorData):
    """The Sketchpad's value, refusing anything else with a message for the caller: pydantic's own
    error would reach an API caller only as Gradio's generic "the app raised an exception"."""

    @classmethod
    def model_validate(cls, obj, **kwargs):
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError:
            raise gr.Error('Nothing done: the canvas must be a Sketchpad value {"background", "layers", '
                           f'"composite"}} of images, got {type(obj).__name__}.') from None


class Canvas(bounds.BoundedBlobs, gr.Sketchpad):
    """gr.Sketchpad that refuses what is not an image, or too large to decode, with a clear message
    before anything is decoded (a 20000x20000 PNG is small on the wire and 1.6 GB in memory), and
    whose blob upload route is bounded (bounds.BoundedBlobs)."""

    data_model = CanvasValue

    def check_image_size(self, width, height, what):
        try:
            preprocess.check_size(width, height)
        except preprocess.CanvasError as e:
            raise gr.Error(f"Nothing done: {e}.") from None

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:  # a ValueError too: already the message for the caller
            raise
        except (UnidentifiedImageError, OSError, ValueError):
            raise gr.Error("Nothing done: that file is not an image (send a PNG, JPEG or WebP).") from None

    def convert_and_format_image(self, file, flatten_on_white=False):
        # An ImageEditor internal (Gradio 6.31), not a documented hook: preprocess() calls it for
        # each image of the value. Gradio converts every image to RGBA, and PIL clips a 16-bit
        # greyscale image to white on the way: read such images ourselves
        if isinstance(file, FileData):
            with Image.open(file.path) as im:
                if im.mode.startswith("I") or im.mode == "F":
                    return preprocess.eight_bit(im)
        return super().convert_and_format_image(file, flatten_on_white)

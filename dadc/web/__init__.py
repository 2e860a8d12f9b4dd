"""The page and its server: everything that knows Gradio. Every use of a Gradio internal (and of
the browser component's) lives in this package, each behind a named function that says what it
relies on (see bounds.py, components.py, page.py / page.js, ui.py).

ui.py          the page, tab by tab (build, launch)
components.py  the app's Gradio components: Canvas (a bounded Sketchpad), Digit
bounds.py      what a client may send: request bodies, the Sketchpad's blob route, image sizes
identity.py    the anonymous visitor's id: a salted hash of the client address
page.py        the Draw tab's browser code (page.js, page.css) and the PNG it sends
"""
from .ui import build, launch

__all__ = ["build", "launch"]

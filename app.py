"""The Space's entry point: `python app.py` serves the DADC studio (see README).

Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT itself. All state lives under DADC_HOME,
Gradio's upload cache included (GRADIO_TEMP_DIR, unless set), so nothing is written outside it.
"""
import os
import sys

from dadc import config

settings = config.from_env()
config.keep_state_in_home(settings)  # before gradio / huggingface_hub load
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # privacy first: no usage reports unless asked
os.environ.setdefault("GRADIO_TEMP_DIR", str((settings.home / "gradio-tmp").resolve()))  # before gradio loads

from dadc import files  # noqa: E402
from dadc.web import ui  # noqa: E402

try:
    demo = ui.build(settings)
except files.Busy as e:  # one app per DADC_HOME: never two writers, never two trainers
    sys.exit(f"error: {e}")

if __name__ == "__main__":
    ui.launch(demo)

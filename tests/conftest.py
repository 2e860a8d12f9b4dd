# --- issue 4 (store / hubsync): keep every test off the real Hub and out of ~ -------------------
# huggingface_hub and datasets read these variables once, at import, so they are set here, before
# any test module imports them. HF_ENDPOINT names a free local port where the `fake_hub` fixture
# (tests/fake_hub.py) serves; offline mode is the default and that fixture lifts it for its test.
import os
import socket
import tempfile

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="dadc-tests-hf-")
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_free_port()}"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)  # a developer's real token must never reach a test


@pytest.fixture
def fake_hub(monkeypatch):
    """A running local Hub at HF_ENDPOINT (stop()/start() it to take it down and back), with the
    client libraries out of offline mode for this test."""
    import datasets
    import huggingface_hub.constants

    from fake_hub import FakeHub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hub = FakeHub(port=int(os.environ["HF_ENDPOINT"].rsplit(":", 1)[1])).start()
    yield hub
    hub.stop()
# --- end of issue 4 ------------------------------------------------------------------------------


CHROMIUM = "/usr/bin/chromium"  # Debian's (apt-get install chromium): playwright cannot download one here


def browser_or_skip():
    """playwright's sync_api, once Chromium is known to be there. Missing on a developer's machine:
    the browser tests skip. In CI (CI set, as .ci/run has it, which installs Chromium) they fail
    instead: a browser that cannot start must not pass as a skipped test."""
    def missing(why):
        if os.environ.get("CI"):
            pytest.fail(f"CI: the browser tests cannot run: {why}", pytrace=False)
        pytest.skip(why, allow_module_level=True)
    try:
        from playwright import sync_api
    except ImportError:
        missing("the playwright package is not installed (pip install -r requirements-dev.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    return sync_api

"""Issue 25, finding 9: Gradio keeps every fresh session's page state in memory (~150 KiB each);
4,000 requests with new session ids took the app from 372 to 1,072 MiB, never given back. The app
keeps the latest DADC_SESSION_CAPACITY sessions (1,000 by default)."""
import re
import uuid

import pytest
from gradio_client import Client

from test_app import App, mnist, round0  # noqa: F401 (fixtures)
from test_public import good  # noqa: F401 (fixture)

SESSIONS = 300


def rss_mib(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1)) / 1024


def growth(app, good):  # noqa: F811
    """MiB the app grows by while SESSIONS requests each come with a session id of their own."""
    c = Client(app.url, verbose=False, headers={"X-Forwarded-For": "198.51.100.9"})
    for _ in range(20):  # warm: caches, threads, the first allocations
        c.session_hash = uuid.uuid4().hex
        c.predict(good, api_name="/predict")
    before = rss_mib(app.proc.pid)
    for _ in range(SESSIONS):
        c.session_hash = uuid.uuid4().hex  # what any script may pick
        c.predict(good, api_name="/predict")
    return rss_mib(app.proc.pid) - before


@pytest.mark.slow
def test_fresh_sessions_cost_bounded_memory(round0, mnist, good, tmp_path):  # noqa: F811
    app = App(tmp_path / "home", round0, DADC_SESSION_CAPACITY="20", DADC_FLAG_LIMIT="1000")
    try:
        grew = growth(app, good)
        print(f"{SESSIONS} fresh sessions, capacity 20: +{grew:.1f} MiB")
        assert grew < SESSIONS * 0.15 / 3  # a third of what keeping each session's ~150 KiB would cost
        assert app.client().predict(good, api_name="/predict")["label"]  # still serving
    finally:
        app.stop()

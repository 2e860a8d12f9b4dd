"""Issue 25, finding 12: the dashboard's model error rate could be talked down: the live prediction
has no limit, and alternating a drawing with a blank canvas counted an attempt per pair (150 pairs
set round 0's rate to 0.133). Through the Studio, as the live event calls it."""
from PIL import Image

from dadc.studio.visitors import Attempts
from test_public import canvas_of, studio_for  # noqa: F401 (fixture)
from test_app import mnist, round0  # noqa: F401 (fixtures)


def test_alternating_a_drawing_with_a_blank_canvas_adds_no_attempts(studio_for, mnist):  # noqa: F811
    s = studio_for(DADC_THRESHOLD="1000")
    drawing, blank = canvas_of(mnist, 0), Image.new("RGBA", (448, 448), "white")
    for _ in range(150):
        s.predict(drawing, "anon-0000000000aa")
        s.predict(blank, "anon-0000000000aa")
    assert s.attempts.counts().get(0, 0) == 1  # one drawing, not 150
    s.predict(drawing, "anon-0000000000bb")  # another visitor's drawing still counts
    assert s.attempts.by_visitor().get("anon-0000000000bb") == 1
    s.stop()


def test_new_drawings_count_up_to_an_hourly_cap(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    a = Attempts(tmp_path / "attempts.json")
    for k in range(2 * Attempts.PER_HOUR):  # a new drawing (a pixel changed) every second
        a.open("v", 0, drawing=k)
        a.close("v")
        clock[0] += 1.0
    assert a.counts()[0] == Attempts.PER_HOUR  # capped at PER_HOUR within the hour
    clock[0] += 3600
    a.open("v", 0, drawing=-1)
    assert a.counts()[0] == Attempts.PER_HOUR + 1  # and free again an hour later

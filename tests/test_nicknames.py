"""Issue 25, findings 13 and 15: the leaderboard's names read as what they are, and a nickname
costs little to change. On the Studio itself (no HTTP needed: the page calls Studio.set_nickname)."""
import json

import numpy as np
import pytest

from dadc import config
from dadc.studio import StudioError, Visitor
from dadc.studio.dashboard import leaderboard
from dadc.studio.visitors import Nicknames
from test_app import TINY, round0  # noqa: F401 (fixture)


@pytest.fixture
def studio(tmp_path, round0, monkeypatch):  # noqa: F811
    from dadc.studio import Studio

    monkeypatch.setenv("DADC_HOME", str(tmp_path))
    monkeypatch.setenv("DADC_ADMINS", "ada")
    s = Studio(config.from_env(), round0=round0, round_cfg=config.RoundConfig(**TINY))
    yield s
    s.stop()


@pytest.mark.parametrize("name", ["\u3164" * 24, "\u0430da", "admin", "ADMIN", "anon-1a2b3c", "import:x",
                                  "ada", "Ada", "bob", "...", "a\u200bb", "Zoë"])
def test_names_that_pass_for_someone_else_or_nobody_are_refused(studio, name):
    flag(studio, Visitor("bob", username="bob"))  # bob is on the board under his username
    with pytest.raises(StudioError):
        studio.set_nickname(name, "anon-000000000001")
    assert studio.nicknames.all() == {}


def test_a_nickname_taken_by_another_visitor_is_refused_case_blind(studio):
    studio.set_nickname("Zed", "anon-000000000001")
    with pytest.raises(StudioError, match="taken"):
        studio.set_nickname("zed", "anon-000000000002")
    assert studio.set_nickname("ZED", "anon-000000000001") == {"nickname": "ZED"}  # one's own, recased


def test_a_username_that_starts_with_simulate_is_listed(studio):
    who = Visitor("simulated_ann", username="simulated_ann")
    flag(studio, who)
    rows = leaderboard(studio._board.counts.get(), studio.nicknames, studio.attempts)
    assert [r[0] for r in rows] == ["simulated_ann"]


def test_changing_a_nickname_is_rate_limited_and_an_unchanged_one_writes_nothing(tmp_path, monkeypatch):
    nicks = Nicknames(tmp_path / "nicknames.json")
    writes = []
    real = nicks.path.__class__.write_text
    monkeypatch.setattr("dadc.files.write_atomic", lambda path, text, *a: writes.append(text) or real(path, text))
    for _ in range(50):  # a client asking again and again for the same name
        nicks.set("anon-1", "Zed")
    assert len(writes) == 1
    nicks.set("anon-1", "Zed2")
    nicks.set("anon-1", "Zed3")
    with pytest.raises(ValueError, match="Too many"):
        for k in range(50):
            nicks.set("anon-1", f"Zed{k + 4}")
    assert len(writes) == Nicknames.CHANGES[0]
    assert json.loads((tmp_path / "nicknames.json").read_text()) == {"anon-1": "Zed3"}


def flag(studio, who):
    """One flag that fools round-000 (a blank 28x28 with one stroke, labelled what it is not)."""
    from PIL import Image

    img = np.zeros((200, 200), dtype=np.uint8)
    img[40:160, 95:105] = 255  # a "1"
    canvas = Image.fromarray(255 - img).convert("RGBA")
    r = studio.flag(canvas, 7, who)
    assert r["saved"] and r["fooled"]

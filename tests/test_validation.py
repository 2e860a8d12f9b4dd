"""Validation as Dynabench does it, through `python app.py` and plain clients (each client its own
visitor, DADC_VOTES=2): verified by two others; a validator who disagrees gives the right digit and
two such corrections relabel the example; two disagreeing without a digit dispute it; the queue
serves the fewest votes first, never one's own, never one already decided; the flagger may retract.
An admin decides alone (in-process: OAuth cannot be played here)."""
import pytest
from gradio_client.exceptions import AppError

from test_app import App, canvas_file, mnist, round0  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def app(round0, tmp_path_factory):  # noqa: F811
    a = App(tmp_path_factory.mktemp("validation") / "home", round0, DADC_VOTES="2", DADC_THRESHOLD="1000")
    yield a
    a.stop()


def flag(app, mnist, tmp_path, i, client=None):  # noqa: F811
    c = client or app.client()
    return c, c.predict(canvas_file(tmp_path / f"{i}.png", mnist["test_x"][i]), int(mnist["test_y"][i]),
                        api_name="/flag")["id"]


def examples(app):
    from dadc.store import FlagStore

    return {e.id: e for e in FlagStore(app.home, readonly=True).examples()}


def queue_of(client, n=30):
    """The ids a visitor is offered, voting 'yes' on none (Next only shows)."""
    seen = []
    for _ in range(n):
        *_, ex = client.predict(api_name="/verify_next")
        if not ex or ex["id"] in seen:
            break
        seen.append(ex["id"])
    return seen


def test_two_agreeing_verify_and_then_it_is_asked_of_nobody(app, mnist, tmp_path):  # noqa: F811
    _, id_ = flag(app, mnist, tmp_path, 0)
    assert app.client().predict(id_, True, api_name="/verify")["verified"] is False
    r = app.client().predict(id_, True, api_name="/verify")
    assert r["verified"] and r["decided"] and (r["agree"], r["disagree"]) == (2, 0)
    assert id_ not in queue_of(app.client())


def test_two_corrections_to_one_digit_relabel_it(app, mnist, tmp_path):  # noqa: F811
    from dadc.config import RoundConfig
    from dadc.examples import eligible

    _, id_ = flag(app, mnist, tmp_path, 1)  # a 2, flagged as a 2
    assert app.client().predict(id_, False, 7, api_name="/verify")["corrected"] is None
    r = app.client().predict(id_, False, 7, api_name="/verify")
    assert r["corrected"] == 7 and r["decided"]
    [e] = [e for e in eligible(examples(app).values(), RoundConfig(votes=2)) if e.id == id_]
    assert e.label == 7  # rounds learn it as the digit the validators gave
    with pytest.raises(AppError, match="only with a 'no' vote"):
        app.client().predict(id_, True, 3, api_name="/verify")


def test_two_disagreeing_dispute_it_and_rounds_leave_it_out(app, mnist, tmp_path):  # noqa: F811
    from dadc.config import RoundConfig
    from dadc.examples import eligible

    _, id_ = flag(app, mnist, tmp_path, 2)
    for _ in range(2):
        app.client().predict(id_, False, api_name="/verify")
    e = examples(app)[id_]
    assert e.disputed and e.decided(2) and e.corrected(2) is None
    assert id_ not in {x.id for x in eligible(examples(app).values(), RoundConfig(votes=2))}


def test_fewest_votes_first_never_ones_own(app, mnist, tmp_path):  # noqa: F811
    alice, a1 = flag(app, mnist, tmp_path, 3)
    _, b1 = flag(app, mnist, tmp_path, 4)
    app.client().predict(b1, True, api_name="/verify")  # b1 has one vote, a1 none
    offered = queue_of(app.client(), n=1)
    assert offered and offered[0] != b1  # an example with no vote comes before b1
    assert a1 not in queue_of(alice)  # never one's own
    with pytest.raises(AppError, match="own"):
        alice.predict(a1, True, api_name="/verify")


def test_the_flagger_may_retract_and_nobody_else(app, mnist, tmp_path):  # noqa: F811
    alice, id_ = flag(app, mnist, tmp_path, 5)
    with pytest.raises(AppError, match="Only the person who flagged"):
        app.client().predict(id_, api_name="/retract")
    assert alice.predict(id_, api_name="/retract") == {"id": id_, "retracted": True}
    assert examples(app)[id_].retracted and id_ not in queue_of(app.client())


def test_an_admin_decides_alone_and_a_space_trains_on_verified_only(tmp_path, round0, mnist, monkeypatch):  # noqa: F811
    from dadc import config
    from dadc.studio.service import Studio, Visitor
    from dadc.synth.canvas import paste_mnist as draw
    from test_rounds import TINY, mnist_into

    monkeypatch.setenv("DADC_HOME", str(mnist_into(tmp_path / "home")))
    monkeypatch.setenv("DADC_ADMINS", "ada")
    monkeypatch.setenv("DADC_THRESHOLD", "1000")
    studio = Studio(config.from_env(), round0=round0, round_cfg=config.RoundConfig(**TINY, votes=2))
    id_ = studio.flag(draw(mnist["test_x"][0]), int(mnist["test_y"][0]), "anon-a")["id"]
    assert studio.vote(id_, True, Visitor("ada", username="ada"))["verified"]  # one admin vote
    id2 = studio.flag(draw(mnist["test_x"][1]), int(mnist["test_y"][1]), "anon-b")["id"]
    studio.vote(id2, True, "anon-c")
    assert not studio.vote(id2, False, Visitor("ada", username="ada"))["verified"]  # the admin says no
    assert studio.store.find(id2).disputed

    monkeypatch.delenv("DADC_VERIFIED_ONLY", raising=False)
    monkeypatch.delenv("SYSTEM", raising=False)
    assert config.RoundConfig.from_env().verified_only is False
    monkeypatch.setenv("SPACE_ID", "u/s")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "x")
    # issue 26, finding 8: a Space's variables copied elsewhere are no Space; Spaces also set SYSTEM=spaces
    assert config.RoundConfig.from_env().verified_only is False
    monkeypatch.setenv("SYSTEM", "spaces")
    assert config.RoundConfig.from_env().verified_only is True
    monkeypatch.setenv("DADC_VERIFIED_ONLY", "0")
    assert config.RoundConfig.from_env().verified_only is False


def test_leaderboard_counts_verified_fooling_examples_and_is_opt_in_for_anonymous(tmp_path, round0, mnist,  # noqa: F811
                                                                                 monkeypatch):
    from dadc import config
    from dadc.studio.service import Studio, StudioError, Visitor
    from dadc.synth.canvas import paste_mnist as draw
    from test_rounds import TINY, mnist_into

    monkeypatch.setenv("DADC_HOME", str(mnist_into(tmp_path / "home")))
    monkeypatch.setenv("DADC_THRESHOLD", "1000")
    studio = Studio(config.from_env(), round0=round0, round_cfg=config.RoundConfig(**TINY, votes=2))
    ada, anon = Visitor("ada", username="ada"), "anon-1234"

    def fool(who, i):  # a label the model does not say: a fooling example
        canvas = draw(mnist["test_x"][i])
        probs, _ = studio.predict(canvas, who if isinstance(who, str) else who.id)  # one attempt
        said = max(probs, key=probs.get)
        return studio.flag(canvas, (int(said) + 1) % 10, who)["id"]

    ids = [fool(ada, 0), fool(ada, 1), fool(anon, 2)]
    for voter in ("anon-v1", "anon-v2"):
        studio.vote(ids[0], True, voter)
    board = studio.dashboard()["leaders"]
    assert [row[:3] for row in board] == [["ada", 2, 1]]  # the anonymous flagger has not opted in
    assert board[0][3] == "50%"  # 1 verified fooling example of 2 drawings tried
    with pytest.raises(StudioError, match="nickname"):
        studio.set_nickname("<script>", anon)
    studio.set_nickname("Zed", anon)
    assert [row[:3] for row in studio.dashboard()["leaders"]] == [["ada", 2, 1], ["Zed", 1, 0]]


@pytest.mark.slow
def test_verified_only_rounds_start_when_votes_verify_enough(round0, tmp_path_factory, mnist, tmp_path):  # noqa: F811
    """Through the server: with DADC_VERIFIED_ONLY=1 flags alone start no round; the votes that
    verify the threshold's worth start it, and it learns from the verified examples only."""
    import json
    import time

    a = App(tmp_path_factory.mktemp("verified-only") / "home", round0, DADC_VOTES="2", DADC_THRESHOLD="2",
            DADC_VERIFIED_ONLY="1", DADC_ROUND_CLEAN_DROP="1", DADC_ROUND_ROBUST_DROP="1")

    def attempts():
        path = a.home / "rounds" / "history.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [h for h in map(json.loads, lines) if h.get("event") == "attempt"]
    try:
        ids = [flag(a, mnist, tmp_path, 10 + i)[1] for i in range(3)]
        assert a.client().predict(ids[0], True, api_name="/verify")["verified"] is False
        time.sleep(3)
        assert attempts() == []  # three flags, none verified: no round
        a.client().predict(ids[0], True, api_name="/verify")
        for _ in range(2):
            a.client().predict(ids[1], True, api_name="/verify")
        deadline = time.time() + 180
        while not attempts() and time.time() < deadline:
            time.sleep(1)
        [attempt] = attempts()
        assert attempt["counts"]["human eligible"] == 2  # the unverified third is left out
        assert attempt["counts"]["human examples"] + attempt["counts"]["human held out"] <= 2
    finally:
        a.stop()

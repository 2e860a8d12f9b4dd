"""Who a visitor is (issue 26, findings 6 and 8), through the page's own identify() (web/ui.py) and the
Studio: a login and an address-derived id never share a name; the anonymous id and the login of one
browser are one person for self-votes; a profile counts only where Gradio's login is the real one
(a Hugging Face Space as Spaces mark it), never from Gradio's mocked login. Logging in cannot be
played over HTTP here: the profile is handed to identify() as Gradio would hand it."""
from types import SimpleNamespace

import numpy as np
import pytest

from test_app import TINY, mnist, mnist_into, round0  # noqa: F401 (fixtures)

SPACE = {"SYSTEM": "spaces", "SPACE_ID": "u/s", "SPACE_HOST": "u-s.hf.space", "OAUTH_CLIENT_ID": "x"}


def request(address):
    """What identify() reads of a gr.Request: the TCP peer (no proxy header)."""
    return SimpleNamespace(client=SimpleNamespace(host=address), request=None, headers={})


def profile(username):
    return SimpleNamespace(username=username)  # gr.OAuthProfile's one field identify() reads


def where(monkeypatch, env):
    for k in ("SYSTEM", "SPACE_ID", "SPACE_HOST", "OAUTH_CLIENT_ID", "DADC_TRUSTED_PROXY_HOPS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def space(tmp_path, round0, monkeypatch):  # noqa: F811
    """(studio, who) of an app on a real Space (OAuth on), DADC_ADMINS=ada, DADC_VOTES=2."""
    from dadc import config
    from dadc.studio.service import Studio
    from dadc.web.ui import identify

    where(monkeypatch, SPACE)
    monkeypatch.setenv("DADC_HOME", str(mnist_into(tmp_path / "home")))
    monkeypatch.setenv("DADC_ADMINS", "ada")
    monkeypatch.setenv("DADC_THRESHOLD", "1000")
    studio = Studio(config.from_env(), round0=round0, round_cfg=config.RoundConfig(**TINY, votes=2))
    return studio, identify(studio.settings)


def canvas(mnist, i):  # noqa: F811
    from test_app import draw

    return draw(mnist["test_x"][i], rng=np.random.default_rng(i))


def test_a_username_equal_to_an_anonymous_id_cannot_retract_that_visitors_flag(space, mnist):  # noqa: F811
    """Finding 6: logged-in and anonymous ids shared one namespace, so an account named like a
    visitor's anonymous id (it is public: the dataset's session column) retracted their flag."""
    from dadc.studio.service import StudioError

    studio, who = space
    victim = who(request("198.51.100.7"))
    assert victim.anonymous and victim.id.startswith("anon-")
    id_ = studio.flag(canvas(mnist, 0), 1, victim)["id"]
    impostor = who(request("203.0.113.9"), profile(victim.id))
    assert impostor.username == victim.id and impostor.id != victim.id
    with pytest.raises(StudioError, match="Only the person who flagged"):
        studio.retract(id_, impostor)
    assert not studio.store.find(id_).retracted
    assert studio.retract(id_, who(request("198.51.100.7")))["retracted"]  # the flagger still may


def test_an_anonymous_flagger_cannot_verify_their_own_flag_by_logging_in(space, mnist):  # noqa: F811
    """Finding 6: flag anonymously, then vote on it logged in from the same browser and once more
    anonymously from a second address: two 'yes' votes verified one's own flag. The login and the
    address id of one browser are one person: the logged-in vote is refused, and the queue does not
    offer it."""
    from dadc.studio.service import StudioError

    studio, who = space
    flagger = who(request("198.51.100.8"))
    id_ = studio.flag(canvas(mnist, 1), 2, flagger)["id"]
    logged_in = who(request("198.51.100.8"), profile("bob"))
    assert logged_in.username == "bob" and logged_in.id == "bob"  # stored as usernames always were
    assert studio.next_to_vote(logged_in) is None
    with pytest.raises(StudioError, match="own"):
        studio.vote(id_, True, logged_in)
    r = studio.vote(id_, True, who(request("192.0.2.44")))  # another address is another visitor
    assert (r["agree"], r["verified"]) == (1, False)
    assert studio.next_to_vote(who(request("192.0.2.45"), profile("cy")))["id"] == id_  # others are asked


def test_an_anonymous_id_cannot_retract_another_replicas_flag(space, mnist, tmp_path):  # noqa: F811
    """Another replica's rows (restored from the Hub) may name this home's anonymous ids: the
    retraction would not be believed (finding 4), so the Studio says so instead of "retracted"."""
    import shutil

    from dadc.store import FlagStore
    from dadc.studio.service import StudioError

    studio, who = space
    me = who(request("198.51.100.10"))
    other = FlagStore(tmp_path / "other")
    id_ = other.append(np.zeros((28, 28), np.uint8), 3, visitor=me.id)
    shutil.copytree(other.dir, studio.store.root / "data" / other.replica)
    assert studio.store.find(id_).visitor == me.id
    with pytest.raises(StudioError, match="another copy"):
        studio.retract(id_, me)
    assert not studio.store.find(id_).retracted


def test_a_login_never_takes_an_id_the_server_derives():
    from dadc.examples import account_id
    from dadc.studio.service import Visitor

    for name in ("anon-0a1b2c3d4e5f", "ANON-x", "import:mnist", "simulate", "Simulate", "a:b"):
        assert account_id(name) == f"hf:{name}" and Visitor.logged_in(name, "anon-1").id == f"hf:{name}"
    for name in ("ada", "simulated_ann", "anonymous"):  # existing stores keep their rows: stored as itself
        assert account_id(name) == name and Visitor.logged_in(name).id == name
    with pytest.raises(ValueError):
        Visitor("anon-0a1b2c3d4e5f", username="anon-0a1b2c3d4e5f")


@pytest.mark.parametrize("env", [
    {"SPACE_ID": "u/s", "OAUTH_CLIENT_ID": "x"},                      # a Space's variables copied locally
    {"SPACE_ID": "u/s", "OAUTH_CLIENT_ID": "x", "SYSTEM": "other"},
    {"SYSTEM": "spaces", "OAUTH_CLIENT_ID": "x"}])
def test_off_a_space_a_profile_is_nobody_and_no_admin(tmp_path, monkeypatch, env):
    """Finding 8: SPACE_ID and OAUTH_CLIENT_ID off a real Space made on_space() true; Gradio then
    mocks its login (anyone becomes the owner of the machine's HF token), and that profile was an
    admin. Now such a profile is not a login at all."""
    from dadc import config
    from dadc.web.ui import identify

    where(monkeypatch, env)
    monkeypatch.setenv("DADC_HOME", str(tmp_path))
    monkeypatch.setenv("DADC_ADMINS", "ada")
    assert not config.on_space()
    who = identify(config.from_env())(request("198.51.100.9"), profile("ada"))
    assert who.anonymous and who.username is None and who.id.startswith("anon-")


def test_a_profile_counts_on_a_real_space_unless_gradios_login_is_mocked(tmp_path, monkeypatch):
    import gradio as gr

    from dadc import config
    from dadc.web.ui import identify

    where(monkeypatch, SPACE)
    monkeypatch.setenv("DADC_HOME", str(tmp_path))
    assert config.on_space()
    who = identify(config.from_env())
    assert who(request("198.51.100.9"), profile("ada")).username == "ada"
    # should a Gradio ever mock its login where we think we are on a Space, its profiles are nobody
    monkeypatch.setattr(gr.utils, "get_space", lambda: None)
    assert who(request("198.51.100.9"), profile("ada")).anonymous


def test_space_id_alone_trusts_no_proxy_header(monkeypatch):
    """Finding 8: the proxy-hops default was 1 wherever SPACE_ID was set, so off a Space a client's
    own X-Forwarded-For entry was a new identity. Only a real Space trusts its proxy's entry."""
    from dadc import config

    where(monkeypatch, {"SPACE_ID": "u/s", "OAUTH_CLIENT_ID": "x"})
    assert config.from_env().proxy_hops == 0
    where(monkeypatch, SPACE)
    assert config.from_env().proxy_hops == 1
    monkeypatch.setenv("DADC_TRUSTED_PROXY_HOPS", "0")
    assert config.from_env().proxy_hops == 0


def test_one_identity_key_makes_one_visitor_one_id_on_every_replica(tmp_path, monkeypatch):
    """Issue 23: replicas that share DADC_IDENTITY_KEY derive the same anonymous id for an address
    (one vote per person and flag across replicas); without it each home has its own key."""
    from dadc import config
    from dadc.web.ui import identify

    where(monkeypatch, {})
    ids = {}
    for key in ("k" * 40, None):
        for replica in ("a", "b"):
            monkeypatch.setenv("DADC_HOME", str(tmp_path / f"{replica}{key is None}"))
            if key:
                monkeypatch.setenv("DADC_IDENTITY_KEY", key)
            else:
                monkeypatch.delenv("DADC_IDENTITY_KEY", raising=False)
            ids[(key, replica)] = identify(config.from_env())(request("198.51.100.9")).id
    assert ids[("k" * 40, "a")] == ids[("k" * 40, "b")]
    assert ids[(None, "a")] != ids[(None, "b")] and ids[(None, "a")] != ids[("k" * 40, "a")]
    assert "k" * 40 not in repr(config.from_env())  # a secret: never in a repr
    monkeypatch.setenv("DADC_IDENTITY_KEY", "short")
    with pytest.raises(SystemExit, match="at least 32 characters"):
        config.from_env()


def test_a_remote_trainer_needs_the_hub(monkeypatch):
    from dadc import config

    for k in ("HF_TOKEN", "DADC_DATASET_REPO", "DADC_MODEL_REPO"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DADC_TRAINER", "remote")
    with pytest.raises(SystemExit, match="DADC_TRAINER=remote needs HF_TOKEN"):
        config.from_env()
    monkeypatch.setenv("DADC_TRAINER", "elsewhere")
    with pytest.raises(SystemExit, match="'local' or 'remote'"):
        config.from_env()

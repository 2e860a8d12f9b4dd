"""`simulate` never writes into an app's home: by default its flags and rounds go to a new folder of
their own, an explicit --home must be new or empty (DADC_HOME itself is refused), and while it runs
it holds that home's app.lock. Real subprocesses on a real home (real MNIST, the tiny round 0)."""
import json

from dadc import files
from dadc.rounds.registry import Registry
from dadc.store import FlagStore
from test_cli_retrain import home_with_flags
from test_rounds import cli, round0  # noqa: F401 (fixture)


def files_under(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file() and p.name != "app.lock"}


def off_by_one_campaign(tmp_path, home):
    """12 drawings whose labels are all off by one: whatever round 0 says, the simulated people flag it."""
    drawings = tmp_path / "drawings"
    r = cli("simulate", "--drawings", drawings, "--make-drawings", 12, "--total", "--families", "plain", home=home)
    assert r.returncode == 0, r.stderr
    rows = (drawings / "labels.csv").read_text().splitlines()
    fixed = [rows[0]] + [f"{f},{(int(label) + 1) % 10}" for f, label in (row.split(",")[:2] for row in rows[1:])]
    (drawings / "labels.csv").write_text("\n".join(fixed) + "\n")
    return drawings


def test_simulate_on_an_apps_home_leaves_its_flags_and_served_round_unchanged(tmp_path, round0):
    home = home_with_flags(tmp_path, round0, 4)  # an app's home: 4 flags, round-000 served
    drawings = off_by_one_campaign(tmp_path, home)
    before = {k: v for k, v in files_under(home).items() if k.parts[0] in ("flags", "rounds")}
    with open(home / files.APP_LOCK, "w"):  # an app's lock file (an app that is not running now)
        pass
    r = cli("simulate", "--drawings", drawings, "--rounds", 1, "--threshold", 3, "--seed-round", round0,
            home=home, DADC_ROUND_CLEAN_DROP="1", DADC_ROUND_ROBUST_DROP="1")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    own = home / "simulations" / result["home"].split("/simulations/")[1]
    assert own.is_dir() and f"the campaign's flags and rounds go to {own}" in r.stderr
    assert [row["serving"] for row in result["rounds"]] == ["round-000", "round-001"]
    after = {k: v for k, v in files_under(home).items() if k.parts[0] in ("flags", "rounds")}
    assert after == before  # not one byte of the app's flags or rounds changed
    assert len(FlagStore(home).examples()) == 4 and Registry(home).current() == "round-000"
    assert len(FlagStore(own).examples()) == 3 and Registry(own).current() == "round-001"
    assert not (own / "mnist").exists()  # MNIST was read from DADC_HOME, not copied


def test_an_explicit_home_must_be_new_or_empty_and_never_dadc_home(tmp_path, round0):
    home = home_with_flags(tmp_path, round0, 0)
    drawings = off_by_one_campaign(tmp_path, home)
    args = ("simulate", "--drawings", drawings, "--rounds", 1, "--seed-round", round0)
    for bad, why in ((home, "is DADC_HOME"), (drawings, "is not an empty folder")):
        r = cli(*args, "--home", bad, home=home)
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: --home")
        assert why in r.stderr and "Traceback" not in r.stderr
    assert Registry(home).current() == "round-000" and not (home / "simulations").exists()

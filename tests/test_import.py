"""`python -m dadc import SOURCE` (issue 13, part 3): drawings folders and parquet exports into a
home's store; duplicates and bad rows skipped; refused while an app holds the home."""
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dadc.synth import drawings
from dadc import files
from dadc.campaign import importer
from dadc import preprocess
from dadc.store import keepable
from dadc.store import FlagStore
from test_app import huge_png
from test_cli import ROOT, assert_one_line_error, dadc


def folder(tmp_path, n=5, name="drawn"):
    """n drawings of each of two families, with labels.csv (file,label,family,style)."""
    return drawings.make(tmp_path / name, n, seed=1, families=["mouse", "thick"])


def labels(src):
    with open(src / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def add_rows(src, *rows):
    with open(src / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerows(rows)


def run(src, home, **kw):
    err = io.StringIO()
    return importer.run(src, home, err=err, **kw), err.getvalue()


def test_folder_import_stores_each_drawing_as_the_app_would(tmp_path):
    src, home = folder(tmp_path), tmp_path / "home"
    rows = labels(src)
    add_rows(src, [rows[0]["file"], rows[0]["label"], "mouse", "again"])  # the same drawing twice
    out, err = run(src, home)
    assert out == {"imported": 10, "duplicates": 1, "bad": 0, "source": str(src), "format": "drawings",
                   "session": "import:drawn"}
    assert "importing" in err  # the progress bar
    store = FlagStore(home)
    got = store.examples()
    assert store.count() == 10
    by_pixels = {np.asarray(store.image(e)).tobytes(): e for e in got}
    for row in rows:
        with Image.open(src / row["file"]) as canvas:
            pixels = preprocess.to_uint8(preprocess.to_mnist(canvas))  # the app's own preprocessing
            e = by_pixels[pixels.tobytes()]
            assert e.label == int(row["label"])
            assert (e.visitor, e.prediction, e.round) == ("import:drawn", -1, 0)
            with Image.open(e.canvas_path) as kept:  # the canvas is kept too, as the app keeps it
                assert e.canvas_path != e.path
                assert np.array_equal(np.asarray(kept.convert("RGBA")), np.asarray(keepable(canvas).convert("RGBA")))


def test_importing_the_same_folder_again_skips_every_row_as_a_duplicate(tmp_path):
    src, home = folder(tmp_path, n=3), tmp_path / "home"
    assert run(src, home)[0]["imported"] == 6
    out, _ = run(src, home)
    assert (out["imported"], out["duplicates"], out["bad"]) == (0, 6, 0)
    assert FlagStore(home).count() == 6


def test_export_then_import_into_a_fresh_home_round_trips_pixels_and_labels(tmp_path):
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "export"
    store = FlagStore(old)
    rng = np.random.default_rng(0)
    for i in range(6):
        x = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        canvas = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)) if i % 2 else None
        conf = list(np.eye(10)[(i + 1) % 10]) if i % 3 else None
        store.append(x, i % 10, canvas=canvas, prediction=(i + 1) % 10 if i % 3 else None, confidences=conf,
                     round=i, visitor="someone")
    r = dadc("export", out, home=old)
    assert r.returncode == 0, r.stderr
    r = dadc("import", out, home=new)
    assert r.returncode == 0, r.stderr
    assert "importing" in r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result == {"imported": 6, "duplicates": 0, "bad": 0, "source": str(out), "format": "parquet",
                      "session": "import:export"}

    def rows(home):
        s = FlagStore(home)
        return sorted((np.asarray(s.image(e)).tobytes(), e.label, e.prediction, e.round, tuple(e.confidences),
                       s.png(e, canvas=True) if e.canvas_path != e.path else None) for e in s.examples())

    before, after = rows(old), rows(new)
    assert [r[:5] for r in after] == [r[:5] for r in before]
    for b, a in zip(before, after):  # a kept canvas comes back with the same pixels, none is made up
        assert (a[5] is None) == (b[5] is None)
        if a[5] is not None:
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(a[5])).convert("RGB")),
                                  np.asarray(Image.open(io.BytesIO(b[5])).convert("RGB")))
    assert {e.visitor for e in FlagStore(new).examples()} == {"import:export"}
    r = dadc("import", out / "data" / "train-00000-of-00001.parquet", home=new)  # one shard, all known
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert again["imported"] == 0 and again["duplicates"] > 0


def test_bad_rows_are_reported_and_skipped_while_the_good_ones_land(tmp_path, monkeypatch):
    src, home = folder(tmp_path, n=2), tmp_path / "home"
    (src / "notes.png").write_text("not a png at all\n")
    huge_png(src / "huge.png", side=8000)
    Image.new("RGB", (100, 100), "white").save(src / "blank.png")
    add_rows(src, ["missing.png", 3], [labels(src)[0]["file"], 12], ["notes.png", 4], ["huge.png", 5],
             ["blank.png", 6], ["../drawn/mouse-00000.png", 1], ["", ""])
    decoded, real_load = [], importer._load
    monkeypatch.setattr(importer, "_load", lambda img, what: decoded.append(img.size) or real_load(img, what))
    out, err = run(src, home)
    assert (out["imported"], out["duplicates"], out["bad"]) == (4, 0, 7)
    assert FlagStore(home).count() == 4
    lines = [line for line in err.splitlines() if line.startswith("bad row: ")]
    assert len(lines) == 7
    for words in (["line 6", "missing.png", "missing"], ["line 7", "label 12 is not"],
                  ["line 8", "notes.png", "not an image"], ["line 9", "huge.png", "too large (8000x8000)"],
                  ["line 10", "blank.png", "unreadable canvas"], ["line 11", "not a file inside"],
                  ["line 12", "label '' is not"]):
        assert any(all(w in line for w in words) for line in lines), (words, lines)
    assert "bad rows by reason:" in err
    assert len(decoded) == 5 and (8000, 8000) not in decoded  # refused from its header: never decoded

    monkeypatch.setattr(importer, "MAX_SHOWN", 2)  # reports are bounded: the first few, then a count
    out, err = run(src, tmp_path / "other")
    assert out["bad"] == 7 and sum(line.startswith("bad row: ") for line in err.splitlines()) == 2
    assert "... and 5 more bad rows" in err


def test_bad_rows_of_a_parquet_export_are_skipped(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(img):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    good = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (10, 20)]
    rows = [dict(image=png(good[0]), label=1, prediction=7, round=2),
            dict(image=png(good[1]), label=2, prediction=-1, round=0),
            dict(image=png(good[0]), label=3, prediction=-1, round=0),                 # same pixels: duplicate
            dict(image=png(Image.new("L", (30, 30))), label=1, prediction=-1, round=0),  # not 28x28
            dict(image={"bytes": b"GIF89a nonsense", "path": None}, label=1, prediction=-1, round=0),
            dict(image=png(Image.new("L", (28, 28), 99)), label=10, prediction=-1, round=0),
            dict(image=png(Image.new("L", (28, 28), 98)), label=4, prediction=11, round=0)]
    src = tmp_path / "campaign"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), src / "flags.parquet")
    out, err = run(src, tmp_path / "home")
    assert (out["imported"], out["duplicates"], out["bad"]) == (2, 1, 4)
    assert "flags.parquet row 3: image is 30x30, not 28x28" in err and "flags.parquet row 5: label 10" in err
    got = sorted((e.label, e.prediction, e.round) for e in FlagStore(tmp_path / "home").examples())
    assert got == [(1, 7, 2), (2, -1, 0)]


def test_a_source_of_neither_format_is_one_error_line(tmp_path, monkeypatch, capsys):
    from dadc.__main__ import main

    home = tmp_path / "home"
    monkeypatch.setenv("DADC_HOME", str(home))
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.parquet").write_bytes(b"PAR1 not really")
    for source, words in ((tmp_path / "empty", "neither"), (tmp_path / "nowhere", "does not exist"),
                          (tmp_path / "other.parquet", "not a readable parquet")):
        with pytest.raises(SystemExit) as e:
            main(["import", str(source)])
        assert e.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not home.exists()  # nothing written


def test_import_is_refused_while_an_app_holds_the_home(tmp_path):
    src, home = folder(tmp_path, n=1), tmp_path / "home"
    home.mkdir()
    fd = files.hold(home / "app.lock")  # as a running app (service.Studio) holds it
    try:
        r = dadc("import", src, home=home)
        assert_one_line_error(r, "an app is running on DADC_HOME", f"process {os.getpid()}", "stop it first")
        assert r.returncode == 1 and r.stdout == ""
        assert sorted(p.name for p in home.iterdir()) == ["app.lock"]  # nothing written
    finally:
        os.close(fd)
    assert run(src, home)[0]["imported"] == 2  # once the app is gone


def stored_pixels(home):
    store = FlagStore(home)
    return {np.asarray(store.image(e)).tobytes() for e in store.examples()}


def mnist_of(path):
    with Image.open(path) as canvas:
        return preprocess.to_uint8(preprocess.to_mnist(canvas)).tobytes()


def test_symlinks_out_of_the_folder_are_bad_rows_and_nothing_behind_them_is_imported(tmp_path):
    src, home = folder(tmp_path, n=1), tmp_path / "home"
    outside = drawings.make(tmp_path / "outside", 2, seed=5, families=["thick"])  # drawings of its own
    os.symlink(outside / "thick-00000.png", src / "link.png")           # a PNG outside the folder
    os.symlink("../outside/thick-00001.png", src / "relative.png")      # the same, by a relative link
    os.symlink(outside, src / "linked")                                 # a symlinked folder
    (src / "sub").mkdir()
    os.symlink(outside, src / "sub" / "deeper")                         # one below a real folder
    os.symlink(src / labels(src)[0]["file"], src / "alias.png")         # a symlink is refused even inward
    add_rows(src, ["link.png", 0], ["relative.png", 1], ["linked/thick-00000.png", 0],
             ["sub/deeper/thick-00001.png", 1], ["alias.png", 0])
    out, err = run(src, home)
    assert (out["imported"], out["duplicates"], out["bad"]) == (2, 0, 5), err
    lines = [line for line in err.splitlines() if line.startswith("bad row: ")]
    assert len(lines) == 5, err
    for words in (["line 4", "'link.png' is not a regular file inside the folder (it is a symlink)"],
                  ["line 5", "'relative.png' is not a regular file inside the folder (it is a symlink)"],
                  ["line 6", "not a regular file inside the folder ('linked' in its path is a symlink)"],
                  ["line 7", "not a regular file inside the folder ('deeper' in its path is a symlink)"],
                  ["line 8", "'alias.png' is not a regular file inside the folder (it is a symlink)"]):
        assert any(all(w in line for w in words) for line in lines), (words, lines)
    assert "bad rows by reason: not a regular file inside the folder 5" in err
    got = stored_pixels(home)
    assert got == {mnist_of(src / row["file"]) for row in labels(src)[:2]}
    assert not got & {mnist_of(p) for p in outside.glob("*.png")}  # nothing from outside reached the store

    named = tmp_path / "named"  # SOURCE itself may be a symlink: the person named it
    os.symlink(src, named)
    assert run(named, tmp_path / "home2")[0]["imported"] == 2


def test_a_symlinked_labels_csv_or_parquet_shard_refuses_the_whole_import(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, home = folder(tmp_path, n=1), tmp_path / "home"
    other = tmp_path / "other"  # real drawings, but labels.csv is a link to another folder's
    other.mkdir()
    for row in labels(src):
        (other / row["file"]).write_bytes((src / row["file"]).read_bytes())
    os.symlink(src / "labels.csv", other / "labels.csv")
    r = dadc("import", other, home=home)
    assert_one_line_error(r, "labels.csv is not a regular file inside the folder (it is a symlink)")
    assert not home.exists()  # refused before anything was written

    buf = io.BytesIO()
    Image.new("L", (28, 28), 77).save(buf, format="PNG")
    pq.write_table(pa.Table.from_pylist([dict(image={"bytes": buf.getvalue(), "path": None}, label=1)]),
                   tmp_path / "elsewhere.parquet")
    export = tmp_path / "export"
    (export / "data").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere.parquet", export / "data" / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet is not a regular file inside the folder \(it is a symlink"):
        importer.run(export, home, err=io.StringIO())
    assert not home.exists()


def import_within(seconds, source, home):
    """`python -m dadc import SOURCE` as a user runs it, failing the test if it runs past `seconds`."""
    env = dict(os.environ, DADC_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("DADC_DEBUG", None)
    try:
        return subprocess.run([sys.executable, "-m", "dadc", "import", str(source)], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`python -m dadc import {source}` still ran after {seconds} s: it hangs")


def test_a_fifo_in_the_folder_is_a_bad_row_and_never_hangs_the_import(tmp_path):
    src, home = folder(tmp_path, n=1), tmp_path / "home"
    os.mkfifo(src / "pipe.png")  # no writer will ever come: opening it to read would block for good
    add_rows(src, ["pipe.png", 3])
    r = import_within(60, src, home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["imported"], out["duplicates"], out["bad"]) == (2, 0, 1)
    assert ("bad row: labels.csv line 4: file 'pipe.png' is not a regular file inside the folder (it is a FIFO)"
            in r.stderr), r.stderr
    assert "bad rows by reason: not a regular file inside the folder 1" in r.stderr
    os.close(files.hold_app(home))  # app.lock is free again

    out, err = run(src, home)  # in this process too: the import ends, and lets go of app.lock
    assert (out["imported"], out["duplicates"], out["bad"]) == (0, 2, 1)
    os.close(files.hold_app(home))

    fifo_labels = tmp_path / "fifo-labels"  # labels.csv itself a FIFO: one error line, no hang
    fifo_labels.mkdir()
    os.mkfifo(fifo_labels / "labels.csv")
    r = import_within(60, fifo_labels, tmp_path / "home2")
    assert_one_line_error(r, "labels.csv is not a regular file inside the folder (it is a FIFO)")
